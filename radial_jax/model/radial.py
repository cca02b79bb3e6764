"""The radial language model: optional dense prefix, then T routing steps over a pool of P Blocks.

Shape letters: B batch, S sequence, D model width, P pool layers, C capacity per layer and step,
R = P + 1 router choices, G key/value heads, K head width (as a suffix of q/k/v), H query heads.

At step t every token is routed to one pool layer (or skipped); each layer gathers at most C of its
tokens into a buffer [B, P, C, D]; all P layers run as one batched computation (their parameters are
stacked on a leading `pool` axis); processed tokens get `gate * (y - x)` added back, the rest pass
through. Attention at step t reads the step-t slot of the shared KV: keys/values of the positions
processed at step t, each from its own pool layer's projections; other positions are masked
(`kv_skip=mask`) or carry their most recent keys/values (`kv_skip=carry`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from radial_jax.config import RouterConfig, RoutingConfig
from radial_jax.model import dispatch as dsp
from radial_jax.model.embed import Embedder
from radial_jax.model.layers import Block, attention_mask
from radial_jax.model.policy import (
    History,
    allowed_layers,
    choice_logits,
    fixed_choice,
    gate_value,
    token_choice,
)
from radial_jax.model.router import Router
from radial_jax.parallel.constrain import with_logical_constraint as shard

BSD, BPCD = ("batch", "length", "embed"), ("batch", "pool", "capacity", "embed")
PBCGK = ("pool", "batch", "capacity", "heads", "kv")


class RadialLM(nnx.Module):
    def __init__(self, *, vocab_size: int, pool_size: int, steps: int, prefix_layers: int,
                 capacity_factor: float, kv_skip: str, router: RouterConfig, routing: RoutingConfig,
                 tie_embeddings: bool, init_std: float, norm_eps: float, dtype, block_kwargs: dict,
                 rngs: nnx.Rngs, embed_kwargs: dict | None = None):
        d_model = block_kwargs["d_model"]
        n_res = prefix_layers + pool_size
        self.pool_size, self.steps, self.prefix_layers = pool_size, steps, prefix_layers
        self.capacity_factor, self.kv_skip = capacity_factor, kv_skip
        self.routing = routing
        self.embedder = Embedder(vocab_size, d_model, tie=tie_embeddings, init_std=init_std,
                                 norm_eps=norm_eps, dtype=dtype, rngs=rngs, **(embed_kwargs or {}))
        self.prefix = nnx.List([
            Block(**block_kwargs, norm_eps=norm_eps, init_std=init_std, n_residual_layers=n_res,
                  dtype=dtype, rngs=rngs) for _ in range(prefix_layers)])

        @nnx.split_rngs(splits=pool_size)
        @nnx.vmap(in_axes=0, out_axes=0, transform_metadata={nnx.PARTITION_NAME: "pool"})
        def make_pool(r: nnx.Rngs) -> Block:
            return Block(**block_kwargs, norm_eps=norm_eps, init_std=init_std, n_residual_layers=n_res,
                         dtype=dtype, rngs=r)

        self.pool = make_pool(rngs)
        self.router = Router(d_model, pool_size=pool_size, steps=steps, hidden=router.hidden,
                             per_step=router.per_step, init=router.init, init_bias=router.init_bias,
                             skip_bias=router.skip_bias, norm_eps=norm_eps, init_std=init_std,
                             rngs=rngs)

    def capacity(self, seq_len: int) -> int:
        return dsp.capacity(seq_len, self.pool_size, self.capacity_factor)

    # ------------------------------------------------------------------ routing of one step

    def decide(self, h_BxSxD, t: int, hist: History, valid_BxS, capacity: int, inference: bool = False):
        """Router logits -> (Dispatch, gate per slot [B, P, C], choices [B, S, K], logits, probs
        [B, S, R], P(skip) [B, S] of the learned skip predictor or None). `inference`: the learned
        predictor decides skips (there is no capacity to do it)."""
        p, r = self.pool_size, self.routing
        logits_BxSxR = self.router(h_BxSxD, t)
        allowed_BxSxP = allowed_layers(hist, reuse=r.reuse, order=r.order) & valid_BxS[..., None]
        masked, p_skip_BxS = choice_logits(logits_BxSxR, allowed_BxSxP, valid_BxS, r.skip)
        probs_BxSxR = jax.nn.softmax(masked, axis=-1)
        if r.policy == "expert_choice":  # each layer takes its top-C tokens by router probability
            scores_BxSxP = jnp.where(allowed_BxSxP, probs_BxSxR[..., :p], -jnp.inf)
            d = dsp.plan_expert_choice(scores_BxSxP, capacity, valid_BxS)
            choice_BxSxK = jnp.broadcast_to(jnp.arange(p, dtype=jnp.int32), scores_BxSxP.shape)
        else:
            dec = (fixed_choice(masked, t, p, valid_BxS) if r.policy == "fixed"
                   else token_choice(masked, r.top_k, self.router.select_bias[t],
                                     p_skip_BxS if inference else None))
            d = dsp.plan_token_choice(dec.choice_BxSxK, dec.priority_BxSxK, p, capacity)
            choice_BxSxK = dec.choice_BxSxK
        if r.policy == "fixed":
            gate_BxPxC = d.ok_BxPxC.astype(jnp.float32)
        else:
            probs_BxPxS = jnp.swapaxes(probs_BxSxR[..., :p], 1, 2)
            prob_BxPxC = jnp.take_along_axis(probs_BxPxS, d.idx_BxPxC, axis=2)
            gate_BxPxC = gate_value(prob_BxPxC, r.gate) * d.ok_BxPxC
        return d, gate_BxPxC, choice_BxSxK, logits_BxSxR, probs_BxSxR, p_skip_BxS

    # ------------------------------------------------------------------ the pool, batched over P

    def _pool_apply(self, method: str, *args, in_axes, **kwargs):
        graphdef, state = nnx.split(self.pool)

        def one(state_p, *a):
            return getattr(nnx.merge(graphdef, state_p), method)(*a, **kwargs)

        return jax.vmap(one, in_axes=(0, *in_axes))(state, *args)

    def pool_qkv(self, x_PxBxCxD, pos_PxBxC):
        return self._pool_apply("qkv", x_PxBxCxD, pos_PxBxC, in_axes=(0, 0))

    def pool_finish(self, x_PxBxCxD, q_PxBxCxHxK, k, v, mask_PxBx1xCxS, *, from_cache=False):
        """Keys/values shared by all P layers: [B, S, G, K], or the KV cache's layout with
        from_cache (see Attention.attend)."""
        return self._pool_apply("finish", x_PxBxCxD, q_PxBxCxHxK, k, v, mask_PxBx1xCxS,
                                in_axes=(0, 0, None, None, 0), from_cache=from_cache)

    # ------------------------------------------------------------------ forward

    def __call__(self, tokens_BxS, pos_BxS, seg_BxS, *, return_trace: bool = False,
                 inference: bool = False):
        """Logits [B, S, V] and routing metrics/aux losses. `inference`: route as decoding does, with
        no capacity limit (nothing dropped) and the learned skip predictor deciding skips."""
        b, s = tokens_BxS.shape
        p, cap = self.pool_size, (s if inference else self.capacity(s))
        idx_BxS = jnp.broadcast_to(jnp.arange(s), (b, s))
        valid_BxS = seg_BxS != 0
        h_BxSxD = shard(self.embedder.encode(tokens_BxS, pos_BxS), BSD)
        dense_mask = attention_mask(seg_BxS, idx_BxS, seg_BxS, idx_BxS)
        for block in self.prefix:
            h_BxSxD = shard(block(h_BxSxD, pos_BxS, dense_mask), BSD)

        hist = History.empty(b, s, p)
        carry = None
        stats = _RouteStats(p)
        trace = []
        for t in range(self.steps):
            d, gate_BxPxC, choice_BxSxK, logits, probs, p_skip = self.decide(
                h_BxSxD, t, hist, valid_BxS, cap, inference)
            x_BxPxCxD = shard(dsp.gather_tokens(h_BxSxD, d), BPCD)  # pool layers on `pool` devices
            pos_BxPxC = jnp.take_along_axis(pos_BxS[:, None, :], d.idx_BxPxC, axis=2)
            seg_BxPxC = jnp.take_along_axis(seg_BxS[:, None, :], d.idx_BxPxC, axis=2)
            x_PxBxCxD = jnp.swapaxes(x_BxPxCxD, 0, 1)
            q, k, v = (shard(a, PBCGK) for a in self.pool_qkv(x_PxBxCxD, jnp.swapaxes(pos_BxPxC, 0, 1)))
            # The step-t KV slot: each processed position's keys/values from the layer that ran it.
            k_BxSxGxK, v_BxSxGxK, kv_ok_BxS, carry = kv_slot(*_shared_kv(k, v, d), carry, self.kv_skip)
            mask = attention_mask(seg_BxPxC.reshape(b, p * cap), d.idx_BxPxC.reshape(b, p * cap),
                                  seg_BxS, idx_BxS, kv_ok_BxS)
            # Empty slots see their own row position only, so no attention row is all-masked.
            empty = ~d.ok_BxPxC.reshape(b, 1, p * cap, 1) & (
                idx_BxS[:, None, None, :] == d.idx_BxPxC.reshape(b, 1, p * cap, 1))
            mask = (mask | empty).reshape(b, 1, p, cap, s)
            y_PxBxCxD = self.pool_finish(x_PxBxCxD, q, k_BxSxGxK, v_BxSxGxK,
                                         jnp.moveaxis(mask, 2, 0))
            delta_BxPxCxD = (jnp.swapaxes(y_PxBxCxD, 0, 1) - x_BxPxCxD) * gate_BxPxC[..., None].astype(
                x_BxPxCxD.dtype)
            h_BxSxD = shard(dsp.combine(h_BxSxD, shard(delta_BxPxCxD, BPCD), d), BSD)
            hist = hist.update(choice_BxSxK, d.kept_BxSxK, p)
            stats.add(d, None if self.routing.policy == "expert_choice" else choice_BxSxK, logits, probs,
                      valid_BxS, None if inference else p_skip)
            if return_trace:
                trace.append(_first_kept_layer(choice_BxSxK, d.kept_BxSxK, p))
        aux = stats.finish(self.routing, self.prefix_layers, self.steps)
        if self.routing.policy == "token_choice":
            aux["loss/balance_bias"] = stats.balance_surrogate(self.router.select_bias[...])
        if return_trace:
            aux["trace_TxBxS"] = jnp.stack(trace)
        return self.embedder.decode(h_BxSxD), aux


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


def _first_kept_layer(choice_BxSxK, kept_BxSxK, p: int):
    """The pool layer a token ran at this step (first kept choice), or P for skipped/dropped."""
    return jnp.where(kept_BxSxK, choice_BxSxK, p).min(axis=-1)


def _shared_kv(k_PxBxCxGxK, v_PxBxCxGxK, d: dsp.Dispatch):
    """Per-position keys/values of one step, averaged over the layers that processed the position."""
    def to_positions(x_PxBxCxGxK):
        x_BxPxCxF = jnp.swapaxes(x_PxBxCxGxK, 0, 1)
        b, p, c, g, kd = x_BxPxCxF.shape
        x_BxPxCxF = x_BxPxCxF.reshape(b, p, c, g * kd) * d.ok_BxPxC[..., None].astype(x_BxPxCxF.dtype)
        zeros = jnp.zeros((b, d.slot_BxSxK.shape[1], g * kd), x_BxPxCxF.dtype)
        return dsp.combine(zeros, x_BxPxCxF, d).reshape(b, -1, g, kd)

    n_BxS = d.kept_BxSxK.sum(-1)
    scale = (1.0 / jnp.maximum(n_BxS, 1)).astype(k_PxBxCxGxK.dtype)[..., None, None]
    return to_positions(k_PxBxCxGxK) * scale, to_positions(v_PxBxCxGxK) * scale, n_BxS > 0


class _RouteStats:
    """Accumulates routing metrics and auxiliary losses over the T steps of one forward pass."""

    def __init__(self, pool_size: int):
        self.p = pool_size
        self.rows: list[dict] = []

    def add(self, d: dsp.Dispatch, choice_BxSxK, logits_BxSxR, probs_BxSxR, valid_BxS,
            p_skip_BxS=None) -> None:
        p = self.p
        w = valid_BxS.astype(jnp.float32)
        n = jnp.maximum(w.sum(), 1.0)
        kept_BxS = d.kept_BxSxK.any(-1)
        processed = (kept_BxS * w).sum() / n
        dropped = ((d.dropped_BxS > 0) * w).sum()
        chose_layer = ((d.kept_BxSxK.sum(-1) + d.dropped_BxS) > 0) * w  # real tokens not skipping
        load_P = d.ok_BxPxC.sum(axis=(0, 2)).astype(jnp.float32) / n
        # Switch load balance, P * sum_p f_p * mean_prob_p, per sequence (the group capacity is
        # counted over) and averaged over sequences: a batch balanced overall can still overflow
        # every sequence's capacity. f_p is the share of layer choices made *before* capacity: counted
        # after it, an overloaded layer would look no busier than a full one.
        # (Expert choice has no per-token choice: each layer takes exactly its C tokens.)
        chosen_BxP = d.ok_BxPxC.sum(2).astype(jnp.float32) if choice_BxSxK is None else (
            jax.nn.one_hot(choice_BxSxK, p + 1)[..., :p] * w[..., None, None]).sum((1, 2))
        f_BxP = chosen_BxP / jnp.maximum(chosen_BxP.sum(-1, keepdims=True), 1e-9)
        n_B = w.sum(1)
        mean_prob_BxP = (probs_BxSxR[..., :p] * w[..., None]).sum(1) / jnp.maximum(n_B, 1.0)[:, None]
        lb = (p * (f_BxP * mean_prob_BxP).sum(-1) * (n_B > 0)).sum() / jnp.maximum((n_B > 0).sum(), 1)
        lse = jax.nn.logsumexp(logits_BxSxR, axis=-1)
        ent = -(probs_BxSxR * jnp.log(jnp.maximum(probs_BxSxR, 1e-9))).sum(-1)
        self.rows.append(dict(
            processed=processed, skip=(w - chose_layer).sum() / n,
            dropped=dropped, chose=chose_layer.sum(), load_P=load_P,
            lb=lb, choice_share_P=f_BxP.mean(0), z=(lse**2 * w).sum() / n, entropy=(ent * w).sum() / n,
            expected_active=((1 - probs_BxSxR[..., p]) * w).sum() / n))
        if p_skip_BxS is not None:  # the learned skip predictor against capacity's verdict
            y = (~kept_BxS).astype(jnp.float32)
            q = jnp.clip(p_skip_BxS, 1e-6, 1 - 1e-6)
            self.rows[-1]["skip_ce"] = (-(y * jnp.log(q) + (1 - y) * jnp.log1p(-q)) * w).sum() / n
            self.rows[-1]["skip_acc"] = (((q > 0.5) == (y > 0.5)) * w).sum() / n

    def balance_surrogate(self, select_bias_TxP):
        """A term whose gradient in the selection bias is each layer's load error (share of layer
        choices minus 1/P), per step; its value is ~0 and it reaches nothing else. The optimizer
        turns that gradient into a fixed-size step (`routing.balance_rate`): overloaded layers'
        bias goes down, idle layers' up."""
        err_TxP = jnp.stack([r["choice_share_P"] for r in self.rows]) - 1.0 / self.p
        return jnp.sum(select_bias_TxP * jax.lax.stop_gradient(err_TxP))

    def finish(self, routing: RoutingConfig, prefix_layers: int, steps: int) -> dict:
        rows = self.rows
        mean = lambda key: sum(r[key] for r in rows) / len(rows)
        depth = sum(r["processed"] for r in rows)
        out = {
            "route/active_depth": prefix_layers + depth,
            "route/active_fraction": (prefix_layers + depth) / (prefix_layers + self.p),
            "route/skip_rate": mean("skip"),
            "route/drop_rate": sum(r["dropped"] for r in rows) / jnp.maximum(
                sum(r["chose"] for r in rows), 1.0),
            "route/router_entropy": mean("entropy"),
            "route/load_balance": mean("lb"),
            "route/z_loss": mean("z"),
        }
        for t, r in enumerate(rows):
            for p in range(self.p):
                out[f"route/load/s{t}_l{p}"] = r["load_P"][p]
        if "skip_ce" in rows[0]:
            out["route/skip_predict_accuracy"] = mean("skip_acc")
            out["loss/skip_predict"] = routing.skip_predict_weight * mean("skip_ce")
        if routing.policy != "fixed":
            out["loss/load_balance"] = routing.load_balance_weight * out["route/load_balance"]
            out["loss/z"] = routing.z_loss_weight * out["route/z_loss"]
            if routing.compute_weight > 0:
                frac = mean("expected_active")
                out["loss/compute"] = routing.compute_weight * (frac - routing.compute_target) ** 2
        return out
