"""Cached inference: prefill a prompt, then decode one token at a time, for dense and radial models.

Shape letters: B batch, S new tokens per sequence (prompt chunk; 1 when decoding), M max_len,
P pool layers, C slots per layer, D model width, V vocabulary, G key/value heads, K head width,
L cache slots, H query heads.

Both functions are pure and jittable (`jax.jit(decode_step, static_argnums=0)`): the cache goes in
and comes back. They compute what the training forward pass computes (same router, policies,
constraints, shared-KV semantics with `kv_skip: mask|carry`), with capacity large enough that no
token is ever dropped, so their logits equal the full forward pass's wherever training dropped no
token. A token's route depends only on its own hidden state, so decoding is causal.

Radial paths:
- prefill (chunks of S tokens): RadialLM.route_step with capacity S, every pool layer runs on its
  per-sequence buffers [P, B, S, D];
- batched decode step (any B): each pool layer runs on the tokens routed to it only, grouped over
  the whole batch (dispatch.map_groups): a small group one token at a time on a CPU (matrix-vector
  products), a larger one in a bucket whose static size is the smallest that holds it; a layer no
  token chose runs nothing, and attention runs once per token choice: cost follows the routes,
  and no token is ever dropped;
- batch 1 (`switch=True`, the default when B == 1): `lax.switch` over the pool's layers plus an
  identity branch for skip, so only the chosen layer runs and a skipped step costs the router only.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx, struct

from radial_jax.model import dispatch as dsp
from radial_jax.model.kv_cache import KVCache, check_room
from radial_jax.model.layers import grouped_attention
from radial_jax.model.policy import History
from radial_jax.model.routing import Route, StepState, decide_one, decide_tokens, kv_slot

# Batched decoding, per pool layer and routing step (dispatch.map_groups): a group of up to
# ROWS_MAX_CPU entries runs one entry at a time on a CPU, a larger one in a bucket of one of
# `dispatch.bucket_sizes(batch * K, BUCKET_CLASSES)` entries.
BUCKET_CLASSES = 4
ROWS_MAX_CPU = 4


def prefill(graphdef: nnx.GraphDef, params, tokens_BxS: jax.Array, lengths_B: jax.Array,
            cache: KVCache) -> tuple[jax.Array, KVCache]:
    """Append prompts (row b: its first lengths_B[b] tokens; the rest is padding) to the cache.

    Returns float32 logits [B, S, V] (rows past a prompt's length are padding) and the cache."""
    model = nnx.merge(graphdef, params)
    _check_decodable(model)
    lengths_B = jnp.asarray(lengths_B, jnp.int32)
    _check_room_if_concrete(cache, lengths_B)
    return _extend(model, jnp.asarray(tokens_BxS, jnp.int32), lengths_B, cache)


def decode_step(graphdef: nnx.GraphDef, params, token_B: jax.Array, cache: KVCache, *,
                switch: bool | None = None, step_weights: StepWeights | None = None,
                ) -> tuple[jax.Array, KVCache]:
    """Append one token per sequence; float32 logits [B, V] for the next one, and the cache.

    switch (radial, B == 1 only): run only the chosen pool layer per step; default: B == 1.
    step_weights: `unstack_weights(graphdef, params)`, made once outside jit, so the switch path
    reads each pool layer's and routing step's own arrays instead of slicing (copying) them out of
    the stacked ones at every token."""
    model = nnx.merge(graphdef, params)
    _check_decodable(model)
    token_B = jnp.asarray(token_B, jnp.int32)
    b = token_B.shape[0]
    _check_room_if_concrete(cache, 1)
    use_switch = (b == 1) if switch is None else switch
    if use_switch and _is_radial(model):
        if b != 1:
            raise ValueError(f"the lax.switch decode path runs one sequence; got a batch of {b}")
        return _decode_one(model, token_B, cache, step_weights)
    if _is_radial(model):
        return _decode_grouped(model, token_B, cache, step_weights)
    logits_Bx1xV, cache = _extend(model, token_B[:, None], jnp.ones((b,), jnp.int32), cache)
    return logits_Bx1xV[:, 0], cache


@struct.dataclass
class StepWeights:
    """A radial model's stacked weights, unstacked for the batch-1 path: P pool-layer states and
    T routing steps' router weights (`Router.step_weights`)."""
    pool: tuple
    router: tuple


def unstack_weights(graphdef: nnx.GraphDef, params) -> StepWeights | None:
    """The radial model's StepWeights (None for a dense model)."""
    model = nnx.merge(graphdef, params)
    if not _is_radial(model):
        return None
    state = nnx.state(model.pool)
    return StepWeights(
        pool=tuple(jax.tree.map(lambda w, i=i: w[i], state) for i in range(model.pool_size)),
        router=tuple(model.router.step_weights(t) for t in range(model.steps)))


# --------------------------------------------------------------------------- checks


def _is_radial(model) -> bool:
    return hasattr(model, "pool")


def _check_decodable(model) -> None:
    if _is_radial(model) and model.routing.policy == "expert_choice" and model.routing.skip != "learned":
        raise ValueError(
            "routing.policy=expert_choice is not causal (each layer picks its top tokens over the whole "
            "sequence), so it cannot decode token by token; decoding needs token_choice or fixed, or "
            "expert_choice with routing.skip=learned (a causal predictor decides at inference)")


def _check_room_if_concrete(cache: KVCache, n_new) -> None:
    if not isinstance(cache.length_B, jax.core.Tracer):  # under jit, callers check beforehand
        check_room(cache, n_new)


# --------------------------------------------------------------------------- cache access


def _write(cache: KVCache, slot: int, at_BxS, k_BxSxGxK, v_BxSxGxK, ok_BxS, *,
           slice_update: bool = False) -> KVCache:
    """Store keys/values and written flags of new positions at_BxS (M = out of range: not stored)."""
    b, g = cache.batch, cache.kv_heads
    bi = jnp.arange(b)[:, None]
    kt, v = cache.k[slot], cache.v[slot]
    if slice_update and at_BxS.shape == (1, 1):
        # One position of one sequence: a dynamic-update-slice, cheaper than a scatter, whose update
        # is the new keys/values as they are. Where a scatter would drop an out-of-range position
        # (padding), it writes position M - 1 instead, whose written flag stays as it was: unread
        # until a real token is stored there. Not for a slot that a lax.switch branch reads after
        # the write: XLA then copies the updated slot (the in-place test catches it).
        at = at_BxS[0, 0]
        kt = jax.lax.dynamic_update_slice(kt, k_BxSxGxK.reshape(g, -1, 1).astype(kt.dtype), (0, 0, at))
        v = jax.lax.dynamic_update_slice(v, v_BxSxGxK.reshape(g, 1, -1).astype(v.dtype), (0, at, 0))
    else:
        n_BxSxG = jnp.broadcast_to((bi * g)[:, :, None] + jnp.arange(g), (*at_BxS.shape, g))
        at_BxSx1 = at_BxS[:, :, None]
        # Keys [B*G, K, M]: indices split by a slice, so numpy puts them first: the update is
        # [B, S, G, K].
        kt = kt.at[n_BxSxG, :, at_BxSx1].set(k_BxSxGxK.astype(kt.dtype), mode="drop")
        v = v.at[n_BxSxG, at_BxSx1].set(v_BxSxGxK.astype(v.dtype), mode="drop")
    return cache.replace(k=_put(cache.k, slot, kt), v=_put(cache.v, slot, v),
                         written_LxBxM=cache.written_LxBxM.at[slot, bi, at_BxS].set(ok_BxS, mode="drop"))


def _put(buffers: tuple, slot: int, new) -> tuple:
    return buffers[:slot] + (new,) + buffers[slot + 1:]


def _write_route(cache: KVCache, t: int, at_BxS, layer_BxS) -> KVCache:
    bi = jnp.arange(at_BxS.shape[0])[:, None]
    return cache.replace(route_TxBxM=cache.route_TxBxM.at[t, bi, at_BxS].set(
        layer_BxS.astype(jnp.int32), mode="drop"))


def _mask(written_BxM, qpos_BxQ, *, own: bool = True) -> jax.Array:
    """[B, 1, Q, M]: keys written and not after the query; a query always sees its own position,
    so no row is all-masked (a valid query's own position is always written). own=False: keys
    strictly before the query (its own key and value are attended to separately)."""
    j_M = jnp.arange(written_BxM.shape[1])
    if not own:
        return (written_BxM[:, None, :] & (j_M[None, None, :] < qpos_BxQ[:, :, None]))[:, None]
    before = j_M[None, None, :] <= qpos_BxQ[:, :, None]
    is_own = j_M[None, None, :] == qpos_BxQ[:, :, None]
    return ((written_BxM[:, None, :] & before) | is_own)[:, None]


def _dense_blocks(blocks, h_BxSxD, pos_BxS, at_BxS, valid_BxS, cache: KVCache):
    """Blocks every token runs (the dense model's, or the radial prefix), slot i for block i."""
    for i, block in enumerate(blocks):
        q, k, v = block.qkv(h_BxSxD, pos_BxS)
        cache = _write(cache, i, at_BxS, k, v, valid_BxS, slice_update=True)
        h_BxSxD = block.finish(h_BxSxD, q, *cache.slot(i),
                               _mask(cache.written_LxBxM[i], pos_BxS), from_cache=True)
    return h_BxSxD, cache


# --------------------------------------------------------------------------- batched path


def _extend(model, tokens_BxS, n_new_B, cache: KVCache):
    """Process S new positions per sequence (the first n_new_B[b] real), as one chunk."""
    b, s = tokens_BxS.shape
    pos_BxS = cache.length_B[:, None] + jnp.arange(s, dtype=jnp.int32)[None, :]
    valid_BxS = jnp.arange(s)[None, :] < n_new_B[:, None]
    at_BxS = jnp.where(valid_BxS, pos_BxS, cache.max_len)  # padding is never stored
    h_BxSxD = model.embedder.encode(tokens_BxS, pos_BxS)
    if not _is_radial(model):
        h_BxSxD, cache = _dense_blocks(model.blocks, h_BxSxD, pos_BxS, at_BxS, valid_BxS, cache)
    else:
        h_BxSxD, cache = _dense_blocks(model.prefix, h_BxSxD, pos_BxS, at_BxS, valid_BxS, cache)
        h_BxSxD, cache = _routed_steps(model, h_BxSxD, pos_BxS, at_BxS, valid_BxS, cache)
    cache = cache.replace(length_B=cache.length_B + n_new_B)
    return model.embedder.decode(h_BxSxD), cache


def _routed_steps(model, h_BxSxD, pos_BxS, at_BxS, valid_BxS, cache: KVCache):
    """The T routing steps over a chunk: RadialLM.route_step with capacity = chunk length, keys and
    values going through the cache."""
    b, s = pos_BxS.shape
    kv = CacheKV(cache, pos_BxS, at_BxS, valid_BxS, first_slot=model.prefix_layers)
    state = StepState(h_BxSxD, History.empty(b, s, model.pool_size), None, kv)
    for t in range(model.steps):
        state, _ = model.route_step(state, t, pos_BxS=pos_BxS, valid_BxS=valid_BxS, capacity=s,
                                    inference=True)
    return state.h_BxSxD, state.kv.cache


@struct.dataclass
class CacheKV:
    """Decoding's KV source for RadialLM.route_step: step t's keys/values are written into cache slot
    `first_slot + t` and attention reads the whole slot (the training counterpart: SequenceKV)."""
    cache: KVCache
    pos_BxS: jax.Array    # int32 positions of the chunk's tokens
    at_BxS: jax.Array     # int32 where they are stored; M (out of range) for padding
    valid_BxS: jax.Array  # bool real tokens
    first_slot: int = struct.field(pytree_node=False)
    from_cache = True     # keys/values in the cache's layout

    def attend(self, t: int, k_BxSxGxK, v_BxSxGxK, present_BxS, route: Route, pos_BxPxC):
        """(keys, values, mask [B, 1, P*C, M], CacheKV with the step's slot and route written) for
        queries at positions pos_BxPxC."""
        slot = self.first_slot + t
        cache = _write(self.cache, slot, self.at_BxS, k_BxSxGxK, v_BxSxGxK, present_BxS & self.valid_BxS)
        cache = _write_route(cache, t, self.at_BxS, route.layer_BxS)
        b, p, c = pos_BxPxC.shape
        mask = _mask(cache.written_LxBxM[slot], pos_BxPxC.reshape(b, p * c))
        return (*cache.slot(slot), mask, self.replace(cache=cache))


# --------------------------------------------------------------------------- batched decode step


def _step_modules(model, weights: StepWeights | None):
    """(pool layer i -> its Block, step t -> the router's weights), from the unstacked weights or,
    without them, from slices of the stacked arrays taken where they are used."""
    pool_def, pool_state = nnx.split(model.pool)
    if weights is None:
        return (lambda i: nnx.merge(pool_def, jax.tree.map(lambda w: w[i], pool_state)),
                model.router.step_weights)
    return lambda i: nnx.merge(pool_def, weights.pool[i]), lambda t: weights.router[t]


def _decode_grouped(model, token_B, cache: KVCache, weights: StepWeights | None):
    """One token per sequence; at each step every pool layer runs on the tokens routed to it only
    (dispatch.map_groups), attention once per token choice."""
    b, p = token_B.shape[0], model.pool_size
    pos_Bx1 = cache.length_B[:, None]
    h_Bx1xD = model.embedder.encode(token_B[:, None], pos_Bx1)
    h_Bx1xD, cache = _dense_blocks(model.prefix, h_Bx1xD, pos_Bx1, pos_Bx1, jnp.ones((b, 1), bool), cache)
    layer, router_weights = _step_modules(model, weights)
    blocks = [layer(i) for i in range(p)]
    hist, carry = History.empty(b, 1, p), None
    for t in range(model.steps):
        logits_Bx1xR = model.router.apply(h_Bx1xD, router_weights(t))
        choice_Bx1xK, gate_Bx1xK = decide_tokens(logits_Bx1xR, model.routing, t, hist,
                                                 model.router.select_bias[t])
        h_Bx1xD, cache, carry = _grouped_step(model, blocks, t, h_Bx1xD, pos_Bx1, cache, carry,
                                              choice_Bx1xK[:, 0], gate_Bx1xK[:, 0])
        hist = hist.update(choice_Bx1xK, choice_Bx1xK < p, p)
    cache = cache.replace(length_B=cache.length_B + 1)
    return model.embedder.decode(h_Bx1xD)[:, 0], cache


def _grouped_step(model, blocks, t, h_Bx1xD, pos_Bx1, cache: KVCache, carry, choice_BxK, gate_BxK):
    """Routing step t for one new token per sequence, what RadialLM.route_step computes with
    capacity 1: each layer computes queries, keys and values of its entries (entry n = token
    n // K's choice n % K); the slot gets each token's keys/values (averaged over its choices);
    every entry's query attends to its sequence's slot; each layer finishes its entries; tokens
    add their gated deltas."""
    slot, p = model.prefix_layers + t, model.pool_size
    b, k = choice_BxK.shape
    n, dim = b * k, h_Bx1xD.shape[-1]
    kept_BxK = choice_BxK < p
    groups = dsp.group_by_layer(choice_BxK.reshape(n), p)
    sizes = dsp.bucket_sizes(n, BUCKET_CLASSES)
    rows_max = ROWS_MAX_CPU if jax.default_backend() == "cpu" else 0
    x_NxD = jnp.repeat(h_Bx1xD[:, 0], k, axis=0)
    pos_N = jnp.repeat(pos_Bx1[:, 0], k)

    def qkv(i, x_CxD, pos_C):
        return tuple(a[0] for a in blocks[i].qkv(x_CxD[None], pos_C[None]))

    zeros = jax.tree.map(lambda a: jnp.zeros((n, *a.shape[2:]), a.dtype),
                         jax.eval_shape(blocks[0].qkv, h_Bx1xD, pos_Bx1))
    q_NxHxK, k_NxGxK, v_NxGxK = dsp.map_groups([lambda *a, i=i: qkv(i, *a) for i in range(p)], groups,
                                               (x_NxD, pos_N), zeros, sizes, rows_max)
    # The slot: each token's keys/values averaged over its choices (skipped choices' rows are zeros).
    n_B = kept_BxK.sum(-1)
    scale_B = (1.0 / jnp.maximum(n_B, 1)).astype(k_NxGxK.dtype)[:, None, None, None]
    k_Bx1xGxK = k_NxGxK.reshape(b, k, *k_NxGxK.shape[1:]).sum(1, keepdims=True) * scale_B
    v_Bx1xGxK = v_NxGxK.reshape(b, k, *v_NxGxK.shape[1:]).sum(1, keepdims=True) * scale_B
    k_Bx1xGxK, v_Bx1xGxK, kv_ok, carry = kv_slot(k_Bx1xGxK, v_Bx1xGxK, (n_B > 0)[:, None], carry,
                                                 model.kv_skip)
    cache = _write(cache, slot, pos_Bx1, k_Bx1xGxK, v_Bx1xGxK, kv_ok)
    cache = _write_route(cache, t, pos_Bx1, jnp.where(kept_BxK, choice_BxK, p).min(-1, keepdims=True))
    q_BxKxHxK = q_NxHxK.reshape(b, k, *q_NxHxK.shape[1:])
    keys, values = (a.astype(q_BxKxHxK.dtype) for a in cache.slot(slot))
    mask = _mask(cache.written_LxBxM[slot], jnp.broadcast_to(pos_Bx1, (b, k)))
    o_NxHxK = grouped_attention(q_BxKxHxK, keys, values, mask).reshape(q_NxHxK.shape)

    def finish(i, x_CxD, o_CxHxK):
        return blocks[i].finish_heads(x_CxD[None], o_CxHxK[None])[0] - x_CxD

    delta_NxD = dsp.map_groups([lambda *a, i=i: finish(i, *a) for i in range(p)], groups, (x_NxD, o_NxHxK),
                               jnp.zeros((n, dim), h_Bx1xD.dtype), sizes, rows_max)
    delta_BxKxD = delta_NxD.reshape(b, k, dim) * (gate_BxK * kept_BxK)[..., None].astype(h_Bx1xD.dtype)
    return h_Bx1xD + delta_BxKxD.sum(1, keepdims=True), cache, carry


# --------------------------------------------------------------------------- batch-1 path


def _decode_one(model, token_1, cache: KVCache, weights: StepWeights | None):
    """One token of one sequence; each step runs only its chosen pool layer(s) via lax.switch."""
    p = model.pool_size
    pos_1x1 = cache.length_B[:, None]
    h_1x1xD = model.embedder.encode(token_1[:, None], pos_1x1)
    h_1x1xD, cache = _dense_blocks(model.prefix, h_1x1xD, pos_1x1, pos_1x1, jnp.ones((1, 1), bool),
                                   cache)
    layer, router_weights = _step_modules(model, weights)
    hist, carry = History.empty(1, 1, p), None
    for t in range(model.steps):
        logits_1x1xR = model.router.apply(h_1x1xD, router_weights(t))
        choice_K, gate_K = decide_one(logits_1x1xR, model.routing, t, hist, model.router.select_bias[t])
        step = _step_top1 if choice_K.shape[0] == 1 else _step_top_k
        h_1x1xD, cache, carry = step(model, layer, t, h_1x1xD, pos_1x1, cache, carry, choice_K, gate_K)
        hist = hist.update(choice_K[None, None], (choice_K < p)[None, None], p)
    cache = cache.replace(length_B=cache.length_B + 1)
    return model.embedder.decode(h_1x1xD)[:, 0], cache


def _zero_qkv(layer, h_1x1xD, pos_1x1):
    shapes = jax.eval_shape(lambda x, pos: layer(0).qkv(x, pos), h_1x1xD, pos_1x1)
    return jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), shapes)


