"""model.remat=block: the same loss and gradients, with the blocks' activations recomputed in the
backward pass (a remat/checkpoint in the differentiated program)."""

import jax
import numpy as np
import pytest
from flax import nnx

from radial_jax.model.build import build_model
from radial_jax.train.step import forward
from tests.helpers import packed_batch, tiny_config

RADIAL = ["model.kind=radial", "model.prefix_layers=1", "model.pool_size=2", "model.steps=2",
          "model.capacity_factor=0.5"]


@pytest.mark.parametrize("kind", ["dense", "radial"])
def test_remat_block_keeps_loss_and_gradients(kind):
    extra = RADIAL if kind == "radial" else []
    batch = packed_batch([[20, 12]] * 2, 32)
    out = {}
    for remat in ("none", "block"):
        graphdef, params = nnx.split(build_model(tiny_config(*extra, f"model.remat={remat}")), nnx.Param)

        def loss(p, graphdef=graphdef):
            logits, _ = forward(graphdef, p, batch)
            return logits.astype("float32").mean()

        jaxpr = str(jax.make_jaxpr(jax.grad(loss))(params))
        out[remat] = (*jax.value_and_grad(loss)(params), "remat" in jaxpr or "checkpoint" in jaxpr)
    assert not out["none"][2] and out["block"][2]
    np.testing.assert_allclose(out["none"][0], out["block"][0], rtol=1e-6)
    for a, b in zip(jax.tree.leaves(out["none"][1]), jax.tree.leaves(out["block"][1]), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
