"""Mixture-of-Depths and Mixture-of-Recursions as radial configs (configs/baselines/): each trains,
decodes as its full inference forward pass, and exports; MoD's routed blocks take exactly C tokens;
MoR's recursion counts are its router's stop decisions."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from radial_jax.cli import main
from radial_jax.config import ConfigError, load_config
from radial_jax.io.load import load_model
from radial_jax.model.decode import decode_step, prefill
from radial_jax.model.kv_cache import init_cache
from radial_jax.train.loop import train
from radial_jax.train.metrics import read_metrics
from tests.helpers import TINY

CONFIGS = {"mod": "configs/baselines/mod_tiny.yaml", "mor": "configs/baselines/mor_tiny.yaml"}
# TINY's shapes on the baseline configs; MoR's router starts flat, so some tokens stop early.
EXTRA = {"mod": [], "mor": ["router.init=random"]}
S = 32  # TINY's seq_len


def cfg_of(name, *extra):
    return load_config(CONFIGS[name], [*TINY, *EXTRA[name], *extra])


@pytest.fixture(scope="module", params=list(CONFIGS))
def run(request, tmp_path_factory, corpus_cache):
    """(name, run dir, loaded model): three training steps of the baseline at TINY's shapes."""
    name = request.param
    run_dir = tmp_path_factory.mktemp(f"{name}_run")
    train(cfg_of(name, f"run.dir={run_dir}", f"data.cache_dir={corpus_cache}", "train.steps=3",
                 "train.log_every=1", "train.eval_every=100", "train.eval_batches=1",
                 "train.checkpoint_every=100"))
    return name, run_dir, load_model(run_dir)


def batch(b=3, seed=0):
    tokens = np.random.default_rng(seed).integers(1, 256, (b, S)).astype(np.int32)
    pos = np.broadcast_to(np.arange(S, dtype=np.int32), (b, S))
    return jnp.asarray(tokens), jnp.asarray(pos), jnp.ones((b, S), jnp.int32)


def _logits_trace(graphdef, params, inference):
    logits, aux = nnx.merge(graphdef, params)(*batch(), return_trace=True, inference=inference)
    return logits, aux.trace_TxBxS, aux.metrics["route/active_depth"]


_logits_trace_jit = jax.jit(_logits_trace, static_argnums=(0, 2))


def forward(loaded, *, inference):
    """(logits, trace [T, B, S], mean active depth) of `batch()`, compiled once per model and mode."""
    return tuple(np.asarray(x) for x in _logits_trace_jit(loaded.graphdef, loaded.params, inference))


def test_trains_with_finite_losses(run):
    name, run_dir, loaded = run
    rows = [r for r in read_metrics(run_dir) if "train/loss" in r]
    assert len(rows) == 3 and all(math.isfinite(r["train/loss"]) for r in rows), name
    if name == "mod":  # the predictor's loss is trained and logged
        assert any("route/skip_predict_accuracy" in r for r in rows)


def test_prefill_then_decode_equals_the_inference_forward(run):
    """Prefill 5 tokens then decode the rest one at a time (batched path), and decode a sequence from
    an empty cache (batch-1 lax.switch path): the full inference pass's logits (nothing is dropped
    at inference), and the cache keeps the trace's routes."""
    name, _, loaded = run
    want, trace, _ = forward(loaded, inference=True)
    tokens = np.asarray(batch()[0])
    g, params = loaded.graphdef, loaded.params
    decode_jit = jax.jit(decode_step, static_argnums=0, static_argnames="switch")
    for rows, n_prompt, switch in (([0, 1, 2], 5, False), ([2], 0, True)):
        cache = init_cache(loaded.cfg, len(rows), S)
        got = []
        if n_prompt:
            logits, cache = jax.jit(prefill, static_argnums=0)(
                g, params, tokens[rows, :n_prompt], jnp.full((len(rows),), n_prompt, jnp.int32), cache)
            got.append(np.asarray(logits))
        for j in range(n_prompt, S):
            logits, cache = decode_jit(g, params, tokens[rows, j], cache, switch=switch)
            got.append(np.asarray(logits)[:, None])
        np.testing.assert_allclose(np.concatenate(got, 1), want[rows], atol=1e-4, rtol=0,
                                   err_msg=f"{name} switch={switch}")
        np.testing.assert_array_equal(np.asarray(cache.route_TxBxM), trace[:, rows])
    p = loaded.cfg.model.pool_size
    assert (trace < p).any() and (trace == p).any(), f"{name}: some tokens run, some skip"


def test_export_loads_with_equal_logits(run, tmp_path, capsys):
    name, run_dir, loaded = run
    out = tmp_path / "exported"
    assert main(["export", "--checkpoint", str(run_dir), "--out", str(out)]) == 0
    capsys.readouterr()
    again = load_model(out)
    assert again.cfg.routing == loaded.cfg.routing
    np.testing.assert_array_equal(forward(again, inference=True)[0], forward(loaded, inference=True)[0])


def test_mod_routed_blocks_take_exactly_c_tokens_per_sequence(run):
    """Training: blocks 0 and 2 run every token, blocks 1 and 3 exactly ceil(0.125 * S) per row."""
    name, _, loaded = run
    if name != "mod":
        pytest.skip("MoD only")
    _, trace, depth = forward(loaded, inference=False)
    c = math.ceil(0.125 * S)
    for t in range(4):
        ran_B = (trace[t] == t).sum(-1)
        assert ((trace[t] == t) | (trace[t] == 4)).all()  # step t runs block t or nothing
        np.testing.assert_array_equal(ran_B, S if t % 2 == 0 else c, err_msg=f"block {t}")
    assert float(depth) == pytest.approx(2 + 2 * c / S)


def test_mor_recursions_follow_the_first_stop_decision(run):
    """Each token recurses until the router first says stop, and never after: its count of
    processed steps equals the index of its first skip; tokens differ in depth."""
    name, _, loaded = run
    if name != "mor":
        pytest.skip("MoR only")
    for inference in (False, True):
        ran_TxBxS = forward(loaded, inference=inference)[1] == 0
        first_stop_BxS = np.where(ran_TxBxS.all(0), ran_TxBxS.shape[0], np.argmin(ran_TxBxS, axis=0))
        np.testing.assert_array_equal(ran_TxBxS.sum(0), first_stop_BxS)
        assert not (np.diff(ran_TxBxS.astype(int), axis=0) > 0).any()  # never resumes after a stop
        assert len(np.unique(ran_TxBxS.sum(0))) > 1  # the router gives tokens different depths


def test_mor_without_early_exit_resumes_after_a_skip(run):
    """The constraint is what makes depth a first stop: the same weights without it let tokens run
    again after skipping (so the test above could fail)."""
    name, _, loaded = run
    if name != "mor":
        pytest.skip("MoR only")
    model = nnx.merge(loaded.graphdef, loaded.params)
    model.routing = dataclasses.replace(model.routing, early_exit=False)
    graphdef, params = nnx.split(model, nnx.Param)
    ran_TxBxS = np.asarray(_logits_trace_jit(graphdef, params, False)[1]) == 0
    assert (np.diff(ran_TxBxS.astype(int), axis=0) > 0).any()


@pytest.mark.parametrize("override, named", [
    ("routing.route_every=2", "routing.schedule=sequential"),
    ("routing.schedule=sequential routing.top_k=2 model.pool_size=3", "routing.top_k=2"),
])
def test_baseline_options_misused_are_clear_errors(override, named):
    with pytest.raises(ConfigError, match=named):
        load_config(None, [*TINY, "model.kind=radial", *override.split()])
