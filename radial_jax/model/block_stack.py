"""Blocks applied one after another (the dense model, the radial prefix): unrolled, or as one scan.

Shape letters: B batch, S sequence, D model width, L blocks.

With `scan` the blocks' parameters are stacked on a leading L axis inside the forward pass and one
block's computation runs under `jax.lax.scan`, so the compiled program holds one block whatever L.
The parameters stay a list of blocks (checkpoints, export and decoding read the same layout with
scan on or off); the price is one stacked copy of them per pass, and its gradient sliced back.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from radial_jax.model.remat import checkpoint
from radial_jax.parallel.constrain import with_logical_constraint

BSD = ("batch", "length", "embed")


def run_blocks(blocks, h_BxSxD: jax.Array, pos_BxS: jax.Array, mask_Bx1xSxS: jax.Array, *,
               remat: str, scan: bool) -> jax.Array:
    """h after every block of `blocks` (a sequence of identically built Blocks), each output
    constrained to its logical axes. `remat`: what each block keeps for the backward pass
    (model/remat.py)."""
    def apply(graphdef):
        def one(h, state):
            return with_logical_constraint(nnx.merge(graphdef, state)(h, pos_BxS, mask_Bx1xSxS), BSD)
        return checkpoint(one, remat)

    if not scan or len(blocks) < 2:
        for block in blocks:
            graphdef, state = nnx.split(block)
            h_BxSxD = apply(graphdef)(h_BxSxD, state)
        return h_BxSxD
    one = apply(nnx.split(blocks[0])[0])
    state_L = jax.tree.map(lambda *w: jnp.stack(w), *[nnx.split(block)[1] for block in blocks])
    h_BxSxD, _ = jax.lax.scan(lambda h, state: (one(h, state), None), h_BxSxD, state_L)
    return h_BxSxD
