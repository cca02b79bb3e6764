"""Residual ratios and oracle layer skipping on a dense model, in one forward pass.

Shape letters: B batch, S sequence, D model width, N residual blocks (2 per layer: attention, MLP).

Every residual block adds a delta f(x) to the stream x; its residual ratio for a token is
||f(x)|| / ||x|| or ||f(x)|| / ||x + f(x)|| (ratios.py). The oracle skips a block for a token when
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

from radial_jax.analysis.ratios import run_blocks
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


def oracle_logits(model, tokens_BxS, pos_BxS, seg_BxS, threshold, kind: str = "stream"):
    """Logits [B, S, V] of a DenseLM with oracle skipping, and the ratios/decisions [N, B, S]."""
    idx_BxS = jnp.broadcast_to(jnp.arange(tokens_BxS.shape[1]), tokens_BxS.shape)
    mask = attention_mask(seg_BxS, idx_BxS, seg_BxS, idx_BxS)
    h_BxSxD = model.embedder.encode(tokens_BxS, pos_BxS)
    h_BxSxD, ratios, ran = run_blocks(model.blocks, h_BxSxD, pos_BxS, mask, threshold, kind)
    return model.embedder.decode(h_BxSxD), ratios, ran


def make_oracle_step(graphdef: nnx.GraphDef, kind: str = "stream"):
    """jit-able (params, batch, threshold) -> OracleOut for a dense model; `kind`: the ratio's
    normalisation (ratios.RATIOS), which the threshold is compared with."""

    def step(params, batch: dict, threshold) -> OracleOut:
        model = nnx.merge(graphdef, params)
        logits, ratio, ran = oracle_logits(model, batch["inputs"], batch["positions"],
                                           batch["segment_ids"], jnp.asarray(threshold, jnp.float32), kind)
        nll, count = masked_sum_and_count(token_nll(logits, batch["targets"]), batch["loss_mask"])
        return OracleOut(ratio, ran, nll, count)

    return step


def block_names(n_layers: int) -> list[str]:
    """Residual blocks in stream order: L0.attn, L0.mlp, L1.attn, ..."""
    return [f"L{i}.{kind}" for i in range(n_layers) for kind in ("attn", "mlp")]
