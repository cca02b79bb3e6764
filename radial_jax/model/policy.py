"""Routing policies: turn router logits into per-token choices, gates and queue priorities.

Shape letters: B batch, S sequence, P pool layers, R = P + 1 choices (skip is index P),
K choices per token per step (top-k).

Constraints are masks on the logits: `reuse: forbid` removes layers a token already used;
`order: monotonic` removes layers below the last one it used (strictly below with reuse forbidden);
`schedule: sequential` leaves step t only layer t mod P; `early_exit` leaves a token that was not
processed at an earlier step no layer at all. `skip: forbid` removes the skip choice (a token skips
only when no layer is left to it); padding tokens always skip.

`route_every: k` routes only every k-th step; the steps between run every token through their
scheduled layer (`step_rule`), as Mixture-of-Depths interleaves routed and dense blocks.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import struct

from radial_jax.config import RoutingConfig

NEG = -1e9


@struct.dataclass
class Decision:
    choice_BxSxK: jax.Array    # int32 in [0, P]; P = skip
    gate_BxSxK: jax.Array      # float32 multiplier of the block's residual delta
    priority_BxSxK: jax.Array  # float32; higher gets a capacity slot first
    probs_BxSxR: jax.Array     # float32 router distribution after constraints (for aux losses)


@struct.dataclass
class History:
    """What each token has done so far: the constraints' memory."""
    used_BxSxP: jax.Array  # bool: the token ran this pool layer at an earlier step
    last_BxS: jax.Array    # int32: index of the last layer it ran, -1 if none
    stopped_BxS: jax.Array  # bool: at some earlier step the token ran no layer (skipped or dropped)

    @staticmethod
    def empty(batch: int, seq: int, pool_size: int) -> History:
        return History(jnp.zeros((batch, seq, pool_size), bool), jnp.full((batch, seq), -1, jnp.int32),
                       jnp.zeros((batch, seq), bool))

    def update(self, choice_BxSxK: jax.Array, kept_BxSxK: jax.Array, pool_size: int) -> History:
        hit_BxSxKxP = jax.nn.one_hot(choice_BxSxK, pool_size, dtype=bool) & kept_BxSxK[..., None]
        used = self.used_BxSxP | hit_BxSxKxP.any(axis=2)
        ran = jnp.where(kept_BxSxK, choice_BxSxK, -1).max(axis=-1)
        return History(used, jnp.maximum(self.last_BxS, ran), self.stopped_BxS | ~kept_BxSxK.any(-1))


def allowed_layers(hist: History, routing: RoutingConfig, t: int) -> jax.Array:
    """[B, S, P] bool: layers a token may choose at step t."""
    p = hist.used_BxSxP.shape[-1]
    layer_P = jnp.arange(p)
    ok = jnp.ones_like(hist.used_BxSxP)
    if routing.reuse == "forbid":
        ok = ok & ~hist.used_BxSxP
    if routing.order == "monotonic":
        last = hist.last_BxS[..., None]
        ok = ok & ((layer_P > last) if routing.reuse == "forbid" else (layer_P >= last))
    if routing.schedule == "sequential":
        ok = ok & (layer_P == t % p)
    if routing.early_exit:
        ok = ok & ~hist.stopped_BxS[..., None]
    return ok


def scheduled_layer(routing: RoutingConfig, t: int, pool_size: int) -> int | None:
    """The one pool layer step t may use (`schedule: sequential`), else None (any of them). Only that
    layer runs at the step, so a fixed schedule costs one block per step, not P."""
    return t % pool_size if routing.schedule == "sequential" else None


def routed_step(routing: RoutingConfig, t: int) -> bool:
    """Whether the router decides step t (`route_every: k`: steps k-1, 2k-1, ...)."""
    # route_every 1 answers without t, which is traced when the steps run as a scan.
    return routing.route_every == 1 or t % routing.route_every == routing.route_every - 1


class StepRule(NamedTuple):
    policy: str  # token_choice | expert_choice | fixed
    skip: str    # allow | forbid | learned