def _step_top1(model, layer, t, h_1x1xD, pos_1x1, cache: KVCache, carry, choice_K, gate_K):
    """One routing step with one choice, in one lax.switch: the chosen layer computes its query,
    key and value, attends to the step's cache slot (read inside the switch) plus its own key and
    value, and finishes; the slot is written after the switch. (Written before, as the dense blocks
    do it, XLA would copy the slot into the switch at every step.) A skip's branch gives zeros, so
    neither its gate nor its keys need masking."""
    slot = model.prefix_layers + t

    def run(i, x, pos, kt_slot, v_slot, mask):
        block = layer(i)
        q, k, v = block.qkv(x, pos)
        return block.finish(x, q, kt_slot, v_slot, mask, from_cache=True, own_kv=(k, v)) - x, k, v

    branches = [lambda *a, i=i: run(i, *a) for i in range(model.pool_size)] + [
        lambda x, pos, *_: (jnp.zeros_like(x), *_zero_qkv(layer, x, pos)[1:])]
    mask = _mask(cache.written_LxBxM[slot], pos_1x1, own=False)
    delta, k_1x1xGxK, v_1x1xGxK = jax.lax.switch(choice_K[0], branches, h_1x1xD, pos_1x1,
                                                 *cache.slot(slot), mask)
    kept = (choice_K < model.pool_size)[None]
    k_1x1xGxK, v_1x1xGxK, kv_ok, carry = kv_slot(k_1x1xGxK, v_1x1xGxK, kept, carry, model.kv_skip)
    cache = _write(cache, slot, pos_1x1, k_1x1xGxK, v_1x1xGxK, kv_ok, slice_update=True)
    cache = _write_route(cache, t, pos_1x1, choice_K[None])
    return h_1x1xD + delta * gate_K[0].astype(h_1x1xD.dtype), cache, carry


