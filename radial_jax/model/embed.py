"""Token embedding in, final norm and vocabulary logits out; shared by the dense and radial models.

With `positions="learned"` (GPT-2, OPT) a position table is added to the token embedding; otherwise
positions enter through RoPE inside attention.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from radial_jax.model.layers import make_norm, param
from radial_jax.parallel.constrain import with_logical_constraint


class Embedder(nnx.Module):
    def __init__(self, vocab_size: int, d_model: int, *, tie: bool, init_std: float,
                 norm_eps: float, dtype, rngs: nnx.Rngs, norm: str = "rms", positions: str = "rope",
                 max_positions: int = 0):
        self.embedding = param(rngs, (vocab_size, d_model), ("vocab", "embed"), init_std)
        self.pos_embedding = (param(rngs, (max_positions, d_model), (None, "embed"), init_std)
                              if positions == "learned" else None)
        self.final_norm = make_norm(norm, d_model, eps=norm_eps, rngs=rngs)
        self.head = None if tie else param(rngs, (d_model, vocab_size), ("embed", "vocab"), init_std)
        self.dtype = dtype

    def encode(self, tokens_BxS: jax.Array, pos_BxS: jax.Array | None = None) -> jax.Array:
        """Embeddings [B, S, D]; learned positions need `pos_BxS` (positions inside each document)."""
        table_VxD = with_logical_constraint(self.embedding[...], ("vocab", None))  # gathered per use
        h_BxSxD = jnp.take(table_VxD, tokens_BxS, axis=0)
        if self.pos_embedding is not None:
            if pos_BxS is None:
                raise ValueError("a model with learned positions needs pos_BxS in Embedder.encode")
            h_BxSxD = h_BxSxD + jnp.take(self.pos_embedding[...], pos_BxS, axis=0)
        return h_BxSxD.astype(self.dtype)

    def decode(self, h_BxSxD: jax.Array) -> jax.Array:
        """Float32 logits [B, S, V]."""
        x = self.final_norm(h_BxSxD).astype(self.dtype)
        if self.head is None:  # tied: the table as stored, [V, D] (`.T` made XLA on CPU copy the whole
            w, spec = self.embedding[...], "bsd,vd->bsv"  # transposed table at every decode step)
        else:
            w, spec = self.head[...], "bsd,dv->bsv"
        return jnp.einsum(spec, x, w.astype(self.dtype)).astype(jnp.float32)
