"""The shared KV cache: one functional pytree for every prefix layer and routing step.

Shape letters: L cache slots (prefix layers + routing steps; dense: one per layer), T routing steps,
B batch, M max_len (positions), G key/value heads, K head width.

Slot `prefix + t` holds, for every position, the keys/values that attention at routing step t reads:
those of the pool layer that processed the position at step t (averaged over its layers when top-k
> 1), or, with `kv_skip: carry`, its most recent ones from an earlier step. `written` says which
entries exist; attention masks the others. The cache is passed in and returned, never module state.

Layout, chosen so that attention reads a slot where it lies (layers.grouped_attention): one buffer
per slot (slicing slot l out of one [L, ...] array copies it), batch and heads merged in front
(B*G), and keys transposed, so that queries x keys and probabilities x values are plain matmuls:
keys [B*G, K, M], values [B*G, M, K]. With [L, B, M, G, K] arrays XLA copied and transposed every
slot at every layer and decode step, and a unit batch dimension (batch 1) made XLA's CPU fusion
recompute each write into a copy of the slot for its reader (measured: about 40% of a small
model's CPU time per token). `k_LxBxGxMxK` and `v_LxBxGxMxK` give the plain layout, for inspection.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from radial_jax.config import Config, head_dim


@struct.dataclass
class KVCache:
    k: tuple[jax.Array, ...]  # per slot: keys, transposed [B*G, K, M]
    v: tuple[jax.Array, ...]  # per slot: values [B*G, M, K]
    written_LxBxM: jax.Array  # bool: the slot holds keys/values for this position
    length_B: jax.Array       # int32: positions filled so far, per sequence (ragged batches)
    route_TxBxM: jax.Array    # int32: pool layer each token ran at step t (first of top-k), P = skip

    @property
    def max_len(self) -> int:
        return self.written_LxBxM.shape[2]

    @property
    def batch(self) -> int:
        return self.written_LxBxM.shape[1]

    @property
    def kv_heads(self) -> int:
        return self.k[0].shape[0] // self.batch

    def slot(self, i: int) -> tuple[jax.Array, jax.Array]:
        """Slot i's keys [B, G, K, M] and values [B, G, M, K], as attention reads them."""
        b, g = self.batch, self.kv_heads
        return self.k[i].reshape(b, g, *self.k[i].shape[1:]), self.v[i].reshape(b, g, *self.v[i].shape[1:])

    @property
    def k_LxBxGxMxK(self) -> jax.Array:
        """All slots' keys stacked, [L, B, G, M, K] (a copy, for inspection)."""
        return jnp.swapaxes(jnp.stack([self.slot(i)[0] for i in range(len(self.k))]), 3, 4)

    @property
    def v_LxBxGxMxK(self) -> jax.Array:
        return jnp.stack([self.slot(i)[1] for i in range(len(self.v))])

    @property
    def nbytes(self) -> int:
        return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(self))

    def bytes_per_token(self) -> int:
        """Bytes one position of one sequence takes: keys, values, written flags and routing record."""
        b, m = self.batch, self.max_len
        return (self.nbytes - self.length_B.size * self.length_B.dtype.itemsize) // (b * m)


def init_cache(cfg: Config, batch: int, max_len: int, dtype=None) -> KVCache:
    """An empty cache for `cfg.model`; keys/values in the model's compute dtype unless given."""
    m = cfg.model
    if m.kind == "dense":
        slots, steps = m.n_layers, 0
    else:
        slots, steps = m.prefix_layers + m.steps, m.steps
    if dtype is None:
        dtype = jnp.bfloat16 if m.dtype == "bfloat16" else jnp.float32
    if batch < 1 or max_len < 1:
        raise ValueError(f"a KV cache needs batch >= 1 and max_len >= 1, got {batch} and {max_len}")
    if m.positions == "learned" and max_len > m.max_positions:
        raise ValueError(f"max_len={max_len} exceeds model.max_positions={m.max_positions}, the "
                         "model's table of learned positions")
    g, k = m.n_kv_heads, head_dim(m)
    return KVCache(k=tuple(jnp.zeros((batch * g, k, max_len), dtype) for _ in range(slots)),
                   v=tuple(jnp.zeros((batch * g, max_len, k), dtype) for _ in range(slots)),
                   written_LxBxM=jnp.zeros((slots, batch, max_len), bool),
                   length_B=jnp.zeros((batch,), jnp.int32),
                   route_TxBxM=jnp.full((steps, batch, max_len), m.pool_size, jnp.int32))


def bytes_per_token(cfg: Config, dtype=None) -> int:
    """Cache bytes per position per sequence for `cfg.model` (without allocating a cache)."""
    shapes = jax.eval_shape(lambda: init_cache(cfg, 1, 1, dtype))
    return sum(int(np.prod(x.shape)) * x.dtype.itemsize for x in jax.tree.leaves(shapes)) - 4


def check_room(cache: KVCache, n_new, length=None) -> None:
    """ValueError, on the host, if appending `n_new` tokens (int or [B]) would pass max_len.

    Jitted code cannot raise, so callers check here before calling a jitted step. `length` ([B],
    host) saves reading the cache's lengths back from the device when the caller tracks them."""
    length = np.asarray(jax.device_get(cache.length_B) if length is None else length)
    n_new_B = np.broadcast_to(np.asarray(n_new), length.shape)
    need = length + n_new_B
    if need.max(initial=0) > cache.max_len:
        b = int(np.argmax(need))
        raise ValueError(
            f"cannot decode past the KV cache's max_len={cache.max_len}: sequence {b} holds "
            f"{int(length[b])} positions and {int(n_new_B[b])} more were requested ({int(need[b])} in "
            "all); make a larger cache with init_cache(cfg, batch, max_len=...)")
