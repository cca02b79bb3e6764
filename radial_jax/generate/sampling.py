"""Sampling from a dense or radial model with the shared KV cache.

Shape letters: B batch (prompts), S prompt length (padded), V vocabulary.

`sample_logits` is the rule (greedy, temperature, top-k, top-p); `generate` is the loop: one
prefill of all prompts (ragged lengths), then jitted decode-and-sample calls of `burst` tokens each
(a lax.scan over the step: one dispatch and one host readback per burst instead of per token), then
single steps for the tail, stopping each prompt at EOS or after max_tokens. Randomness comes only
from the seed: token i of a run draws with `fold_in(sampling_key(seed), i)`, so a seed repeats its
output exactly, whatever the burst.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from radial_jax.config import Config
from radial_jax.model.decode import decode_step, prefill, unstack_weights
from radial_jax.model.kv_cache import KVCache, check_room, init_cache


@dataclass(frozen=True)
class Sampling:
    """temperature 0 means greedy; top_k 0 and top_p 1.0 mean no truncation."""
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0

    def __post_init__(self):
        if self.temperature < 0 or self.top_k < 0 or not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"sampling needs temperature >= 0, top_k >= 0 and 0 < top_p <= 1; got "
                             f"temperature={self.temperature}, top_k={self.top_k}, top_p={self.top_p}")


def sample_logits(logits_BxV: jax.Array, key: jax.Array, s: Sampling) -> jax.Array:
    """Next token ids [B] (int32) from float logits under the sampling rule `s` (static)."""
    if s.temperature == 0.0:
        return jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32)
    x_BxV = logits_BxV.astype(jnp.float32) / s.temperature
    if s.top_k > 0 or s.top_p < 1.0:
        sorted_BxV = jnp.sort(x_BxV, axis=-1)[:, ::-1]  # descending
        keep_BxV = jnp.ones_like(sorted_BxV, bool)
        if 0 < s.top_k < x_BxV.shape[-1]:
            keep_BxV &= jnp.arange(x_BxV.shape[-1]) < s.top_k
        if s.top_p < 1.0:  # the smallest prefix whose probability reaches top_p (at least one token)
            probs = jax.nn.softmax(jnp.where(keep_BxV, sorted_BxV, -jnp.inf), axis=-1)
            before_BxV = jnp.cumsum(probs, axis=-1) - probs
            keep_BxV &= before_BxV < s.top_p
        threshold_Bx1 = jnp.min(jnp.where(keep_BxV, sorted_BxV, jnp.inf), axis=-1, keepdims=True)
        x_BxV = jnp.where(x_BxV >= threshold_Bx1, x_BxV, -jnp.inf)
    return _draw(key, x_BxV)


def _draw(key: jax.Array, x_BxV: jax.Array) -> jax.Array:
    """One token per row with probabilities softmax(x), by inverse CDF: one uniform number per row,
    where `jax.random.categorical` draws a Gumbel per vocabulary entry, which grows costly with the
    vocabulary. Zero-probability tokens have empty intervals of the CDF, so they are never drawn."""
    cdf_BxV = jnp.cumsum(jax.nn.softmax(x_BxV, axis=-1), axis=-1)
    u_Bx1 = jax.random.uniform(key, (x_BxV.shape[0], 1), minval=jnp.finfo(jnp.float32).tiny)
    # The index of the first CDF entry >= u * total (total ~1, kept exact so u < 1 stays inside).
    return jnp.sum(cdf_BxV < u_Bx1 * cdf_BxV[:, -1:], axis=-1).astype(jnp.int32)


def sampling_key(seed: int) -> jax.Array:
    """The key generation draws from: threefry4x32, not JAX's default threefry2x32, whose CPU
    lowering is a rolled while loop of small kernels, a visible share of a small model's decode
    step; threefry4x32 lowers to a few fused ops."""
    return jax.random.key(seed, impl="threefry4x32")


def depth_at(cache: KVCache, pos_B: jax.Array, n_dense: int, pool_size: int) -> jax.Array:
    """Blocks each sequence's token at pos_B ran: dense/prefix blocks plus routing steps not skipped."""
    route_TxB = jnp.take_along_axis(cache.route_TxBxM, pos_B[None, :, None], axis=2)[..., 0]
    return n_dense + (route_TxB < pool_size).sum(0).astype(jnp.int32)


