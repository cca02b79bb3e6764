"""`radial export`: our safetensors layout round-trips (dense and radial); the HF Llama layout loads in
transformers with the same logits; export directories load through `load_model` (eval, generate)."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from radial_jax.cli import main
from radial_jax.config import ConfigError
from radial_jax.io.export import write_export
from radial_jax.io.load import load_model
from radial_jax.io.tensors import flat_params
from radial_jax.model.build import build_model
from radial_jax.model.layers import apply_rope
from radial_jax.train.loop import train
from tests.helpers import packed_batch, tiny_config

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

SEQ = 32


def logits_of(graphdef, params, batch):
    model = nnx.merge(graphdef, params)
    return np.asarray(model(batch["inputs"], batch["positions"], batch["segment_ids"])[0])


def one_doc_batch(seed=0, b=2, s=SEQ, vocab=258):
    tokens = np.random.default_rng(seed).integers(0, vocab, (b, s)).astype(np.int32)
    pos = np.broadcast_to(np.arange(s, dtype=np.int32), (b, s))
    return {"inputs": jnp.asarray(tokens), "positions": jnp.asarray(pos),
            "segment_ids": jnp.ones((b, s), jnp.int32)}


def test_rope_is_rotate_half_as_in_hf_llama():
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb, rotate_half

    rng = np.random.default_rng(0)
    b, s, h, k, theta = 2, 7, 3, 8, 10000.0
    q = rng.normal(size=(b, s, h, k)).astype(np.float32)
    pos = np.broadcast_to(np.arange(s), (b, s))
    inv = 1.0 / theta ** (np.arange(0, k, 2) / k)
    ang = pos[..., None] * inv
    emb = np.concatenate([ang, ang], -1)  # HF LlamaRotaryEmbedding's cos/sin layout
    cos, sin = torch.tensor(np.cos(emb), dtype=torch.float32), torch.tensor(np.sin(emb), dtype=torch.float32)
    qt = torch.tensor(q).transpose(1, 2)  # HF: [B, H, S, K]
    want, _ = apply_rotary_pos_emb(qt, qt, cos, sin)
    got = apply_rope(jnp.asarray(q), jnp.asarray(pos), theta)
    np.testing.assert_allclose(np.asarray(got), want.transpose(1, 2).numpy(), atol=1e-5)
    assert rotate_half is not None


@pytest.mark.parametrize("tie", [True, False])
def test_dense_hf_export_loads_in_transformers_with_the_same_logits(tmp_path, tie):
    cfg = tiny_config("model.init_std=0.1", f"model.tie_embeddings={str(tie).lower()}",
                      "model.rope_theta=500.0")
    graphdef, params = nnx.split(build_model(cfg), nnx.Param)
    files = write_export(cfg, params, tmp_path, fmt="hf")
    assert set(files) == {"config", "weights"}
    hf = transformers.LlamaForCausalLM.from_pretrained(str(tmp_path), dtype=torch.float32).eval()
    assert hf.config.num_key_value_heads == 2 and hf.config.tie_word_embeddings == tie
    batch = one_doc_batch()
    with torch.no_grad():
        want = hf(torch.tensor(np.asarray(batch["inputs"]), dtype=torch.long)).logits.numpy()
    np.testing.assert_allclose(logits_of(graphdef, params, batch), want, atol=1e-4, rtol=1e-4)


def test_dense_hf_export_picks_the_architecture_that_holds_the_options(tmp_path):
    # an untied head rules GPT-2 out; OPT holds LayerNorm (eps 1e-5), ReLU, biases, learned positions
    cfg = tiny_config("model.init_std=0.1", "model.tie_embeddings=false", "model.norm=layer",
                      "model.norm_eps=1e-5", "model.mlp=relu", "model.positions=learned",
                      "model.max_positions=64", "model.qkv_bias=true", "model.out_bias=true",
                      "model.mlp_bias=true", "model.n_kv_heads=4")
    graphdef, params = nnx.split(build_model(cfg), nnx.Param)
    write_export(cfg, params, tmp_path, fmt="hf")
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path), dtype=torch.float32).eval()
    assert type(hf).__name__ == "OPTForCausalLM"
    batch = one_doc_batch()
    with torch.no_grad():
        want = hf(torch.tensor(np.asarray(batch["inputs"]), dtype=torch.long)).logits.numpy()
    np.testing.assert_allclose(logits_of(graphdef, params, batch), want, atol=1e-4, rtol=1e-4)


def test_dense_hf_export_refuses_options_no_architecture_holds(tmp_path):
    cfg = tiny_config("model.norm=layer")  # with RoPE: Llama has RMSNorm, GPT-2 and OPT learned positions
    _, params = nnx.split(build_model(cfg), nnx.Param)
    with pytest.raises(ConfigError) as err:
        write_export(cfg, params, tmp_path, fmt="hf")
    for named in ("llama cannot take model.norm='layer'", "gpt2 cannot take", "model.positions='rope'",
                  "opt cannot take", "--format safetensors"):
        assert named in str(err.value)
    assert not (tmp_path / "config.json").exists()


def test_hf_export_of_radial_models_writes_transformers_remote_code(tmp_path):
    cfg = tiny_config("model.kind=radial", "model.pool_size=2", "model.steps=2")
    _, params = nnx.split(build_model(cfg), nnx.Param)
    files = write_export(cfg, params, tmp_path, fmt="hf")  # tests/test_hf_radial_export.py: it runs
    assert files["modeling_radial"].is_file()
    assert json.loads(files["config"].read_text())["auto_map"]["AutoModelForCausalLM"]


@pytest.mark.parametrize("kind", ["dense", "radial"])
def test_safetensors_export_round_trips(tmp_path, kind):
    extra = ["model.kind=radial", "model.pool_size=3", "model.steps=3", "model.prefix_layers=1",
             "router.init=random"] if kind == "radial" else ["model.tie_embeddings=false"]
    cfg = tiny_config(*extra)
    graphdef, params = nnx.split(build_model(cfg), nnx.Param)
    write_export(cfg, params, tmp_path, step=7)
    doc = json.loads((tmp_path / "config.json").read_text())
    assert doc["radial_jax"]["step"] == 7 and doc["config"]["model"]["kind"] == kind
    m = load_model(tmp_path)  # no orbax: the export path
    cfg2, graphdef2, params2 = m.cfg, m.graphdef, m.params
    assert cfg2 == cfg and m.step == 7
    a, b = flat_params(params), flat_params(params2)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    batch = packed_batch([[20, 12], [32]], SEQ)
    np.testing.assert_array_equal(logits_of(graphdef, params, batch), logits_of(graphdef2, params2, batch))
    loaded = load_model(tmp_path, ["data.batch_size=2"])
    assert loaded.source == "export" and loaded.cfg.data.batch_size == 2


def test_export_with_the_wrong_weights_is_a_clear_error(tmp_path):
    cfg = tiny_config()
    _, params = nnx.split(build_model(cfg), nnx.Param)
    write_export(cfg, params, tmp_path)
    doc = json.loads((tmp_path / "config.json").read_text())
    doc["config"]["model"]["n_layers"] = 3
    (tmp_path / "config.json").write_text(json.dumps(doc))
    with pytest.raises(ConfigError, match="missing blocks.2"):
        load_model(tmp_path)


@pytest.fixture(scope="module")
def radial_run(tmp_path_factory, corpus_cache):
    run_dir = tmp_path_factory.mktemp("radial_run")
    cfg = tiny_config(f"run.dir={run_dir}", f"data.cache_dir={corpus_cache}", "train.steps=2",
                      "train.eval_every=100", "train.eval_batches=1", "train.checkpoint_every=100",
                      "model.kind=radial", "model.pool_size=2", "model.steps=2")
    train(cfg)
    return run_dir


@pytest.mark.slow
def test_export_command_then_eval_and_generate_match_the_run(radial_run, tmp_path, capsys):
    out = tmp_path / "exported"
    assert main(["export", "--checkpoint", str(radial_run), "--out", str(out)]) == 0
    files = json.loads(capsys.readouterr().out)
    assert files["weights"].endswith("model.safetensors")
    results = []
    for path in (radial_run, out):
        assert main(["eval", "--checkpoint", str(path), "--batches", "1"]) == 0
        results.append(json.loads(capsys.readouterr().out))
    assert results[0]["eval/loss"] == results[1]["eval/loss"] and results[1]["step"] == 2
    texts = []
    for path in (radial_run, out):
        assert main(["generate", "--checkpoint", str(path), "--prompt", "def ", "--max-tokens", "12",
                     "--temperature", "0"]) == 0
        texts.append(capsys.readouterr().out)
    assert texts[0] == texts[1] and texts[0].startswith("def ")
    a, b = load_model(radial_run), load_model(out)
    g1, p1, g2, p2 = a.graphdef, a.params, b.graphdef, b.params
    batch = packed_batch([[20, 12], [32]], SEQ)
    np.testing.assert_array_equal(logits_of(g1, p1, batch), logits_of(g2, p2, batch))
    assert jax.tree.structure(p1) == jax.tree.structure(p2)
