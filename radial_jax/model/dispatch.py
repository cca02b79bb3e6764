"""Capacity-bounded dispatch of tokens to pool layers, per sequence, by gather and combine.

Shape letters: B batch, S sequence, P pool layers, C capacity (slots per layer), K choices per token
(top-k; K = P for expert choice), D model width, N = S * K queue entries of a sequence;
PC is P and C flattened (flat slot p * C + c).

A plan (`Dispatch`) is computed from integer choices, without gradients. Moving data along a plan is
two gathers: `gather_tokens` fills each layer's queue [B, P, C, D] from the sequence, and `combine`
adds the processed deltas back onto each token. Each has a custom VJP whose backward pass is the
other gather (by the inverse index), so the backward pass has no scatter-add: on accelerators a
scatter-add serializes on colliding rows, while a gather by a precomputed inverse map does not.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import struct


def capacity(seq_len: int, pool_size: int, capacity_factor: float) -> int:
    """Slots per pool layer per sequence: ceil(capacity_factor * seq_len / pool_size), in [1, S]."""
    if seq_len <= 0 or pool_size <= 0 or not capacity_factor > 0:
        raise ValueError(
            "capacity() needs positive seq_len, pool_size and capacity_factor, got "
            f"seq_len={seq_len}, pool_size={pool_size}, capacity_factor={capacity_factor}")
    return int(min(max(math.ceil(capacity_factor * seq_len / pool_size), 1), seq_len))


@struct.dataclass
class Dispatch:
    """Where every token goes for one routing step; a pytree, so it passes through jit and scan.

    Forward map (slot -> token) and inverse map (token choice -> slot) describe the same placement:
    every filled slot (p, c) holding token s has exactly one kept choice k of s with
    slot_BxSxK[b, s, k] == p * C + c.
    """

    idx_BxPxC: jax.Array  # int32 token (index into S) in each slot; 0 where the slot is empty
    ok_BxPxC: jax.Array  # bool slot is filled
    slot_BxSxK: jax.Array  # int32 flat slot p * C + c that each choice occupies; 0 where not kept
    kept_BxSxK: jax.Array  # bool the choice got a slot (false for skips and for overflow)
    dropped_BxS: jax.Array  # int32 number of the token's layer (non-skip) choices dropped for overflow


# --------------------------------------------------------------------------- planning


def _layer_bounds(layer_sorted_BxN: jax.Array, n_values: int) -> tuple[jax.Array, jax.Array]:
    """First and one-past-last index of each layer 0..n_values-1 in each ascending row: [B, P] each."""
    values = jnp.arange(n_values, dtype=layer_sorted_BxN.dtype)
    bounds = jax.vmap(lambda row: (jnp.searchsorted(row, values, side="left"),
                                   jnp.searchsorted(row, values, side="right")))
    start_BxP, end_BxP = bounds(layer_sorted_BxN)
    return start_BxP.astype(jnp.int32), end_BxP.astype(jnp.int32)


def plan_token_choice(choice_BxSxK: jax.Array, priority_BxSxK: jax.Array, pool_size: int,
                      capacity: int) -> Dispatch:
    """Queue each token's choices per layer by descending priority, ties by position; first C win.

    choice_BxSxK int in [0, P]; P means skip (no slot). A token's layer choices must be distinct.
    Cost: one stable two-key sort of the N = S*K entries of each sequence and one sort back, so
    O(B N log N) time and O(B N) memory, independent of P.
    """
    b, s, k = choice_BxSxK.shape
    n, p, c = s * k, pool_size, capacity
    layer_BxN = choice_BxSxK.reshape(b, n).astype(jnp.int32)
    neg_prio_BxN = -priority_BxSxK.reshape(b, n).astype(jnp.float32)  # lax.sort treats -0.0 == 0.0
    entry_BxN = jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32), (b, n))  # entry s * K + k
    # Stable on (layer, -priority): equal keys keep entry order, which is position order.
    layer_sorted_BxN, _, entry_sorted_BxN = jax.lax.sort(
        (layer_BxN, neg_prio_BxN, entry_BxN), dimension=1, num_keys=2, is_stable=True)
    pos_sorted_BxN = entry_sorted_BxN // k
    # Each layer's queue is a contiguous run of the sorted row; rank = offset within the run.
    start_BxP, end_BxP = _layer_bounds(layer_sorted_BxN, p)
    start_of_own_BxN = jnp.take_along_axis(start_BxP, jnp.minimum(layer_sorted_BxN, p - 1), axis=1)
    rank_sorted_BxN = jnp.arange(n, dtype=jnp.int32)[None, :] - start_of_own_BxN
    kept_sorted_BxN = (layer_sorted_BxN < p) & (rank_sorted_BxN < c)
    slot_or_neg_sorted_BxN = jnp.where(kept_sorted_BxN, layer_sorted_BxN * c + rank_sorted_BxN, -1)
    # Slot (p, j) holds sorted entry start[p] + j while that entry is still in layer p's run.
    at_BxPxC = start_BxP[:, :, None] + jnp.arange(c, dtype=jnp.int32)[None, None, :]
    ok_BxPxC = at_BxPxC < end_BxP[:, :, None]
    at_BxPC = jnp.minimum(at_BxPxC, n - 1).reshape(b, p * c)  # PC: slots flattened, p * C + c
    idx_BxPxC = jnp.take_along_axis(pos_sorted_BxN, at_BxPC, axis=1).reshape(b, p, c)
    idx_BxPxC = jnp.where(ok_BxPxC, idx_BxPxC, 0)
    # Sort back to the tokens' own order to get the inverse map.
    _, slot_or_neg_BxN = jax.lax.sort((entry_sorted_BxN, slot_or_neg_sorted_BxN), dimension=1, num_keys=1)
    slot_or_neg_BxSxK = slot_or_neg_BxN.reshape(b, s, k)
    kept_BxSxK = slot_or_neg_BxSxK >= 0
    dropped_BxS = ((choice_BxSxK < p) & ~kept_BxSxK).sum(-1).astype(jnp.int32)
    return Dispatch(idx_BxPxC=idx_BxPxC.astype(jnp.int32), ok_BxPxC=ok_BxPxC,
                    slot_BxSxK=jnp.maximum(slot_or_neg_BxSxK, 0), kept_BxSxK=kept_BxSxK,
                    dropped_BxS=dropped_BxS)


def plan_expert_choice(scores_BxSxP: jax.Array, capacity: int,
                       valid_BxS: jax.Array | None = None) -> Dispatch:
    """Each layer takes its top-C tokens per sequence by score, ties by earlier position.

    Tokens with score -inf (and invalid tokens, when valid_BxS is given) are never taken, so a
    layer's queue may be part empty. The inverse map has K = P: a token may be in several layers.
    Nothing is dropped in expert choice (tokens choose nothing), so dropped_BxS is all zeros.
    """
    b, s, p = scores_BxSxP.shape
    c = capacity
    if not 1 <= c <= s:
        raise ValueError(f"plan_expert_choice needs 1 <= capacity <= seq_len, got {c} and {s}")
    scores_BxSxP = scores_BxSxP.astype(jnp.float32)
    if valid_BxS is not None:
        scores_BxSxP = jnp.where(valid_BxS[..., None], scores_BxSxP, -jnp.inf)
    top_BxPxC, idx_BxPxC = jax.lax.top_k(jnp.swapaxes(scores_BxSxP, 1, 2), c)  # ties: lower index
    ok_BxPxC = top_BxPxC > -jnp.inf
    idx_BxPxC = jnp.where(ok_BxPxC, idx_BxPxC, 0).astype(jnp.int32)
    # Inverse map: an integer scatter at planning time (no gradient flows through it).
    flat_BxPxC = jnp.broadcast_to(jnp.arange(p * c, dtype=jnp.int32).reshape(1, p, c), (b, p, c))
    b_i = jnp.arange(b)[:, None, None]
    p_i = jnp.arange(p)[None, :, None]
    to_BxPxC = jnp.where(ok_BxPxC, idx_BxPxC, s)  # empty slots write out of range: dropped
    slot_BxPxS = jnp.full((b, p, s), -1, jnp.int32).at[b_i, p_i, to_BxPxC].set(flat_BxPxC, mode="drop")
    slot_BxSxP = jnp.swapaxes(slot_BxPxS, 1, 2)
    return Dispatch(idx_BxPxC=idx_BxPxC, ok_BxPxC=ok_BxPxC, slot_BxSxK=jnp.maximum(slot_BxSxP, 0),
                    kept_BxSxK=slot_BxSxP >= 0, dropped_BxS=jnp.zeros((b, s), jnp.int32))


def load_BxP(d: Dispatch) -> jax.Array:
    """Filled slots per pool layer and sequence, int32 [B, P]; never more than C."""
    return d.ok_BxPxC.sum(-1).astype(jnp.int32)


# --------------------------------------------------------------------------- moving data


def _slots_from_tokens(x_BxSxD: jax.Array, idx_BxPxC: jax.Array, ok_BxPxC: jax.Array) -> jax.Array:
    """Gather token rows into slots [B, P, C, D]; empty slots are zeros."""
    b, p, c = idx_BxPxC.shape
    rows_BxPCxD = jnp.take_along_axis(x_BxSxD, idx_BxPxC.reshape(b, p * c, 1), axis=1)
    rows_BxPxCxD = rows_BxPCxD.reshape(b, p, c, x_BxSxD.shape[-1])
    return jnp.where(ok_BxPxC[..., None], rows_BxPxCxD, jnp.zeros((), x_BxSxD.dtype))


def _tokens_from_slots(buf_BxPxCxD: jax.Array, slot_BxSxK: jax.Array, kept_BxSxK: jax.Array) -> jax.Array:
    """Sum, per token, the slot rows its kept choices occupy [B, S, D]; by gather, not scatter."""
    b, p, c, dim = buf_BxPxCxD.shape
    s, k = slot_BxSxK.shape[1:]
    rows_BxSKxD = jnp.take_along_axis(buf_BxPxCxD.reshape(b, p * c, dim), slot_BxSxK.reshape(b, s * k, 1),
                                      axis=1)
    rows_BxSxKxD = rows_BxSKxD.reshape(b, s, k, dim)
    return jnp.where(kept_BxSxK[..., None], rows_BxSxKxD, jnp.zeros((), buf_BxPxCxD.dtype)).sum(axis=2)


@jax.custom_vjp
def _gather(h_BxSxD, idx_BxPxC, ok_BxPxC, slot_BxSxK, kept_BxSxK):
    return _slots_from_tokens(h_BxSxD, idx_BxPxC, ok_BxPxC)


def _gather_fwd(h_BxSxD, idx_BxPxC, ok_BxPxC, slot_BxSxK, kept_BxSxK):
    out = _slots_from_tokens(h_BxSxD, idx_BxPxC, ok_BxPxC)
    return out, (slot_BxSxK, kept_BxSxK)


def _gather_bwd(res, g_BxPxCxD):
    slot_BxSxK, kept_BxSxK = res
    return (_tokens_from_slots(g_BxPxCxD, slot_BxSxK, kept_BxSxK), None, None, None, None)


_gather.defvjp(_gather_fwd, _gather_bwd)


@jax.custom_vjp
def _combine(h_BxSxD, delta_BxPxCxD, idx_BxPxC, ok_BxPxC, slot_BxSxK, kept_BxSxK):
    return h_BxSxD + _tokens_from_slots(delta_BxPxCxD, slot_BxSxK, kept_BxSxK).astype(h_BxSxD.dtype)


def _combine_fwd(h_BxSxD, delta_BxPxCxD, idx_BxPxC, ok_BxPxC, slot_BxSxK, kept_BxSxK):
    out = _combine(h_BxSxD, delta_BxPxCxD, idx_BxPxC, ok_BxPxC, slot_BxSxK, kept_BxSxK)
    delta_dtype_0 = jnp.zeros((0,), delta_BxPxCxD.dtype)  # carries the dtype (residuals are arrays)
    return out, (idx_BxPxC, ok_BxPxC, delta_dtype_0)


def _combine_bwd(res, g_BxSxD):
    idx_BxPxC, ok_BxPxC, delta_dtype_0 = res
    g_delta_BxPxCxD = _slots_from_tokens(g_BxSxD, idx_BxPxC, ok_BxPxC).astype(delta_dtype_0.dtype)
    return (g_BxSxD, g_delta_BxPxCxD, None, None, None, None)


_combine.defvjp(_combine_fwd, _combine_bwd)


def gather_tokens(h_BxSxD: jax.Array, d: Dispatch) -> jax.Array:
    """Each layer's queue of token states buf_BxPxCxD; empty slots are zeros.

    Backward: grad_h[b, s] = sum_k kept[b, s, k] * g_buf[b, slot[b, s, k]], a gather.
    """
    return _gather(h_BxSxD, d.idx_BxPxC, d.ok_BxPxC, d.slot_BxSxK, d.kept_BxSxK)


def combine(h_BxSxD: jax.Array, delta_BxPxCxD: jax.Array, d: Dispatch) -> jax.Array:
    """h plus, per token, the deltas of the slots it holds [B, S, D]; skipped/dropped tokens unchanged.

    The deltas are summed in their own dtype and added in h's dtype (the output has h's dtype).
    Backward: identity for h; grad_delta[b, p, c] = ok * g[b, idx[b, p, c]], a gather.
    """
    return _combine(h_BxSxD, delta_BxPxCxD, d.idx_BxPxC, d.ok_BxPxC, d.slot_BxSxK, d.kept_BxSxK)


# --------------------------------------------------------------------------- decoding: grouped by layer
# Batched decoding has no capacity (nothing may be dropped) and few tokens, N = batch * K entries
# per step. Each pool layer runs on its own entries only, one at a time or in one bucket whose
# static size is the smallest of `bucket_sizes` that holds them, picked at run time by lax.switch:
# a layer's cost follows its load, and a layer no entry chose costs nothing.


@struct.dataclass
class Groups:
    """N entries (token choices) grouped by pool layer: entries in layer order (ties by index), and
    each layer's run in that order. Entries with layer P (skip) are in no group."""
    order_N: jax.Array  # int32 entry indices sorted by layer
    start_P: jax.Array  # int32 where each layer's run starts in order_N
    count_P: jax.Array  # int32 entries per layer


