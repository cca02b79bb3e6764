"""model.remat: the same loss and gradients under every policy, with the blocks' activations (prefix
blocks and pool layers alike) recomputed in the backward pass as the policy says."""

import jax
import numpy as np
import pytest
from flax import nnx

from radial_jax.model.build import build_model
from radial_jax.model.remat import POLICIES
from radial_jax.train.step import forward
from tests.helpers import packed_batch, tiny_config

RADIAL = ["model.kind=radial", "model.prefix_layers=1", "model.pool_size=2", "model.steps=2",
          "model.capacity_factor=0.5"]


@pytest.mark.slow  # four tiny compiles of the grad (about 1.5 minutes on a shared core)
def test_remat_policies_keep_loss_and_gradients():
    """One radial model covers both places remat applies: its prefix block (the dense model's
    blocks run through the same run_blocks) and its pool layers."""
    batch = packed_batch([[20, 12]] * 2, 32)
    out = {}
    for remat in POLICIES:
        graphdef, params = nnx.split(build_model(tiny_config(*RADIAL, f"model.remat={remat}")), nnx.Param)

        def loss(p, graphdef=graphdef):
            logits, _ = forward(graphdef, p, batch)
            return logits.astype("float32").mean()

        jaxpr = str(jax.make_jaxpr(jax.grad(loss))(params))
        value, grads = jax.jit(jax.value_and_grad(loss))(params)
        out[remat] = value, grads, "checkpoint" in jaxpr or "remat" in jaxpr, jaxpr.count("dot_general")
    assert not out["none"][2] and all(out[r][2] for r in POLICIES if r != "none")
    # `block` recomputes every matmul of the forward pass; `dots` and `offload` keep the weight
    # matmuls' outputs (named in the layers, inside the pool's vmap too) and recompute attention only.
    assert out["block"][3] > out["dots"][3] == out["offload"][3] > out["none"][3]
    for remat in POLICIES[1:]:
        np.testing.assert_allclose(out["none"][0], out[remat][0], rtol=1e-6)
        for a, b in zip(jax.tree.leaves(out["none"][1]), jax.tree.leaves(out[remat][1]), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
