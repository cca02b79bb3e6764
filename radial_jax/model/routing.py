"""One routing step's decision and keys/values, shared by the training forward pass and decoding.

Shape letters: B batch, S tokens of the pass (sequence, or decoded chunk), P pool layers,
C capacity per layer, R = P + 1 router choices (skip is index P), K choices per token (top-k;
also key/value head width as a suffix of k/v), G key/value heads, M key positions.

`decide` turns the router's logits into a `Route` (policy, capacity-bounded dispatch, gates).
`shared_kv` and `kv_slot` make the step's KV slot from the pool layers' keys and values. Where
attention reads that slot differs by caller: `SequenceKV` (training: the step's own keys over
the sequence) or decode.CacheKV (decoding: the cache slot the keys are written into).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from radial_jax.config import RoutingConfig
from radial_jax.model import dispatch as dsp
from radial_jax.model.layers import attention_mask
from radial_jax.model.policy import (
    History,
    allowed_layers,
    choice_logits,
    constrain,
    gate_value,
    policy_choice,
    routed_step,
    scheduled_layer,
    step_rule,
    top1_choice,
)
from radial_jax.model.router import Router


@struct.dataclass
class Route:
    """Where a routing step sends each token, and the router outputs the aux losses need.

    With `layer` set (`schedule: sequential`) the dispatch serves that one pool layer (its P axis has
    size 1) and only that layer runs; choices are pool layer ids either way."""
    dispatch: dsp.Dispatch
    gate_BxPxC: jax.Array     # float32 multiplier of each slot's residual delta (0 in empty slots)
    choice_BxSxK: jax.Array   # int32 in [0, P], P = skip (expert choice: every layer it serves)
    logits_BxSxR: jax.Array   # float32 router logits
    probs_BxSxR: jax.Array    # float32 router distribution after the routing constraints
    p_skip_BxS: jax.Array | None  # the learned skip predictor's P(skip) (`skip: learned`), or None
    layer: int | None = struct.field(pytree_node=False, default=None)  # the one layer served, or all

    @property
    def pool_size(self) -> int:
        return self.logits_BxSxR.shape[-1] - 1

    def load_BxP(self) -> jax.Array:
        """Filled slots per pool layer and sequence, int32 [B, P] (0 for layers the step does not serve)."""
        load_BxP = dsp.load_BxP(self.dispatch)
        if self.layer is None:
            return load_BxP
        return jnp.zeros((load_BxP.shape[0], self.pool_size), jnp.int32).at[:, self.layer].set(load_BxP[:, 0])

    @property
    def layer_BxS(self) -> jax.Array:
        """The pool layer each token ran (its first kept choice), or P for skipped/dropped tokens."""
        return jnp.where(self.dispatch.kept_BxSxK, self.choice_BxSxK, self.pool_size).min(axis=-1)

    def history(self, hist: History) -> History:
        """The constraints' memory after this step."""
        return hist.update(self.choice_BxSxK, self.dispatch.kept_BxSxK, self.pool_size)


def served_layers(routing: RoutingConfig, pool_size: int) -> int:
    """Pool layers a routing step runs: all P, or one under `schedule: sequential`. Capacity is
    counted over them: C = ceil(capacity_factor * S / served)."""
    return 1 if routing.schedule == "sequential" else pool_size


