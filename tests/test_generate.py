"""Sampling and generation: greedy is the argmax of the full forward, seeds repeat, batches are ragged,
EOS stops, and `radial generate` prints text from a trained checkpoint."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from radial_jax.cli import main
from radial_jax.generate.command import format_depths
from radial_jax.generate.sampling import Generator, Sampling, sample_logits
from radial_jax.model.build import build_model
from radial_jax.train.loop import train
from tests.helpers import f32_copies, run_cfg, tiny_config

RADIAL = ["model.kind=radial", "model.pool_size=3", "model.steps=3", "router.init=random"]
PROMPTS = [[256, 72, 101, 108, 108, 111], [256, 100], [256, 1, 2, 3, 4, 5, 6, 7, 8]]


@pytest.fixture(scope="module")
def radial():
    cfg = tiny_config(*RADIAL)
    graphdef, params = nnx.split(build_model(cfg), nnx.Param)
    return cfg, graphdef, params, Generator(cfg, graphdef, params, burst=4)  # tails and EOS mid-burst


def test_greedy_is_deterministic_and_follows_the_full_forward(radial):
    cfg, graphdef, params, gen = radial
    a = gen.generate(PROMPTS, max_tokens=8, sampling=Sampling(temperature=0.0))
    b = gen.generate(PROMPTS, max_tokens=8, sampling=Sampling(temperature=0.0))
    assert a.tokens == b.tokens and a.depth == b.depth and a.stop == ["max_tokens"] * 3
    assert all(len(t) == 8 for t in a.tokens)
    # Every greedy token is the argmax of one full forward pass over prompt + generated tokens
    # (capacity = seq_len there, so training-style routing drops nothing either).
    seq = PROMPTS[0] + a.tokens[0]
    full = tiny_config(*RADIAL, "model.capacity_factor=3")
    forward = jax.jit(lambda p, *a: nnx.merge(nnx.graphdef(build_model(full)), p)(*a))
    s = len(seq)
    logits, _ = forward(params, jnp.asarray([seq]), jnp.arange(s)[None], jnp.ones((1, s), jnp.int32))
    want = np.asarray(jnp.argmax(logits[0], -1))[len(PROMPTS[0]) - 1:-1]
    assert a.tokens[0] == want.tolist()
    assert all(1 <= d <= 3 for row in a.depth for d in row)


def test_batched_ragged_prompts_match_one_at_a_time(radial):
    cfg, graphdef, params, gen = radial
    batched = gen.generate(PROMPTS, max_tokens=6, sampling=Sampling(temperature=0.0))
    alone = gen.generate(PROMPTS[2:], max_tokens=6, sampling=Sampling(temperature=0.0))  # lax.switch
    assert batched.tokens[2] == alone.tokens[0] and batched.depth[2] == alone.depth[0]


def test_sampling_repeats_under_a_seed_and_differs_across_seeds(radial):
    _, _, _, gen = radial
    rule = Sampling(temperature=1.0, top_k=100, top_p=0.95)
    a = gen.generate(PROMPTS, max_tokens=12, sampling=rule, seed=1)
    b = gen.generate(PROMPTS, max_tokens=12, sampling=rule, seed=1)
    c = gen.generate(PROMPTS, max_tokens=12, sampling=rule, seed=2)
    assert a.tokens == b.tokens
    assert a.tokens != c.tokens


@pytest.mark.parametrize("kind", ["radial", "dense"])
def test_bursts_decode_what_single_steps_decode(radial, kind):
    """Several tokens per jitted call (a lax.scan of the step) draw the same tokens at the same depths
    as one call per token, over a burst, the single steps of the tail, and a batch."""
    cfg, graphdef, params, _ = radial
    if kind == "dense":
        cfg = tiny_config()
        graphdef, params = nnx.split(build_model(cfg), nnx.Param)
    rule = Sampling(temperature=1.0, top_k=50)
    for prompts in (PROMPTS[:1], PROMPTS):  # batch 1 (radial: the lax.switch path) and batched
        one = Generator(cfg, graphdef, params, burst=1).generate(prompts, max_tokens=11, sampling=rule,
                                                                  seed=5)
        four = Generator(cfg, graphdef, params, burst=4).generate(prompts, max_tokens=11, sampling=rule,
                                                                   seed=5)
        assert four.tokens == one.tokens and four.depth == one.depth  # 1 + 2 bursts of 4 + 2 single
        assert all(len(t) == 11 for t in one.tokens)
    with pytest.raises(ValueError, match="burst must be >= 1"):
        Generator(cfg, graphdef, params, burst=0)


@pytest.mark.parametrize("batch", [1, 2])
def test_a_burst_updates_the_cache_in_place(radial, batch):
    """The scanned burst carries the cache through a loop without copying any slot (a copy per step
    would cost more than the dispatch the burst saves)."""
    import re

    from radial_jax.generate.sampling import sampling_key
    from radial_jax.model.kv_cache import init_cache

    cfg, graphdef, params, gen = radial
    cache = init_cache(cfg, batch, 37)
    hlo = gen._steps.lower(gen._leaves, gen._step_leaves, jnp.zeros((batch,), jnp.int32), cache,
                           sampling_key(0), 1, n=4, s=Sampling(0.8)).compile().as_text()
    assert re.search(r" while\(", hlo)  # a loop, not 4 unrolled steps
    copies = f32_copies(hlo)
    slots = {tuple(x.shape) for x in (*cache.k, *cache.v)}
    assert not [c for c in copies if c in slots], f"slot copies in the burst: {copies}"


def test_eos_stops_a_sequence(radial):
    _, _, _, gen = radial
    free = gen.generate(PROMPTS, max_tokens=6, sampling=Sampling(temperature=0.0))
    eos = free.tokens[0][2]
    seen = []
    out = gen.generate(PROMPTS, max_tokens=6, sampling=Sampling(temperature=0.0), eos_id=eos,
                       on_token=lambda row, tok, depth: seen.append((row, tok)))
    first = free.tokens[0].index(eos)
    assert out.tokens[0] == free.tokens[0][:first] and out.stop[0] == "eos"
    assert (0, eos) in seen and [t for r, t in seen if r == 0][-1] == eos  # streamed, then stopped
    if eos not in free.tokens[1]:
        assert out.tokens[1] == free.tokens[1] and out.stop[1] == "max_tokens"


def test_sample_logits_rules():
    probs = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]]))
    keys = jax.random.split(jax.random.PRNGKey(0), 400)

    def support(rule):
        draws = jax.vmap(lambda k: sample_logits(probs, k, rule))(keys)
        return set(np.asarray(draws).ravel().tolist())

    assert support(Sampling(temperature=0.0)) == {0}
    assert support(Sampling(temperature=1.0)) == {0, 1, 2, 3}
    assert support(Sampling(temperature=1.0, top_k=2)) == {0, 1}
    assert support(Sampling(temperature=1.0, top_p=0.7)) == {0, 1}   # 0.5 < 0.7 <= 0.8
    assert support(Sampling(temperature=1.0, top_p=0.5)) == {0}
    assert support(Sampling(temperature=1.0, top_k=3, top_p=0.99)) == {0, 1, 2}
    with pytest.raises(ValueError, match="top_p"):
        Sampling(temperature=1.0, top_p=0.0)
    # the draws follow the probabilities (4000 draws: 3 standard deviations are <= 0.024)
    many = jax.random.split(jax.random.PRNGKey(1), 4000)
    draws = np.asarray(jax.vmap(lambda k: sample_logits(probs, k, Sampling(temperature=1.0)))(many))
    assert np.abs(np.bincount(draws.ravel(), minlength=4) / 4000 - [0.5, 0.3, 0.15, 0.05]).max() < 0.024
    halved = np.asarray(jax.vmap(lambda k: sample_logits(probs, k, Sampling(temperature=2.0)))(many))
    want = np.sqrt([0.5, 0.3, 0.15, 0.05]) / np.sqrt([0.5, 0.3, 0.15, 0.05]).sum()  # p^(1/2), renormed
    assert np.abs(np.bincount(halved.ravel(), minlength=4) / 4000 - want).max() < 0.024


def test_format_depths():
    text = format_depths(["a", "\n", "b"], [3, 1, 2], 4)
    assert text.splitlines() == ["[depth] blocks run per generated token (of 4): mean 2.00 (50%)",
                                 "'a':3 '\\n':1 'b':2"]


@pytest.mark.slow
def test_generate_command_prints_text_from_a_trained_checkpoint(tmp_path, corpus_cache, capsys):
    run_dir = tmp_path / "run"
    train(run_cfg(run_dir, corpus_cache, "train.steps=3", *RADIAL[:3]))
    capsys.readouterr()
    args = ["generate", "--checkpoint", str(run_dir), "--prompt", "def main(", "--max-tokens", "24",
            "--seed", "3", "--show-depth"]
    assert main(args) == 0
    out = capsys.readouterr().out
    text, depth = out.split("\n[depth] ")
    assert text.startswith("def main(") and len(text) > len("def main(")
    assert depth.startswith("blocks run per generated token (of 3): mean")
    assert main(args) == 0
    assert capsys.readouterr().out == out  # same seed, same text
    assert main([*args, "--top-p", "0"]) == 2
    assert "error: sampling needs" in capsys.readouterr().err
    assert main([*args, "--burst", "0"]) == 2
    assert "--burst must be >= 1" in capsys.readouterr().err


@pytest.mark.slow
def test_decode_bench_writes_json_and_a_table(tmp_path, capsys):
    from radial_jax.bench.decode import run

    out = tmp_path / "decode.json"
    small = ["model.d_model=32", "model.n_heads=2", "model.n_kv_heads=1", "model.d_ff=64"]
    report = run(["configs/radial_tiny.yaml", "configs/tiny.yaml"], small, str(out), prompt_len=8,
                 new_tokens=2, windows=2, burst=2, hf_tokens=3)
    rows = report["results"]
    threads = sorted({1, len(os.sched_getaffinity(0))})
    assert [(r["kind"], r["batch"], r["path"]) for r in rows] == [
        ("radial", 1, "switch"), ("radial", 1, "batched"), ("radial", 8, "batched"),
        ("dense", 1, "all layers"), ("dense", 8, "all layers"),
        *[("dense", b, "generate()") for _ in threads for b in (1, 8)]]
    assert [r["torch_threads"] for r in rows[5:]] == [t for t in threads for _ in (1, 8)]
    assert rows[5]["params"] == rows[3]["params"]  # transformers' Llama has our dense model's shape
    assert all(r["ms_per_token"] > 0 for r in rows)
    assert all(0 < r["active_fraction"] <= 1 for r in rows[:5])
    assert {"transformers_over_ours_batch1", "transformers_over_ours_batch8"} <= set(report)
    assert all(len(r["window_ms"]) == 2 for r in rows)
    paired = report["radial_over_dense_batch1"]["radial_tiny"]["ratio_paired"]
    radial, dense = rows[0]["window_ms"], rows[3]["window_ms"]
    assert paired == pytest.approx(np.median([radial[0] / dense[0], radial[1] / dense[1]]))
    cpu = report["radial_over_dense_batch8"]["radial_tiny"]["ratio_paired_cpu"]
    radial, dense = rows[2]["cpu_window_ms"], rows[4]["cpu_window_ms"]
    assert cpu == pytest.approx(np.median([radial[0] / dense[0], radial[1] / dense[1]]))
    assert out.is_file() and "| radial_tiny |" in capsys.readouterr().out
    assert report["burst"] == 2


def test_decode_variants_force_routes_and_share_weights(tmp_path, capsys):
    """`radial bench decode-variants` (batched, so the grouped path): the forced routes run the
    depths they force (the cache's routes say so), shared weights change no route, and the dense
    rows run 1..prefix+P blocks."""
    from radial_jax.bench.decode_variants import run

    small = ["model.d_model=32", "model.n_heads=2", "model.n_kv_heads=1", "model.d_ff=64"]
    out = tmp_path / "variants.json"
    report = run(config="configs/ablations/skip_learned.yaml", overrides=small, out=str(out),
                 prompt_len=8, new_tokens=3, windows=2, burst=1, batch=2)
    depth = {r["model"].split(": ")[-1]: r["mean_active_depth"] for r in report["results"]}
    # radial_tiny's shape: 1 prefix block, a pool of 3, 2 routing steps
    assert [depth[f"dense, {n} block{'s' * (n > 1)}"] for n in (1, 2, 3, 4)] == [1, 2, 3, 4]
    assert depth["layer 0 at every step"] == depth["layer t mod P at step t"] == 3
    assert depth["layer t mod P at step t, shared weights"] == 3
    assert depth["skip at every step"] == 1
    assert depth["as routed, shared weights"] > 0 and 1 <= depth["as routed"] <= 3
    rows = report["results"]
    assert rows[3]["over_dense_paired"] == 1.0 and all(len(r["window_ms"]) == 2 for r in rows)
    assert out.is_file() and report["batch"] == 2
    printed = capsys.readouterr().out
    assert "| skip_learned (random weights): skip at every step |" in printed and "batch-2 ms" in printed


def test_decode_variants_needs_one_radial_model():
    with pytest.raises(SystemExit, match="model.kind=dense"):
        main(["bench", "decode-variants", "--configs", "configs/tiny.yaml"])
    with pytest.raises(SystemExit, match="one radial model"):
        main(["bench", "decode-variants", "--configs", "configs/tiny.yaml", "configs/radial_tiny.yaml"])
    # an override after --configs is an override, not a second config
    with pytest.raises(SystemExit, match="model.kind=dense"):
        main(["bench", "decode-variants", "--configs", "configs/tiny.yaml", "model.d_model=32"])
    with pytest.raises(SystemExit, match="--burst must be 1, 2, 4, 8 or 16"):
        main(["bench", "decode", "--burst", "3"])
