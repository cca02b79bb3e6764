"""model.scan_layers: the dense blocks, the radial prefix blocks and the routing steps run as scans.
Same parameters, and the same logits, metrics, losses, gradients and training as the unrolled loops;
the traced program holds one block and one routing step whatever the depth."""

import jax
import numpy as np
import pytest
from flax import nnx

from radial_jax.config import ConfigError
from radial_jax.model.build import build_model
from radial_jax.train.optimizer import lr_schedule, make_optimizer
from radial_jax.train.step import forward, init_state, make_train_step
from tests.helpers import packed_batch, tiny_config

RADIAL = ["model.kind=radial", "model.prefix_layers=2", "model.pool_size=2", "model.steps=2",
          "model.capacity_factor=0.5"]
BATCH = packed_batch([[20, 12], [32]], 32)


def _both(*overrides):
    """(graphdef, params) with scan_layers off and on: the same parameters either way."""
    out = [nnx.split(build_model(tiny_config(*overrides, f"model.scan_layers={s}")), nnx.Param)
           for s in ("false", "true")]
    assert jax.tree.structure(out[0][1]) == jax.tree.structure(out[1][1])
    return out


def _close(a, b, rtol=1e-5, atol=1e-6):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


@pytest.mark.parametrize("extra", [
    ["model.remat=block"],  # dense, rematerialised blocks inside the scan
    [*RADIAL, "model.remat=block", "model.kv_skip=carry", "routing.skip=learned", "routing.top_k=2"],
    [*RADIAL, "router.per_step=false", "routing.policy=expert_choice"],
], ids=["dense_remat", "radial_remat_carry_learned_top2", "radial_shared_router_expert_choice"])
def test_scan_gives_the_same_loss_metrics_and_gradients(extra):
    def loss(params, graphdef):
        logits, aux = forward(graphdef, params, BATCH)
        return logits.mean() + sum(aux.losses.terms().values(), 0.0), aux

    out = [jax.jit(jax.value_and_grad(loss, has_aux=True), static_argnums=1)(p, g) for g, p in _both(*extra)]
    (l0, aux0), g0 = out[0]
    (l1, aux1), g1 = out[1]
    np.testing.assert_allclose(l0, l1, rtol=1e-6)
    assert sorted(aux0.metrics) == sorted(aux1.metrics)
    _close((aux0.metrics, aux0.losses), (aux1.metrics, aux1.losses))
    _close(g0, g1, atol=1e-7)
    assert any(np.abs(np.asarray(x)).max() > 0 for x in jax.tree.leaves(g1))


def test_scan_inference_forward_and_trace():
    """Inference mode (no capacity, the learned skip predictor) and the per-step trace."""
    outs = []
    for g, p in _both(*RADIAL, "routing.skip=learned", "routing.early_exit=true"):
        run = jax.jit(lambda p, g=g: nnx.merge(g, p)(BATCH["inputs"], BATCH["positions"],
                                                     BATCH["segment_ids"], return_trace=True, inference=True))
        outs.append(run(p))
    _close(outs[0][0], outs[1][0])
    assert outs[1][1].trace_TxBxS.shape == (2, 2, 32)
    np.testing.assert_array_equal(outs[0][1].trace_TxBxS, outs[1][1].trace_TxBxS)


def test_training_steps_match():
    """Three optimizer steps (aux losses and the selection bias's balance step included)."""
    cfg_extra = [*RADIAL, "routing.balance_rate=0.01"]
    finals, losses = [], []
    for g, p in _both(*cfg_extra):
        cfg = tiny_config(*cfg_extra)
        tx = make_optimizer(cfg.train, cfg.routing.balance_rate)
        step = jax.jit(make_train_step(g, tx, lr_schedule(cfg.train)))
        state, seen = init_state(p, tx), []
        for _ in range(3):
            state, m = step(state, BATCH)
            seen.append(float(m["train/ce"]))
        finals.append(state.params)
        losses.append(seen)
    np.testing.assert_allclose(losses[0], losses[1], rtol=1e-5)
    assert losses[0][-1] < losses[0][0]
    _close(finals[0], finals[1], rtol=0, atol=1e-5)  # Adam's normalised steps magnify rounding


@pytest.mark.parametrize("kind", ["dense", "radial"])
def test_traced_program_does_not_grow_with_depth(kind):
    """Matmuls in the traced forward pass: constant in depth with scan_layers, growing without."""
    depth = "model.n_layers" if kind == "dense" else "model.steps"
    extra = [] if kind == "dense" else RADIAL

    def matmuls(n, scan):
        g, p = nnx.split(build_model(tiny_config(*extra, f"{depth}={n}", f"model.scan_layers={scan}")),
                         nnx.Param)
        return str(jax.make_jaxpr(lambda p: forward(g, p, BATCH)[0])(p)).count("dot_general")

    assert matmuls(2, "true") == matmuls(6, "true") < matmuls(6, "false")


def test_scan_refuses_a_sequential_schedule():
    with pytest.raises(ConfigError, match="model.scan_layers=true"):
        tiny_config(*RADIAL, "routing.schedule=sequential", "model.scan_layers=true")