def step_rule(routing: RoutingConfig, t: int, inference: bool) -> StepRule:
    """The policy and skip rule that decide step t. Unrouted steps (`route_every`) are `fixed`: every
    token runs the step's layer with gate 1. Expert choice with `skip: learned` decodes as token choice
    with skip allowed: the skip logit, trained to predict who the top-C choice leaves out, decides
    causally (Mixture-of-Depths' auxiliary-loss predictor), and the gate stays 1 - P(skip)."""
    if not routed_step(routing, t):
        return StepRule("fixed", "forbid")
    if inference and routing.policy == "expert_choice" and routing.skip == "learned":
        return StepRule("token_choice", "allow")
    return StepRule(routing.policy, routing.skip)


def constrain(logits_BxSxR: jax.Array, allowed_BxSxP: jax.Array, valid_BxS: jax.Array,
              skip: str = "allow") -> jax.Array:
    """Mask disallowed layers; padding tokens may only skip. With `skip="forbid"` a real token must
    take a layer, unless its constraints have left it none."""
    layer_ok_BxSxP = allowed_BxSxP & valid_BxS[..., None]
    skip_ok_BxS = jnp.ones_like(valid_BxS) if skip == "allow" else ~layer_ok_BxSxP.any(-1)
    allowed_BxSxR = jnp.concatenate([layer_ok_BxSxP, skip_ok_BxS[..., None]], axis=-1)
    return jnp.where(allowed_BxSxR, logits_BxSxR, NEG)


def choice_logits(logits_BxSxR: jax.Array, allowed_BxSxP: jax.Array, valid_BxS: jax.Array,
                  skip: str) -> tuple[jax.Array, jax.Array | None]:
    """(logits the choice is made from, P(skip) of the learned skip predictor or None).

    `skip: learned` chooses among layers only (as `forbid`); its P(skip) is the skip choice's
    probability when skip is allowed, which training fits to capacity's verdict and inference uses."""
    if skip != "learned":
        return constrain(logits_BxSxR, allowed_BxSxP, valid_BxS, skip), None
    p = allowed_BxSxP.shape[-1]
    p_skip_BxS = jax.nn.softmax(constrain(logits_BxSxR, allowed_BxSxP, valid_BxS, "allow"), -1)[..., p]
    return constrain(logits_BxSxR, allowed_BxSxP, valid_BxS, "forbid"), p_skip_BxS


def token_choice(logits_BxSxR: jax.Array, top_k: int, select_bias_P: jax.Array | None = None,
                 skip_prob_BxS: jax.Array | None = None) -> Decision:
    """A token skips when P(skip) > 1/2; otherwise it takes its top-k pool layers.

    Deciding "skip or run" on P(skip) against the total mass of the layers (rather than letting skip
    compete with each layer separately) keeps the decisions consistent with the expected active
    fraction 1 - P(skip) that the compute-target loss steers. Gates are the layers' probabilities.
    `select_bias_P` (load balancing) shifts which layers win, not their gates. `skip_prob_BxS`, if
    given, replaces P(skip) in the skip test (the learned predictor, at inference).
    """
    probs = jax.nn.softmax(logits_BxSxR, axis=-1)
    p = probs.shape[-1] - 1
    score_BxSxP = logits_BxSxR[..., :p]
    if select_bias_P is not None:
        score_BxSxP = score_BxSxP + jax.lax.stop_gradient(select_bias_P)
    _, choice_BxSxK = jax.lax.top_k(score_BxSxP, top_k)
    gate_BxSxK = jnp.take_along_axis(probs[..., :p], choice_BxSxK, axis=-1)
    p_skip_BxSx1 = probs[..., p:] if skip_prob_BxS is None else skip_prob_BxS[..., None]
    skip_BxSxK = (p_skip_BxSx1 > 0.5) | (gate_BxSxK <= 0.0)  # also: a masked (disallowed) layer
    choice_BxSxK = jnp.where(skip_BxSxK, p, choice_BxSxK).astype(jnp.int32)
    return Decision(choice_BxSxK, gate_BxSxK, gate_BxSxK, probs)


