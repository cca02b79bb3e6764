"""The transformers export of radial models (`radial export --format hf`): the directory loads with
AutoModelForCausalLM(trust_remote_code=True), its logits equal radial_jax's inference-mode logits,
greedy generate() equals radial_jax's greedy generation token for token (batch 1 and a left-padded
batch of 3), and the cached and uncached paths agree; options the template lacks are refused."""

import json
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from radial_jax.cli import main
from radial_jax.config import load_config
from radial_jax.generate.sampling import Generator, Sampling
from radial_jax.io.hf_radial import HFRadialError, write_hf_radial
from radial_jax.io.load import load_model
from radial_jax.io.tensors import flat_params
from radial_jax.train.loop import train
from tests.helpers import TINY, tiny_config

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

ROOT = Path(__file__).resolve().parents[1]
# Weights drawn wide enough (init_std) that after a few steps the greedy text still depends on the
# context and the learned skip predictor skips some steps and not others: otherwise a cache bug could
# hide behind a model that repeats one byte.
TRAIN = ["model.init_std=0.2", "train.eval_every=100", "train.eval_batches=1",
         "train.checkpoint_every=100"]
VARIANTS = {"skip_learned": [], "kv_carry": ["model.kv_skip=carry"], "top2": ["routing.top_k=2"]}
PROMPTS = [[256, 100, 101, 102, 32, 109, 97], [256, 72, 101, 108, 108, 111, 44, 32, 119, 111, 114],
           [256, 9]]
NEW = 32
PAD = 257


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, corpus_cache):
    """skip_learned.yaml (radial_tiny: one prefix block, reuse allowed, top-1) at tiny sizes, 10 steps."""
    run = tmp_path_factory.mktemp("skip_learned_run")
    train(load_config(ROOT / "configs/ablations/skip_learned.yaml",
                      [*TINY, *TRAIN, f"run.dir={run}", f"data.cache_dir={corpus_cache}"]))
    return run


@pytest.fixture(scope="module", params=list(VARIANTS))
def exported(request, run_dir, tmp_path_factory):
    """(radial_jax model, export dir, transformers model) of the trained run under one variant's
    overrides (kv_skip carry and top-2 change inference only, so they reuse the trained weights)."""
    loaded = load_model(run_dir, VARIANTS[request.param])
    out = tmp_path_factory.mktemp(request.param)
    write_hf_radial(loaded.cfg, flat_params(loaded.params), out, tokenizer=loaded.tokenizer)
    hf = transformers.AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True,
                                                           dtype=torch.float32).eval()
    return loaded, out, hf


def hf_generate(hf, prompts, new=NEW, **kwargs):
    """New tokens of each prompt from transformers' generate(), prompts left-padded."""
    m = max(map(len, prompts))
    ids = torch.tensor([[PAD] * (m - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (m - len(p)) + [1] * len(p) for p in prompts])
    with torch.no_grad():
        out = hf.generate(ids, attention_mask=mask, max_new_tokens=new, eos_token_id=None, **kwargs)
    return out[:, m:].tolist()


def test_the_directory_is_self_contained_remote_code(exported):
    loaded, out, hf = exported
    doc = json.loads((out / "config.json").read_text())
    assert doc["auto_map"]["AutoModelForCausalLM"] == "modeling_radial.RadialForCausalLM"
    template = ROOT / "radial_jax/io/hf_radial/template/modeling_radial.py"
    assert (out / "modeling_radial.py").read_text() == template.read_text()
    assert type(hf).__name__ == "RadialForCausalLM" and hf.config.routing_skip == "learned"
    tok = transformers.AutoTokenizer.from_pretrained(out, trust_remote_code=True)
    text = "héllo, wörld"
    assert tok(text).input_ids == loaded.tokenizer.encode(text, eos=False).tolist()
    assert tok.decode(tok(text).input_ids, skip_special_tokens=True) == text


def test_full_sequence_logits_equal_radial_jax_inference(exported):
    loaded, _, hf = exported
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 256, (2, 40)).astype(np.int32)
    tokens[:, 0] = 256
    b, s = tokens.shape
    model = nnx.merge(loaded.graphdef, loaded.params)
    want, _ = model(jnp.asarray(tokens), jnp.broadcast_to(jnp.arange(s), (b, s)), jnp.ones((b, s), jnp.int32),
                    inference=True)
    with torch.no_grad():
        got = hf(torch.tensor(tokens, dtype=torch.long)).logits.numpy()
    np.testing.assert_allclose(got, np.asarray(want), atol=1e-4, rtol=0)


