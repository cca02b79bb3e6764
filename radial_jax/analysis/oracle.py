"""Residual ratios and oracle layer skipping on a dense model, in one forward pass.

Shape letters: B batch, S sequence, D model width, N residual blocks (2 per layer: attention, MLP).

Every residual block adds a delta f(x) to the stream x. Its residual ratio for a token is
r = ||f(x)||_2 / ||x||_2 over the model width (PAPER.md). The oracle skips a block for a token when
r < threshold, computing r on the fly in the same forward pass: the ratio a block sees is taken on the
stream as earlier skips left it. Skipping drops the token's delta only; the block's keys and values
still come from every token's (skip-affected) stream, as if the block ran on the whole sequence and
its output were discarded where the oracle skips. At threshold 0 nothing is skipped and the pass is
the model's own forward pass.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
from flax import nnx

from radial_jax.model.layers import attention_mask
from radial_jax.train.loss import masked_sum_and_count, token_nll

VARIANT = ("on-the-fly: each block's ratio is computed in the forward pass on the stream left by "
           "earlier skips; a skipped block's delta is dropped for that token, while the block's "
           "keys/values still come from every token's stream")


@jax.tree_util.register_dataclass
@dataclass
class OracleOut:
    """One batch under one threshold. ratio/ran: [N, B, S]; nll/tokens: sums over the loss mask."""

    ratio_NxBxS: jax.Array
    ran_NxBxS: jax.Array
    nll: jax.Array
    tokens: jax.Array


def residual_ratio(delta_BxSxD: jax.Array, x_BxSxD: jax.Array) -> jax.Array:
    """||delta|| / ||x|| per token, float32 [B, S] (0 where the stream is exactly zero)."""
    dn = jnp.linalg.norm(delta_BxSxD.astype(jnp.float32), axis=-1)
    xn = jnp.linalg.norm(x_BxSxD.astype(jnp.float32), axis=-1)
    return jnp.where(xn > 0, dn / jnp.where(xn > 0, xn, 1.0), 0.0)


def _add(x_BxSxD, delta_BxSxD, threshold):
    """Stream after the oracle's decision, the block's ratio, and whether it ran, per token."""
    delta_BxSxD = delta_BxSxD.astype(x_BxSxD.dtype)
    r_BxS = residual_ratio(delta_BxSxD, x_BxSxD)
    ran_BxS = r_BxS >= threshold
    return x_BxSxD + jnp.where(ran_BxS[..., None], delta_BxSxD, 0), r_BxS, ran_BxS


def oracle_logits(model, tokens_BxS, pos_BxS, seg_BxS, threshold):
    """Logits [B, S, V] of a DenseLM with oracle skipping, and the ratios/decisions [N, B, S]."""
    idx_BxS = jnp.broadcast_to(jnp.arange(tokens_BxS.shape[1]), tokens_BxS.shape)
    mask = attention_mask(seg_BxS, idx_BxS, seg_BxS, idx_BxS)
    h_BxSxD = model.embedder.encode(tokens_BxS, pos_BxS)
    ratios, ran = [], []
    for block in model.blocks:
        q, k, v = block.qkv(h_BxSxD, pos_BxS)
        h_BxSxD, r, g = _add(h_BxSxD, block.attn_delta(q, k, v, mask), threshold)
        ratios.append(r)
        ran.append(g)
        h_BxSxD, r, g = _add(h_BxSxD, block.mlp_delta(h_BxSxD), threshold)
        ratios.append(r)
        ran.append(g)
    return model.embedder.decode(h_BxSxD), jnp.stack(ratios), jnp.stack(ran)


def make_oracle_step(graphdef: nnx.GraphDef):
    """jit-able (params, batch, threshold) -> OracleOut for a dense model."""

    def step(params, batch: dict, threshold) -> OracleOut:
        model = nnx.merge(graphdef, params)
        logits, ratio, ran = oracle_logits(model, batch["inputs"], batch["positions"],
                                           batch["segment_ids"], jnp.asarray(threshold, jnp.float32))
        nll, count = masked_sum_and_count(token_nll(logits, batch["targets"]), batch["loss_mask"])
        return OracleOut(ratio, ran, nll, count)

    return step


def block_names(n_layers: int) -> list[str]:
    """Residual blocks in stream order: L0.attn, L0.mlp, L1.attn, ..."""
    return [f"L{i}.{kind}" for i in range(n_layers) for kind in ("attn", "mlp")]