@dataclass
class Generation:
    """What `generate` made, per prompt: new token ids (EOS not included), the blocks run to produce
    each (those of the forward pass over the position before it), and why it stopped."""
    tokens: list[list[int]] = field(default_factory=list)
    depth: list[list[int]] = field(default_factory=list)
    stop: list[str] = field(default_factory=list)  # "eos" or "max_tokens"


DEFAULT_BURST = 8


class Generator:
    """Jitted prefill and decode-and-sample steps for one model (compiled once per shape/rule).

    Parameters go to the jitted steps as flat lists of arrays: flattening an nnx.State in Python
    at every call is a visible share of a small model's time per token."""

    def __init__(self, cfg: Config, graphdef: nnx.GraphDef, params, *, switch: bool | None = None,
                 step_weights=None, burst: int = DEFAULT_BURST):
        """step_weights: the batch-1 path's `decode.StepWeights` (default: `unstack_weights` of
        params); benchmarks pass altered ones (forced routes, shared pool weights).
        burst: tokens `generate` decodes per jitted call. Each call costs a dispatch and a host
        readback, for small models a large share of a step, paid once per burst; `on_token` then
        streams the burst's tokens at once, and the tokens a burst makes after a sequence's EOS are
        computed and dropped."""
        if burst < 1:
            raise ValueError(f"burst must be >= 1 tokens per call, got {burst}")
        m = cfg.model
        self.cfg, self.graphdef, self.params, self.switch = cfg, graphdef, params, switch
        self.burst = burst
        self.n_dense = m.n_layers if m.kind == "dense" else m.prefix_layers
        self.pool_size = m.pool_size
        self.max_depth = m.n_layers if m.kind == "dense" else m.prefix_layers + m.steps
        # The blocks a dense model of the same parameters runs: what active fractions divide by.
        self.dense_depth = m.n_layers if m.kind == "dense" else m.prefix_layers + m.pool_size
        self._leaves, self._params_def = jax.tree.flatten(params)
        if step_weights is None and switch is not False:
            step_weights = unstack_weights(graphdef, params)
        self._step_leaves, self._step_def = jax.tree.flatten(step_weights)
        self._prefill = jax.jit(self._prefill_impl, static_argnames="s", donate_argnames="cache")
        self._steps = jax.jit(self._steps_impl, static_argnames=("n", "s"), donate_argnames="cache")

    def prefill(self, tokens_BxS, lengths_B, cache: KVCache, key, s: Sampling):
        """(first new token [B], blocks it took [B], cache) after prefilling the prompts."""
        return self._prefill(self._leaves, tokens_BxS, lengths_B, cache, key, s=s)

    def steps(self, token_B, cache: KVCache, key, i: int, n: int, s: Sampling):
        """n decode steps in one call, from token_B: (the last new token [B], the n new tokens [n, B],
        blocks each step ran [n, B], cache). Step j draws with fold_in(key, i + j), so a burst draws
        what single steps do. The last token also comes on its own, on the device, for the next call."""
        return self._steps(self._leaves, self._step_leaves, token_B, cache, key, i, n=n, s=s)

    def _prefill_impl(self, leaves, tokens_BxS, lengths_B, cache, key, s: Sampling):
        params = jax.tree.unflatten(self._params_def, leaves)
        logits_BxSxV, cache = prefill(self.graphdef, params, tokens_BxS, lengths_B, cache)
        last_B = lengths_B - 1
        logits_BxV = jnp.take_along_axis(logits_BxSxV, last_B[:, None, None], axis=1)[:, 0]
        return (sample_logits(logits_BxV, key, s), depth_at(cache, last_B, self.n_dense, self.pool_size),
                cache)

    def _steps_impl(self, leaves, step_leaves, token_B, cache, key, i, n: int, s: Sampling):
        params = jax.tree.unflatten(self._params_def, leaves)
        step_weights = jax.tree.unflatten(self._step_def, step_leaves)

        def step(token_B, cache, i):
            logits_BxV, cache = decode_step(self.graphdef, params, token_B, cache, switch=self.switch,
                                            step_weights=step_weights)
            depth_B = depth_at(cache, cache.length_B - 1, self.n_dense, self.pool_size)
            return sample_logits(logits_BxV, jax.random.fold_in(key, i), s), depth_B, cache

        if n == 1:  # no loop around a single step
            token_B, depth_B, cache = step(token_B, cache, i)
            return token_B, token_B[None], depth_B[None], cache

        def body(carry, i):
            token_B, depth_B, cache = step(*carry, i)
            return (token_B, cache), (token_B, depth_B)

        (token_B, cache), (token_NxB, depth_NxB) = jax.lax.scan(body, (token_B, cache), i + jnp.arange(n))
        return token_B, token_NxB, depth_NxB, cache

    def generate(self, prompts: Sequence[Sequence[int]], *, max_tokens: int, sampling: Sampling = Sampling(),
                 seed: int = 0, eos_id: int | None = None,
                 on_token: Callable[[int, int, int], None] | None = None) -> Generation:
        """Continue each prompt (a list of token ids) by up to max_tokens new tokens.

        on_token(prompt index, token id, depth) is called for every new token as it is made
        (EOS included), in order, so callers can stream."""
        if not prompts or any(len(p) == 0 for p in prompts):
            raise ValueError("generate needs at least one prompt, and every prompt needs a token "
                             "(e.g. the tokenizer's BOS)")
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
        b = len(prompts)
        lengths = np.array([len(p) for p in prompts], np.int32)
        tokens = np.zeros((b, int(lengths.max())), np.int32)
        for i, p in enumerate(prompts):
            tokens[i, :len(p)] = p
        cache = init_cache(self.cfg, b, int(lengths.max()) + max_tokens)
        check_room(cache, lengths, length=np.zeros(b, np.int32))
        key = sampling_key(seed)
        out = Generation([[] for _ in range(b)], [[] for _ in range(b)], ["max_tokens"] * b)
        done = np.zeros(b, bool)
        token_B, depth_B, cache = self.prefill(jnp.asarray(tokens), jnp.asarray(lengths), cache,
                                               jax.random.fold_in(key, 0), sampling)
        new_NxB, depth_NxB = np.asarray(token_B)[None], np.asarray(depth_B)[None]  # on the host
        made, length = 0, lengths.copy()  # tokens made so far; positions in the cache
        while True:
            for tok, dep in zip(new_NxB, depth_NxB, strict=True):
                for r in np.flatnonzero(~done):
                    if on_token is not None:
                        on_token(int(r), int(tok[r]), int(dep[r]))
                    if eos_id is not None and tok[r] == eos_id:
                        done[r], out.stop[r] = True, "eos"
                    else:
                        out.tokens[r].append(int(tok[r]))
                        out.depth[r].append(int(dep[r]))
                made += 1
                if done.all() or made == max_tokens:
                    return out
            n = self.burst if max_tokens - made >= self.burst else 1  # two compiled programs at most
            check_room(cache, n, length=length)
            token_B, new_NxB, depth_NxB, cache = self.steps(token_B, cache, key, made, n, sampling)
            new_NxB, depth_NxB = np.asarray(new_NxB), np.asarray(depth_NxB)
            length += n


def generate(cfg: Config, graphdef: nnx.GraphDef, params, prompts: Sequence[Sequence[int]], *,
             max_tokens: int, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
             seed: int = 0, eos_id: int | None = None, on_token=None) -> Generation:
    """One-call generation (compiles on each call; keep a Generator to reuse compiled steps)."""
    return Generator(cfg, graphdef, params).generate(
        prompts, max_tokens=max_tokens, sampling=Sampling(temperature, top_k, top_p), seed=seed,
        eos_id=eos_id, on_token=on_token)