def test_greedy_generate_equals_radial_jax_with_and_without_cache(exported):
    loaded, _, hf = exported
    gen = Generator(loaded.cfg, loaded.graphdef, loaded.params, burst=NEW - 1)  # one burst after prefill
    greedy = Sampling(temperature=0.0)
    alone = gen.generate(PROMPTS[1:2], max_tokens=NEW, sampling=greedy)  # batch 1: the lax.switch path
    batch = gen.generate(PROMPTS, max_tokens=NEW, sampling=greedy)
    assert hf_generate(hf, PROMPTS[1:2], do_sample=False) == alone.tokens
    assert hf_generate(hf, PROMPTS, do_sample=False) == batch.tokens
    assert hf_generate(hf, PROMPTS, do_sample=False, use_cache=False) == batch.tokens
    # The comparison means something: varied text, and routes that skip some steps but not all.
    assert len({token for row in batch.tokens for token in row}) >= 8
    depths = {d for row in batch.depth for d in row}
    assert min(depths) < loaded.cfg.model.prefix_layers + loaded.cfg.model.steps and max(depths) > 1


@pytest.mark.parametrize("exported", ["kv_carry"], indirect=True)
def test_sampling_and_beam_search_use_the_cache_as_the_full_forward_does(exported):
    _, _, hf = exported
    runs = {}
    for use_cache in (True, False):
        torch.manual_seed(0)
        runs[use_cache] = (hf_generate(hf, PROMPTS, 16, do_sample=True, temperature=0.8, top_k=50,
                                       use_cache=use_cache),
                           hf_generate(hf, PROMPTS, 16, num_beams=3, do_sample=False, use_cache=use_cache))
    assert runs[True] == runs[False]


@pytest.mark.parametrize("exported", ["skip_learned"], indirect=True)
def test_radial_eval_and_profile_load_the_exported_directory_back(exported, run_dir, corpus_cache, tmp_path,
                                                                    capsys):
    """The exported directory is a Hugging Face directory like any other: `radial eval` and `radial
    profile` read it back as the same radial model (loss, routing and ratios of the run's). The
    export keeps the training capacity (0.5 here; the profile routes as training does), not the
    run's data shapes, so those are given to both."""
    _, out, _ = exported
    assert json.loads((out / "config.json").read_text())["capacity_factor"] == 0.5
    data = [f"data.cache_dir={corpus_cache}", "data.seq_len=32", "data.batch_size=4"]
    evals, profiles = [], []
    for path in (run_dir, out):
        assert main(["eval", "--checkpoint", str(path), "--batches", "1", "--inference", *data]) == 0
        evals.append(json.loads(capsys.readouterr().out))
        assert main(["profile", "--checkpoint", str(path), "--batches", "1", "--oracle", "none",
                     "--out", str(tmp_path / path.name), *data]) == 0
        capsys.readouterr()
        profiles.append(json.loads((tmp_path / path.name / "profile.json").read_text()))
    assert evals[1]["eval/loss"] == pytest.approx(evals[0]["eval/loss"], abs=1e-5)
    assert profiles[1]["source"] == "hf" and profiles[0]["source"] == "run"
    for key in ("load_per_step", "depth", "ratios"):
        assert json.dumps(profiles[1][key]) == json.dumps(profiles[0][key]), key
    np.testing.assert_allclose(profiles[1]["eval"]["loss"], profiles[0]["eval"]["loss"], atol=1e-5)


def test_options_the_template_lacks_are_refused(tmp_path):
    for override, named in (("routing.policy=expert_choice", "routing.policy='expert_choice'"),
                            ("model.norm=layer", "model.norm='layer'"),
                            ("model.kind=dense", "model.kind=radial")):
        cfg = tiny_config("model.kind=radial", "model.pool_size=2", "model.steps=2", override)
        with pytest.raises(HFRadialError, match=named):
            write_hf_radial(cfg, {}, tmp_path)  # refused before any weight is read
        assert not (tmp_path / "config.json").exists()
