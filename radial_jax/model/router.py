"""The router: a small MLP that scores, per token and routing step, the P pool layers and "skip".

Shape letters: B batch, S sequence, D model width, H router hidden width, T routing steps,
R = P + 1 choices (pool layers 0..P-1, then skip at index P).

`select_bias` [T, P] shifts which layer a token picks without changing its gate (aux-loss-free load
balancing, as in DeepSeek-V3): the optimizer moves it by a fixed rate against each layer's load error.

Per-step routers (`per_step=True`) have their own weights for each step; otherwise one MLP is
shared and a learned step embedding is added to its hidden layer. Either way the output bias is
per step, so the router can start on the sequential schedule (step t -> layer t mod P).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from radial_jax.model.layers import RMSNorm, param, zeros


def init_output_bias(steps: int, pool_size: int, *, init: str, init_bias: float,
                     skip_bias: float) -> jax.Array:
    """[T, R] starting logit bias: toward layer t mod P at step t (`sequential`) or flat."""
    bias_TxR = jnp.zeros((steps, pool_size + 1), jnp.float32)
    if init == "sequential":
        bias_TxR = bias_TxR.at[jnp.arange(steps), jnp.arange(steps) % pool_size].set(init_bias)
    return bias_TxR.at[:, pool_size].add(skip_bias)


class Router(nnx.Module):
    def __init__(self, d_model: int, *, pool_size: int, steps: int, hidden: int, per_step: bool,
                 init: str, init_bias: float, skip_bias: float, norm_eps: float, init_std: float,
                 rngs: nnx.Rngs):
        r = pool_size + 1
        self.per_step = per_step
        self.norm = RMSNorm(d_model, eps=norm_eps, rngs=rngs)
        # Fan-in scaled weights, so the logits differ from token to token by O(1) from the start:
        # with the blocks' small init_std they would be nearly equal, every token would pick the
        # same layer, and capacity would drop most of them.
        in_std, out_std = d_model ** -0.5, (0.0 if init == "uniform" else hidden ** -0.5)
        if per_step:
            self.w_in = param(rngs, (steps, d_model, hidden), (None, "embed", None), in_std)
            self.w_out = param(rngs, (steps, hidden, r), (None, None, None), out_std)
        else:
            self.w_in = param(rngs, (d_model, hidden), ("embed", None), in_std)
            self.step_embed = param(rngs, (steps, hidden), (None, None), init_std)
            self.w_out = param(rngs, (hidden, r), (None, None), out_std)
        self.b_in = param(rngs, (steps, hidden), (None, None), 0.0)
        # Added to the logits only to pick a layer (never to gates or probabilities), so the language
        # model loss gives it no gradient; `routing.balance_rate` moves it against load imbalance.
        self.select_bias = zeros((steps, pool_size), (None, None))
        self.b_out = nnx.Param(
            init_output_bias(steps, pool_size, init=init, init_bias=init_bias, skip_bias=skip_bias),
            out_sharding=(None, None), eager_sharding=False)

    def __call__(self, h_BxSxD: jax.Array, t: int) -> jax.Array:
        """Float32 logits [B, S, R] for routing step t (a Python int)."""
        return self.apply(h_BxSxD, self.step_weights(t))

    def step_weights(self, t: int) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
        """Step t's own weights (w_in [D, H], b_in [H], w_out [H, R], b_out [R]). Decoding slices
        them once outside jit: sliced inside, each token would copy them out of the stacked arrays."""
        if self.per_step:
            return self.w_in[t], self.b_in[t], self.w_out[t], self.b_out[t]
        return self.w_in[...], self.b_in[t] + self.step_embed[t], self.w_out[...], self.b_out[t]

    def apply(self, h_BxSxD: jax.Array, weights: tuple) -> jax.Array:
        """Float32 logits [B, S, R] from one step's `step_weights`."""
        w_in_DxH, b_in_H, w_out_HxR, b_out_R = weights
        x = self.norm(h_BxSxD.astype(jnp.float32))
        a_BxSxH = jax.nn.gelu(jnp.einsum("bsd,dh->bsh", x, w_in_DxH) + b_in_H)
        return jnp.einsum("bsh,hr->bsr", a_BxSxH, w_out_HxR) + b_out_R
