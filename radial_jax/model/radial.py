"""The radial language model: optional dense prefix, then T routing steps over a pool of P Blocks.

Shape letters: B batch, S sequence, D model width, P pool layers, C capacity per layer and step,
R = P + 1 router choices, G key/value heads, K head width (as a suffix of q/k/v), H query heads.

At step t every token is routed to one pool layer (or skipped); each layer gathers at most C of its
tokens into a buffer [B, P, C, D]; all P layers run as one batched computation (their parameters are
stacked on a leading `pool` axis); processed tokens get `gate * (y - x)` added back, the rest pass
through. Attention at step t reads the step-t slot of the shared KV: keys/values of the positions
processed at step t, each from its own pool layer's projections; other positions are masked
(`kv_skip=mask`) or carry their most recent keys/values (`kv_skip=carry`).

`route_step` is that step, for the training forward pass and batched decoding alike; they differ
only in where attention reads the step's keys/values (routing.SequenceKV or decode.CacheKV).
The forward pass hands every step the same `gathered_pool`, so FSDP gathers the pool's weights
once per train step rather than at each of the T steps, and reduces their gradient once; run as a
scan, every batch shard gets its own copy for that (PoolWeights; see docs/compile.md).
The forward pass returns, beside the logits, a ModelAux: routing metrics and unweighted auxiliary
losses, which the train step weighs.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import PartitionSpec

from radial_jax.config import RouterConfig, RoutingConfig
from radial_jax.model import dispatch as dsp
from radial_jax.model.block_stack import run_blocks
from radial_jax.model.embed import Embedder
from radial_jax.model.layers import Block, attention_mask
from radial_jax.model.outputs import ModelAux
from radial_jax.model.policy import History
from radial_jax.model.remat import checkpoint
from radial_jax.model.route_stats import stack_rows, step_stats, summarize
from radial_jax.model.router import Router
from radial_jax.model.routing import (
    Route,
    SequenceKV,
    StepState,
    decide,
    kv_slot,
    served_layers,
    shared_kv,
)
from radial_jax.parallel.constrain import gather_once, split_count
from radial_jax.parallel.constrain import with_logical_constraint as shard

BSD, BPCD = ("batch", "length", "embed"), ("batch", "pool", "capacity", "embed")
PBCGK = ("pool", "batch", "capacity", "heads", "kv")


@dataclass(frozen=True)
class PoolWeights:
    """The pool's parameters as one forward pass hands them to every routing step (`gathered_pool`).
    `copies` > 1: every leaf has a leading axis of that many identical copies, split over the devices
    that split the batch, and each block of batch rows runs on its own copy. A weight gradient then
    stays on the device whose rows made it, through the steps, and is summed across devices once
    after them (gather_once's reduce-scatter)."""

    state: nnx.State
    copies: int = 1


class RadialLM(nnx.Module):
    def __init__(self, *, vocab_size: int, pool_size: int, steps: int, prefix_layers: int,
                 capacity_factor: float, kv_skip: str, router: RouterConfig, routing: RoutingConfig,
                 tie_embeddings: bool, init_std: float, norm_eps: float, dtype, block_kwargs: dict,
                 rngs: nnx.Rngs, embed_kwargs: dict | None = None, remat: str = "none",
                 pool_gather: str = "once", scan_layers: bool = False):
        """`remat`: what the prefix blocks and pool layers keep for the backward pass (model/remat.py).
        `pool_gather`: `once` per forward pass (see `gathered_pool`) or `per_step` (at each use).
        `scan_layers`: run the prefix blocks and the T routing steps as scans, so the compiled
        forward pass holds one block and one routing step whatever the depth."""
        d_model = block_kwargs["d_model"]
        self.remat, self.pool_gather, self.dtype = remat, pool_gather, dtype
        self.scan_layers = scan_layers
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
        return dsp.capacity(seq_len, served_layers(self.routing, self.pool_size), self.capacity_factor)

    # ------------------------------------------------------------------ the pool, batched over P

    def gathered_pool(self, copies: int = 1) -> PoolWeights | None:
        """The pool's parameters for a whole forward pass, or None (`pool_gather: per_step`): weight
        matrices cast to the compute dtype (as the layers cast them; norm vectors stay float32) and
        constrained whole along `embed`. Under FSDP the partitioner then gathers each weight once,
        not at every routing step that uses it, and reduce-scatters its gradient once, summed over
        the T steps (constrain.gather_once). The price: the pool's weights and that gradient sum
        (sharded only by their other axes, e.g. `pool`) stay on each device for the whole step.

        `copies` > 1: one copy per batch shard, on a leading axis laid out like the batch (see
        PoolWeights). Each shard's weight gradient is then its own until the copies are summed
        after the routing steps, where a scan's transpose would otherwise reduce it across the
        batch shards at every step."""
        if self.pool_gather != "once":
            return None
        _, state = nnx.split(self.pool)

        def gather(spec: PartitionSpec, w_PxE: jax.Array) -> jax.Array:
            w_PxE = w_PxE.astype(self.dtype) if w_PxE.ndim >= 3 else w_PxE
            if len(spec) != w_PxE.ndim:  # no logical names: leave it to the partitioner
                return w_PxE
            whole = tuple(None if n == "embed" else n for n in spec)
            w_PxE = gather_once(w_PxE, whole, tuple(spec))
            if copies == 1:
                return w_PxE
            return shard(jnp.broadcast_to(w_PxE, (copies, *w_PxE.shape)), ("batch", *whole))

        state = jax.tree.map(gather, nnx.get_partition_spec(state), state,
                             is_leaf=lambda x: isinstance(x, PartitionSpec))
        return PoolWeights(state, copies)

    def _pool_apply(self, method: str, *args, in_axes, layer: int | None = None,
                    pool: PoolWeights | None = None, **kwargs):
        """`method` of every pool layer, batched over P; `layer`: of that one layer only (P = 1).
        `pool`: the pool's parameters as `gathered_pool` gives them (None: self.pool's). With
        copies, the batch (axis 1 of the per-layer arguments, 0 of the shared ones) is split into
        that many blocks, each run by its own copy."""
        graphdef, state = nnx.split(self.pool)
        copies = 1 if pool is None else pool.copies
        state = state if pool is None else pool.state
        if layer is not None:
            p_axis = 0 if copies == 1 else 1
            state = jax.tree.map(lambda w: jax.lax.slice_in_dim(w, layer, layer + 1, axis=p_axis), state)

        def one(state_p, *a):
            return getattr(nnx.merge(graphdef, state_p), method)(*a, **kwargs)

        run = jax.vmap(checkpoint(one, self.remat), in_axes=(0, *in_axes))
        if copies == 1:
            return run(state, *args)
        b_axes = [1 if ax == 0 else 0 for ax in in_axes]  # where each argument keeps its batch
        blocks = [a.reshape(*a.shape[:ax], copies, -1, *a.shape[ax + 1:])
                  for a, ax in zip(args, b_axes, strict=True)]
        out = jax.vmap(run, in_axes=(0, *b_axes), out_axes=1)(state, *blocks)  # [P, copies, B/copies, ...]
        return jax.tree.map(lambda y: y.reshape(y.shape[0], -1, *y.shape[3:]), out)

    def pool_qkv(self, x_PxBxCxD, pos_PxBxC, *, layer: int | None = None, pool: PoolWeights | None = None):
        return self._pool_apply("qkv", x_PxBxCxD, pos_PxBxC, in_axes=(0, 0), layer=layer, pool=pool)

    def pool_finish(self, x_PxBxCxD, q_PxBxCxHxK, k, v, mask_PxBx1xCxS, *, from_cache=False,
                    layer: int | None = None, pool: PoolWeights | None = None):
        """Keys/values shared by all P layers: [B, S, G, K], or the KV cache's layout with
        from_cache (see Attention.attend)."""
        return self._pool_apply("finish", x_PxBxCxD, q_PxBxCxHxK, k, v, mask_PxBx1xCxS,
                                in_axes=(0, 0, None, None, 0), from_cache=from_cache, layer=layer,
                                pool=pool)

    # ------------------------------------------------------------------ one routing step

    def route_step(self, state: StepState, t: int, *, pos_BxS, valid_BxS, capacity: int,
                   inference: bool = False, pool: PoolWeights | None = None) -> tuple[StepState, Route]:
        """Routing step t over S tokens, for training and decoding alike: decide, gather each pool
        layer's tokens, run all P layers (attention reads the step's KV slot through `state.kv`),
        add the gated deltas back. `inference`: the learned skip predictor decides skips.
        `pool`: the pool's parameters as `gathered_pool` gives them (None: self.pool's)."""
        h_BxSxD = state.h_BxSxD
        b = h_BxSxD.shape[0]
        route = decide(self.router, self.routing, h_BxSxD, t, state.hist, valid_BxS, capacity, inference)
        d = route.dispatch
        p, c = d.idx_BxPxC.shape[1:]  # the layers the step runs (all P, or its scheduled one)
        x_BxPxCxD = shard(dsp.gather_tokens(h_BxSxD, d), BPCD)  # pool layers on `pool` devices
        pos_BxPxC = jnp.take_along_axis(pos_BxS[:, None, :], d.idx_BxPxC, axis=2)
        x_PxBxCxD = jnp.swapaxes(x_BxPxCxD, 0, 1)
        qkv = self.pool_qkv(x_PxBxCxD, jnp.swapaxes(pos_BxPxC, 0, 1), layer=route.layer, pool=pool)
        q, k, v = (shard(a, PBCGK) for a in qkv)
        # The step's KV slot: each processed position's keys/values from the layer that ran it.
        k_BxSxGxK, v_BxSxGxK, present_BxS, kv_carry = kv_slot(*shared_kv(k, v, d), state.kv_carry,
                                                             self.kv_skip)
        keys, values, mask_Bx1xQxM, kv = state.kv.attend(t, k_BxSxGxK, v_BxSxGxK, present_BxS, route,
                                                         pos_BxPxC)
        mask_PxBx1xCxM = jnp.moveaxis(mask_Bx1xQxM.reshape(b, 1, p, c, -1), 2, 0)
        y_PxBxCxD = self.pool_finish(x_PxBxCxD, q, keys, values, mask_PxBx1xCxM, from_cache=kv.from_cache,
                                     layer=route.layer, pool=pool)
        delta_BxPxCxD = (jnp.swapaxes(y_PxBxCxD, 0, 1) - x_BxPxCxD) * route.gate_BxPxC[..., None].astype(
            x_BxPxCxD.dtype)
        h_BxSxD = shard(dsp.combine(h_BxSxD, shard(delta_BxPxCxD, BPCD), d), BSD)
        return StepState(h_BxSxD, route.history(state.hist), kv_carry, kv), route

    # ------------------------------------------------------------------ forward

    def __call__(self, tokens_BxS, pos_BxS, seg_BxS, *, return_trace: bool = False,
                 inference: bool = False) -> tuple[jax.Array, ModelAux]:
        """Logits [B, S, V] and routing metrics, unweighted aux losses and (return_trace) the trace.
        `inference`: route as decoding does, with no capacity limit (nothing dropped) and the learned
        skip predictor deciding skips."""
        b, s = tokens_BxS.shape
        cap = s if inference else self.capacity(s)
        idx_BxS = jnp.broadcast_to(jnp.arange(s), (b, s))
        valid_BxS = seg_BxS != 0
        h_BxSxD = shard(self.embedder.encode(tokens_BxS, pos_BxS), BSD)
        dense_mask = attention_mask(seg_BxS, idx_BxS, seg_BxS, idx_BxS)
        h_BxSxD = run_blocks(self.prefix, h_BxSxD, pos_BxS, dense_mask, remat=self.remat,
                             scan=self.scan_layers)
        # Once, outside the loop or scan: every step closes over it. A scan sums the gradient of
        # what its steps close over inside the loop, so there each batch shard gets its own copy.
        copies = split_count(BPCD, (b, self.pool_size, 1, h_BxSxD.shape[-1]), 0) if self.scan_layers else 1
        pool = self.gathered_pool(copies)

        def step(state: StepState, t):
            """Routing step t, and what the forward pass keeps of it: its stats row and its trace."""
            state, route = self.route_step(state, t, pos_BxS=pos_BxS, valid_BxS=valid_BxS, capacity=cap,
                                           inference=inference, pool=pool)
            row = step_stats(route, valid_BxS, per_token_choice=self.routing.policy != "expert_choice",
                             skip_target=not inference)
            return state, (row, route.layer_BxS if return_trace else None)

        hist = History.empty(b, s, self.pool_size)
        kv = SequenceKV(seg_BxS, idx_BxS)
        if self.scan_layers:  # t traced; the carry keeps one structure from the first step on
            state = StepState(h_BxSxD, hist, self._empty_kv_carry(b, s), kv)
            state, (rows, trace_TxBxS) = jax.lax.scan(step, state, jnp.arange(self.steps, dtype=jnp.int32))
        else:
            state, kept = StepState(h_BxSxD, hist, None, kv), []
            for t in range(self.steps):
                state, out = step(state, t)
                kept.append(out)
            rows, trace_TxBxS = stack_rows([row for row, _ in kept]), None
            if return_trace:
                trace_TxBxS = jnp.stack([trace for _, trace in kept])
        metrics, losses = summarize(rows, self.routing, self.prefix_layers, self.router.select_bias[...])
        return self.embedder.decode(state.h_BxSxD), ModelAux(metrics, losses, trace_TxBxS)

    def _empty_kv_carry(self, b: int, s: int) -> tuple | None:
        """`kv_skip: carry`'s starting carry (no position has keys/values yet) in the layout kv_slot
        returns, so a scan's carry has one structure at every step; None otherwise."""
        if self.kv_skip != "carry":
            return None
        _, _, g, k = self.pool.attn.wk.shape
        z_BxSxGxK = jnp.zeros((b, s, g, k), self.dtype)
        return z_BxSxGxK, z_BxSxGxK, jnp.zeros((b, s), bool)