def decide(router: Router, routing: RoutingConfig, h_BxSxD: jax.Array, t: int, hist: History,
           valid_BxS: jax.Array, capacity: int, inference: bool = False) -> Route:
    """Router logits -> Route for step t. `inference`: the learned skip predictor decides skips
    (there is no capacity to do it). Unrouted steps (`route_every`) take every token."""
    r = routing
    rule = step_rule(r, t, inference)
    logits_BxSxR = router(h_BxSxD, t)
    p = logits_BxSxR.shape[-1] - 1
    layer = scheduled_layer(r, t, p)
    served = slice(None, p) if layer is None else slice(layer, layer + 1)  # the layers dispatched to
    if not routed_step(r, t):
        capacity = h_BxSxD.shape[1]
    allowed_BxSxP = allowed_layers(hist, r, t) & valid_BxS[..., None]
    masked_BxSxR, p_skip_BxS = choice_logits(logits_BxSxR, allowed_BxSxP, valid_BxS, rule.skip)
    probs_BxSxR = jax.nn.softmax(masked_BxSxR, axis=-1)
    if rule.policy == "expert_choice":  # each layer takes its top-C tokens by router probability
        if rule.skip == "learned":  # ranked and gated by 1 - P(skip), the probability the predictor fits
            probs_BxSxR = jax.nn.softmax(constrain(logits_BxSxR, allowed_BxSxP, valid_BxS, "allow"), -1)
        scores_BxSxP = jnp.where(allowed_BxSxP, probs_BxSxR[..., :p], -jnp.inf)[..., served]
        d = dsp.plan_expert_choice(scores_BxSxP, capacity, valid_BxS)
        choice_BxSxK = jnp.broadcast_to(jnp.arange(p, dtype=jnp.int32)[served], scores_BxSxP.shape)
    else:
        dec = policy_choice(masked_BxSxR, rule.policy, t, valid_BxS, top_k=r.top_k,
                            select_bias_P=router.select_bias[t],
                            skip_prob_BxS=p_skip_BxS if inference else None)
        choice_BxSxK = dec.choice_BxSxK
        if layer is None:
            d = dsp.plan_token_choice(choice_BxSxK, dec.priority_BxSxK, p, capacity)
        else:  # queue 0 is the scheduled layer; anything else skips
            d = dsp.plan_token_choice((choice_BxSxK != layer).astype(jnp.int32), dec.priority_BxSxK, 1,
                                      capacity)
    if rule.policy == "fixed":
        gate_BxPxC = d.ok_BxPxC.astype(jnp.float32)
    else:
        probs_BxPxS = jnp.swapaxes(probs_BxSxR[..., served], 1, 2)
        prob_BxPxC = jnp.take_along_axis(probs_BxPxS, d.idx_BxPxC, axis=2)
        gate_BxPxC = gate_value(prob_BxPxC, r.gate) * d.ok_BxPxC
    return Route(d, gate_BxPxC, choice_BxSxK, logits_BxSxR, probs_BxSxR, p_skip_BxS, layer)