def fixed_choice(logits_BxSxR: jax.Array, t: int, pool_size: int, valid_BxS: jax.Array) -> Decision:
    """Step t -> layer t mod P for every real token, gate 1: the sequential (dense-like) schedule."""
    b, s, _ = logits_BxSxR.shape
    choice = jnp.where(valid_BxS, t % pool_size, pool_size).astype(jnp.int32)[..., None]
    probs = jax.nn.softmax(logits_BxSxR, axis=-1)
    return Decision(choice, jnp.ones((b, s, 1), jnp.float32), jnp.zeros((b, s, 1), jnp.float32),
                    probs)


def policy_choice(logits_BxSxR: jax.Array, policy: str, t: int, valid_BxS: jax.Array, *, top_k: int,
                  select_bias_P: jax.Array | None, skip_prob_BxS: jax.Array | None = None) -> Decision:
    """The per-token decision of a causal policy (`fixed` or `token_choice`) at step t, from the
    constrained logits (see `token_choice` for the other arguments)."""
    if policy == "fixed":
        return fixed_choice(logits_BxSxR, t, logits_BxSxR.shape[-1] - 1, valid_BxS)
    return token_choice(logits_BxSxR, top_k, select_bias_P, skip_prob_BxS)


def gate_value(prob: jax.Array, mode: str) -> jax.Array:
    """The multiplier of a block's residual delta: the router probability (`prob`), or 1 with the
    probability's gradient (`straight_through`), so the block's update keeps its full size while
    the router still learns from the language-model loss."""
    if mode == "straight_through":
        return 1.0 + prob - jax.lax.stop_gradient(prob)
    return prob


def top1_choice(logits_R: jax.Array, allowed_P: jax.Array, select_bias_P: jax.Array, *,
                skip: str) -> tuple[jax.Array, jax.Array]:
    """One real token's top-1 decision: (choice in [0, P], P = skip; its router probability, the gate
    before `gate_value`): what `choice_logits` then `token_choice(top_k=1)` decide, for batch-1
    decoding.

    Written as elementwise operations over the P + 1 scalars (P is small and static), so XLA fuses
    the whole decision into one kernel: the generic version's softmaxes, top-k and gathers are about
    ten kernels per routing step, and at batch 1 each kernel's launch costs more than its math."""
    p = allowed_P.shape[0]
    x = [logits_R[i] for i in range(p + 1)]
    ok = [allowed_P[i] for i in range(p)]
    any_ok = ok[0]
    for o in ok[1:]:
        any_ok = any_ok | o
    layer_x = [jnp.where(ok[i], x[i], NEG) for i in range(p)]
    # The first best score, as top_k breaks ties.
    best, choice = layer_x[0] + select_bias_P[0], jnp.int32(0)
    for i in range(1, p):
        score = layer_x[i] + select_bias_P[i]
        take = score > best
        best, choice = jnp.where(take, score, best), jnp.where(take, jnp.int32(i), choice)

    def softmax_at(xs, i_chosen):  # (probability of xs[i_chosen], of xs[-1])
        m = xs[0]
        for v in xs[1:]:
            m = jnp.maximum(m, v)
        e = [jnp.exp(v - m) for v in xs]
        total = e[0]
        for v in e[1:]:
            total = total + v
        picked = e[0]
        for i in range(1, p):
            picked = jnp.where(i_chosen == i, e[i], picked)
        return picked / total, e[-1] / total

    skip_x = x[p] if skip == "allow" else jnp.where(any_ok, NEG, x[p])
    gate, p_skip = softmax_at(layer_x + [skip_x], choice)
    if skip == "learned":  # P(skip) of the predictor: skip competing with the allowed layers
        _, p_skip = softmax_at(layer_x + [x[p]], choice)
    skipped = (p_skip > 0.5) | (gate <= 0.0)
    return jnp.where(skipped, jnp.int32(p), choice), gate
