"""The dense baseline: a decoder-only transformer of `n_layers` Blocks."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from radial_jax.model.block_stack import run_blocks
from radial_jax.model.embed import Embedder
from radial_jax.model.layers import Block, attention_mask
from radial_jax.model.outputs import ModelAux
from radial_jax.parallel.constrain import with_logical_constraint

BSD = ("batch", "length", "embed")


class DenseLM(nnx.Module):
    def __init__(self, *, vocab_size: int, n_layers: int, tie_embeddings: bool, init_std: float,
                 norm_eps: float, dtype, block_kwargs: dict, rngs: nnx.Rngs,
                 embed_kwargs: dict | None = None, remat: str = "none", scan_layers: bool = False):
        """`remat`: what each block keeps for the backward pass (model/remat.py).
        `scan_layers`: run the blocks as one scan (model/block_stack.py)."""
        embed_kwargs = embed_kwargs or {}
        self.remat, self.scan_layers = remat, scan_layers
        self.embedder = Embedder(vocab_size, block_kwargs["d_model"], tie=tie_embeddings,
                                 init_std=init_std, norm_eps=norm_eps, dtype=dtype, rngs=rngs,
                                 **embed_kwargs)
        self.blocks = nnx.List([
            Block(**block_kwargs, norm_eps=norm_eps, init_std=init_std, n_residual_layers=n_layers,
                  dtype=dtype, rngs=rngs) for _ in range(n_layers)])

    def __call__(self, tokens_BxS: jax.Array, pos_BxS: jax.Array, seg_BxS: jax.Array
                 ) -> tuple[jax.Array, ModelAux]:
        """Logits [B, S, V] (float32) and an empty ModelAux (no routing, no auxiliary losses)."""
        idx_BxS = jnp.broadcast_to(jnp.arange(tokens_BxS.shape[1]), tokens_BxS.shape)
        mask = attention_mask(seg_BxS, idx_BxS, seg_BxS, idx_BxS)
        h_BxSxD = with_logical_constraint(self.embedder.encode(tokens_BxS, pos_BxS), BSD)
        h_BxSxD = run_blocks(self.blocks, h_BxSxD, pos_BxS, mask, remat=self.remat, scan=self.scan_layers)
        return self.embedder.decode(h_BxSxD), ModelAux()