def decide_tokens(logits_BxSxR: jax.Array, routing: RoutingConfig, t: int, hist: History,
                  select_bias_P: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(choices [B, S, K] in [0, P], P = skip; gates [B, S, K]) of real tokens at step t, as `decide`
    decides them with nothing dropped (decoding: no dispatch plan; the learned skip predictor
    decides skips). Top-1 token choice is elementwise over the tokens (`top1_choice`)."""
    r = routing
    rule = step_rule(r, t, inference=True)
    allowed_BxSxP = allowed_layers(hist, r, t)
    if rule.policy == "token_choice" and r.top_k == 1:
        choice_BxS, prob_BxS = top1_choice(jnp.moveaxis(logits_BxSxR, -1, 0),
                                           jnp.moveaxis(allowed_BxSxP, -1, 0), select_bias_P, skip=rule.skip)
        shape = logits_BxSxR.shape[:2]
        return (jnp.broadcast_to(choice_BxS, shape)[..., None],
                jnp.broadcast_to(gate_value(prob_BxS, r.gate), shape)[..., None])
    valid_BxS = jnp.ones(logits_BxSxR.shape[:2], bool)
    masked_BxSxR, p_skip_BxS = choice_logits(logits_BxSxR, allowed_BxSxP, valid_BxS, rule.skip)
    dec = policy_choice(masked_BxSxR, rule.policy, t, valid_BxS, top_k=r.top_k, select_bias_P=select_bias_P,
                        skip_prob_BxS=p_skip_BxS)
    gate_BxSxK = dec.gate_BxSxK
    return dec.choice_BxSxK, gate_BxSxK if rule.policy == "fixed" else gate_value(gate_BxSxK, r.gate)


def decide_one(logits_1x1xR: jax.Array, routing: RoutingConfig, t: int, hist: History,
               select_bias_P: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(choices [K] in [0, P], P = skip; gates [K]) of one token at step t (`decide_tokens`)."""
    choice_1x1xK, gate_1x1xK = decide_tokens(logits_1x1xR, routing, t, hist, select_bias_P)
    return choice_1x1xK[0, 0], gate_1x1xK[0, 0]


def shared_kv(k_PxBxCxGxK: jax.Array, v_PxBxCxGxK: jax.Array, d: dsp.Dispatch
              ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Per-position keys/values [B, S, G, K] of one step, averaged over the layers that processed
    the position, and which positions were processed [B, S]."""
    def to_positions(x_PxBxCxGxK):
        x_BxPxCxF = jnp.swapaxes(x_PxBxCxGxK, 0, 1)
        b, p, c, g, kd = x_BxPxCxF.shape
        x_BxPxCxF = x_BxPxCxF.reshape(b, p, c, g * kd) * d.ok_BxPxC[..., None].astype(x_BxPxCxF.dtype)
        zeros = jnp.zeros((b, d.slot_BxSxK.shape[1], g * kd), x_BxPxCxF.dtype)
        return dsp.combine(zeros, x_BxPxCxF, d).reshape(b, -1, g, kd)

    n_BxS = d.kept_BxSxK.sum(-1)
    scale = (1.0 / jnp.maximum(n_BxS, 1)).astype(k_PxBxCxGxK.dtype)[..., None, None]
    return to_positions(k_PxBxCxGxK) * scale, to_positions(v_PxBxCxGxK) * scale, n_BxS > 0


def kv_slot(k_BxSxGxK, v_BxSxGxK, done_BxS, carry, kv_skip: str):
    """One step's KV slot under `kv_skip`: (k, v, present_BxS, carry for the next step).

    `mask`: only positions processed at this step are present. `carry`: a position not processed
    now keeps the keys/values of the last step that processed it (carry = (k, v, present) or None).
    """
    if kv_skip != "carry":
        return k_BxSxGxK, v_BxSxGxK, done_BxS, None
    if carry is not None:
        old_k, old_v, had_BxS = carry
        keep = done_BxS[..., None, None]
        k_BxSxGxK = jnp.where(keep, k_BxSxGxK, old_k)
        v_BxSxGxK = jnp.where(keep, v_BxSxGxK, old_v)
        done_BxS = done_BxS | had_BxS
    return k_BxSxGxK, v_BxSxGxK, done_BxS, (k_BxSxGxK, v_BxSxGxK, done_BxS)


@struct.dataclass
class SequenceKV:
    """Training's KV source: attention at a step reads that step's own keys/values over the whole
    sequence (`attend` keeps no state; decode.CacheKV is the cached counterpart)."""
    seg_BxS: jax.Array  # int32 document ids, 0 = padding
    idx_BxS: jax.Array  # int32 row index of each position
    from_cache = False  # keys/values in the [B, S, G, K] layout, not the cache's

    def attend(self, t: int, k_BxSxGxK, v_BxSxGxK, present_BxS, route: Route, pos_BxPxC):
        """(keys, values, mask [B, 1, P*C, S], self) that the step's P*C slots attend with."""
        d = route.dispatch
        b, p, c = d.idx_BxPxC.shape
        seg_BxPxC = jnp.take_along_axis(self.seg_BxS[:, None, :], d.idx_BxPxC, axis=2)
        idx_BxQ = d.idx_BxPxC.reshape(b, p * c)
        mask = attention_mask(seg_BxPxC.reshape(b, p * c), idx_BxQ, self.seg_BxS, self.idx_BxS, present_BxS)
        # Empty slots see their own row position only, so no attention row is all-masked.
        empty = ~d.ok_BxPxC.reshape(b, 1, p * c, 1) & (
            self.idx_BxS[:, None, None, :] == idx_BxQ[:, None, :, None])
        return k_BxSxGxK, v_BxSxGxK, mask | empty, self


@struct.dataclass
class StepState:
    """What one routing step hands to the next (see RadialLM.route_step)."""
    h_BxSxD: jax.Array
    hist: History
    kv_carry: tuple | None  # `kv_skip: carry`: each position's latest keys/values (kv_slot), else None
    kv: SequenceKV | object  # where attention reads the step's keys/values: SequenceKV or decode.CacheKV