def group_by_layer(layer_N: jax.Array, pool_size: int) -> Groups:
    """Group entries by their layer in [0, P] (P = skip: no group)."""
    order_N = jnp.argsort(layer_N, stable=True).astype(jnp.int32)
    count_P = (layer_N[None, :] == jnp.arange(pool_size, dtype=layer_N.dtype)[:, None]).sum(1)
    count_P = count_P.astype(jnp.int32)
    return Groups(order_N, jnp.cumsum(count_P) - count_P, count_P)


def bucket_sizes(n: int, classes: int = 8) -> tuple[int, ...]:
    """The static bucket sizes for groups of up to n entries: 0 (an empty group runs nothing) and
    `classes` sizes evenly up to n (every size up to n when n <= classes), so a layer's bucket is at
    most n / classes larger than its group, and n always fits."""
    if n < 1 or classes < 1:
        raise ValueError(f"bucket_sizes needs n >= 1 entries and classes >= 1, got {n} and {classes}")
    return tuple(sorted({0, *(math.ceil(n * i / min(classes, n)) for i in range(1, min(classes, n) + 1))}))


def map_groups(fns, groups: Groups, inputs_N: tuple, outputs_N, sizes: tuple[int, ...], rows_max: int = 0):
    """`outputs_N` with row n replaced by fns[p](row n of each of inputs_N) for every entry n of
    layer p's group; rows of entries in no group are left as they are.

    fns[p]: arrays [C, ...] (one per input) -> pytree shaped like outputs_N's rows, [C, ...]. Each
    layer runs once: a group of at most `rows_max` entries one entry at a time (a loop of calls
    with C = 1), a larger one on a bucket of the smallest size in `sizes` (ascending, from 0 to N) that
    holds it. The loop is for CPUs, where a product of a few rows by a layer's weights costs about
    what one of 16 rows does (the weights are packed first) and a matrix-vector product far less;
    on accelerators a bucket reads the weights once, so rows_max = 0 there.

    The inputs are put in layer order once, so a bucket is a slice of them (from its group's start;
    spare rows are the next groups' entries), and the groups' results go into a layer-ordered
    buffer in layer order, so each group overwrites the earlier buckets' spare rows: no scatter.
    Not differentiable (decoding only)."""
    n = groups.order_N.shape[0]
    if sizes[0] != 0 or sizes[-1] != n or list(sizes) != sorted(sizes):
        raise ValueError(f"bucket sizes must ascend from 0 to the {n} entries, got {sizes}")
    # Branch 0 runs groups of up to rows_max entries one by one (none when rows_max = 0); branch
    # j > 0 runs a bucket of buckets[j] entries.
    buckets = (min(rows_max, n), *(c for c in sizes if c > rows_max))
    buckets_J = jnp.asarray(buckets, jnp.int32)
    # In layer order, padded to 2N rows so that no slice from a start in [0, N] is clamped.
    sorted_2N = [jnp.concatenate([x_N[groups.order_N], jnp.zeros_like(x_N)]) for x_N in inputs_N]
    out_2N = jax.tree.map(lambda o_N: jnp.zeros((2 * n, *o_N.shape[1:]), o_N.dtype), outputs_N)
    zeros_N = lambda: jax.tree.map(jnp.zeros_like, outputs_N)  # noqa: E731

    def rows_of(start, c):
        return [jax.lax.dynamic_slice_in_dim(x_2N, start, c) for x_2N in sorted_2N]

    def one_by_one(fn, start, count):
        def body(j, out_N):
            return jax.tree.map(lambda o_N, y_1: jax.lax.dynamic_update_slice_in_dim(
                o_N, y_1.astype(o_N.dtype), j, 0), out_N, fn(*rows_of(start + j, 1)))
        return jax.lax.fori_loop(0, count, body, zeros_N()) if rows_max else zeros_N()

    def bucket(fn, start, c):
        return jax.tree.map(lambda o_N, y_C: jnp.zeros_like(o_N).at[:c].set(y_C.astype(o_N.dtype)),
                            outputs_N, fn(*rows_of(start, c)))

    for p, fn in enumerate(fns):
        start, count = groups.start_P[p], groups.count_P[p]
        branches = [lambda fn=fn, s=start, k=count: one_by_one(fn, s, k)] + [
            lambda fn=fn, s=start, c=c: bucket(fn, s, c) for c in buckets[1:]]
        y_N = jax.lax.switch(jnp.searchsorted(buckets_J, count), branches)
        out_2N = jax.tree.map(lambda o_2N, y, s=start: jax.lax.dynamic_update_slice_in_dim(o_2N, y, s, 0),
                              out_2N, y_N)
    rank_N = jnp.zeros((n,), jnp.int32).at[groups.order_N].set(jnp.arange(n, dtype=jnp.int32))
    grouped_N = rank_N < groups.start_P[-1] + groups.count_P[-1]  # entries past the last group skip

    def back(o_2N, o_N):
        return jnp.where(grouped_N.reshape(n, *(1,) * (o_N.ndim - 1)), o_2N[rank_N], o_N)
    return jax.tree.map(back, out_2N, outputs_N)
