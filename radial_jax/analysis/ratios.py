"""Residual ratios: how much a residual block or routed layer adds to the stream, per token.

Shape letters: B batch, S sequence, D model width, N residual blocks, T routing steps.

Two normalisations, since the paper's own is not given (PAPER.md): `stream` r = ||f(x)|| / ||x||
and `output` r = ||f(x)|| / ||x + f(x)||, L2 norms over the model width, f(x) the delta a block adds
to the stream x. For a radial model the routed ratios come from the model's own routing steps
(RadialLM.route_step): a token's delta at step t is what that step added to its stream (the gated
output of the pool layer that processed it), credited to that layer; tokens the step did not process
(skipped or dropped) have no ratio at that step.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp

from radial_jax.model.layers import attention_mask
from radial_jax.model.policy import History
from radial_jax.model.routing import SequenceKV, StepState

RATIOS = ("stream", "output")
RATIO_FORMULA = {"stream": "||f(x)|| / ||x||", "output": "||f(x)|| / ||x + f(x)||"}


def ratio_definition(kind: str) -> str:
    """One sentence naming the normalisation, for profile.json, profile.md and plot labels."""
    check_ratio(kind)
    return (f"{kind}: r = {RATIO_FORMULA[kind]} per token, L2 norms over the model width, f(x) the delta "
            "a block adds to the residual stream x (the input of an attention block, the post-attention "
            "stream for an MLP block, a routed pool layer's input stream at its step); padding excluded")


def check_ratio(kind: str) -> None:
    if kind not in RATIOS:
        raise ValueError(f"--ratio {kind!r}: choose one of {', '.join(RATIOS)}")


def residual_ratio(delta_BxSxD: jax.Array, x_BxSxD: jax.Array, kind: str = "stream") -> jax.Array:
    """Per-token ratio, float32 [B, S]: ||delta|| over ||x|| (`stream`) or ||x + delta|| (`output`);
    0 where the denominator is exactly zero."""
    delta = delta_BxSxD.astype(jnp.float32)
    base = x_BxSxD.astype(jnp.float32)
    if kind == "output":
        base = base + delta
    dn, bn = jnp.linalg.norm(delta, axis=-1), jnp.linalg.norm(base, axis=-1)
    return jnp.where(bn > 0, dn / jnp.where(bn > 0, bn, 1.0), 0.0)


def run_blocks(blocks, h_BxSxD, pos_BxS, mask, threshold, kind: str):
    """Dense blocks in stream order with oracle skipping (threshold 0: none): the stream after them,
    and each residual block's ratios and run decisions [N = 2 per block, B, S]."""
    ratios, ran = [], []

    def add(x_BxSxD, delta_BxSxD):
        delta_BxSxD = delta_BxSxD.astype(x_BxSxD.dtype)
        r_BxS = residual_ratio(delta_BxSxD, x_BxSxD, kind)
        ran_BxS = r_BxS >= threshold
        ratios.append(r_BxS)
        ran.append(ran_BxS)
        return x_BxSxD + jnp.where(ran_BxS[..., None], delta_BxSxD, 0)

    for block in blocks:
        q, k, v = block.qkv(h_BxSxD, pos_BxS)
        h_BxSxD = add(h_BxSxD, block.attn_delta(q, k, v, mask))
        h_BxSxD = add(h_BxSxD, block.mlp_delta(h_BxSxD))
    if not ratios:
        empty = jnp.zeros((0, *h_BxSxD.shape[:2]))
        return h_BxSxD, empty, empty.astype(bool)
    return h_BxSxD, jnp.stack(ratios), jnp.stack(ran)


@jax.tree_util.register_dataclass
@dataclass
class RadialRatios:
    """One batch of a radial model. prefix_NxBxS: prefix blocks' ratios (attention, MLP per layer);
    step_TxBxS: the ratio of what step t added; layer_TxBxS: the pool layer that added it (P = none);
    kept_TxBxS: how many pool layers processed the token at step t (more than 1 only with top-k > 1)."""

    logits_BxSxV: jax.Array
    prefix_NxBxS: jax.Array
    step_TxBxS: jax.Array
    layer_TxBxS: jax.Array
    kept_TxBxS: jax.Array


def radial_ratios(model, tokens_BxS, pos_BxS, seg_BxS, kind: str = "stream") -> RadialRatios:
    """The radial model's training-mode forward pass (capacity-bounded), step by step through its own
    route_step, with the residual ratio of every prefix block and of every routing step's update."""
    b, s = tokens_BxS.shape
    idx_BxS = jnp.broadcast_to(jnp.arange(s), (b, s))
    valid_BxS = seg_BxS != 0
    h_BxSxD = model.embedder.encode(tokens_BxS, pos_BxS)
    h_BxSxD, prefix_NxBxS, _ = run_blocks(model.prefix, h_BxSxD, pos_BxS,
                                          attention_mask(seg_BxS, idx_BxS, seg_BxS, idx_BxS), 0.0, kind)
    state = StepState(h_BxSxD, History.empty(b, s, model.pool_size), None, SequenceKV(seg_BxS, idx_BxS))
    ratio, layer, kept = [], [], []
    pool = model.gathered_pool()  # the pool's weights as the forward pass hands them to every step
    for t in range(model.steps):
        new, route = model.route_step(state, t, pos_BxS=pos_BxS, valid_BxS=valid_BxS,
                                      capacity=model.capacity(s), pool=pool)
        ratio.append(residual_ratio(new.h_BxSxD - state.h_BxSxD, state.h_BxSxD, kind))
        layer.append(route.layer_BxS)
        kept.append(route.dispatch.kept_BxSxK.sum(-1))
        state = new
    return RadialRatios(model.embedder.decode(state.h_BxSxD), prefix_NxBxS, jnp.stack(ratio),
                        jnp.stack(layer), jnp.stack(kept))