def _step_top_k(model, layer, t, h_1x1xD, pos_1x1, cache: KVCache, carry, choice_K, gate_K):
    """One routing step with K > 1 choices: every chosen layer's keys and values come first (the
    slot holds their average, which each of them attends to), so two switches per choice."""
    slot, p = model.prefix_layers + t, model.pool_size
    qkv_branches = [lambda x, pos, i=i: layer(i).qkv(x, pos) for i in range(p)] + [
        lambda x, pos: _zero_qkv(layer, x, pos)]
    delta_branches = [lambda x, *a, i=i: layer(i).finish(x, *a, from_cache=True) - x
                      for i in range(p)] + [lambda x, *a: jnp.zeros_like(x)]
    kept_K = choice_K < p
    qkv = [jax.lax.switch(c, qkv_branches, h_1x1xD, pos_1x1) for c in choice_K]
    n = kept_K.sum()
    scale = (1.0 / jnp.maximum(n, 1)).astype(qkv[0][1].dtype)
    k_1x1xGxK = sum(x[1] for x in qkv) * scale
    v_1x1xGxK = sum(x[2] for x in qkv) * scale
    k_1x1xGxK, v_1x1xGxK, kv_ok, carry = kv_slot(k_1x1xGxK, v_1x1xGxK, jnp.reshape(n > 0, (1, 1)),
                                                 carry, model.kv_skip)
    cache = _write(cache, slot, pos_1x1, k_1x1xGxK, v_1x1xGxK, kv_ok)
    first = jnp.where(kept_K, choice_K, p).min()
    cache = _write_route(cache, t, pos_1x1, jnp.reshape(first, (1, 1)))
    mask = _mask(cache.written_LxBxM[slot], pos_1x1)
    gate_K = gate_K * kept_K
    deltas = [jax.lax.switch(choice_K[j], delta_branches, h_1x1xD, qkv[j][0], *cache.slot(slot), mask)
              * gate_K[j].astype(h_1x1xD.dtype) for j in range(choice_K.shape[0])]
    return h_1x1xD + sum(deltas), cache, carry
