"""Analytic FLOPs per token for dense and radial configs (matmuls only, 2 FLOPs per multiply-add).

Attention scores and values count the full row of `seq_len` keys per query (no causal halving), as
XLA computes them. Training FLOPs are 3x the forward (forward + backward). For radial models the
forward cost is fixed by the static shapes: T steps x P layers x C slots (one layer per step under
`routing.schedule: sequential`; all S tokens at steps that `routing.route_every` leaves unrouted),
whatever the router does; at inference a token pays only for the blocks it runs (`active_depth`).
"""

from __future__ import annotations

from dataclasses import dataclass

from radial_jax.config import Config, ff_dim, head_dim
from radial_jax.model.dispatch import capacity
from radial_jax.model.policy import routed_step
from radial_jax.model.routing import served_layers


def block_flops(cfg: Config, context: int) -> float:
    m = cfg.model
    k = head_dim(m)
    proj = 2 * m.d_model * k * (2 * m.n_heads + 2 * m.n_kv_heads)
    attn = 2 * 2 * m.n_heads * k * context
    mlp = 2 * 3 * m.d_model * ff_dim(m)
    return float(proj + attn + mlp)


def router_flops(cfg: Config) -> float:
    m = cfg.model
    return float(2 * (m.d_model * cfg.router.hidden + cfg.router.hidden * (m.pool_size + 1)))


def head_flops(cfg: Config) -> float:
    return float(2 * cfg.model.d_model * cfg.model.vocab_size)


@dataclass(frozen=True)
class FlopsPerToken:
    train: float           # forward + backward per training token, as compiled
    forward: float         # one forward per token, as compiled (radial: all T x P x C slots)
    inference_max: float   # one token at inference, running every routed step
    dense_equivalent: float  # a dense model with the same blocks (prefix + P layers, or L)

    def inference(self, routed_depth: float, cfg: Config) -> float:
        """Inference FLOPs of a token that runs `routed_depth` pool blocks (radial), else forward."""
        if cfg.model.kind == "dense":
            return self.forward
        m = cfg.model
        blk = block_flops(cfg, cfg.data.seq_len)
        return (m.prefix_layers * blk + m.steps * router_flops(cfg) + routed_depth * blk
                + head_flops(cfg))


def active_train_flops(cfg: Config, active_depth: float | None = None) -> float:
    """Training FLOPs per token that do useful work: dense, all of them; radial, the prefix, routers
    and head plus `active_depth` blocks (`route/active_depth`: prefix + pool blocks a token ran,
    averaged), forward + backward. Without `active_depth`, the static-shape count."""
    f = flops_per_token(cfg)
    if cfg.model.kind == "dense" or active_depth is None:
        return f.train
    m = cfg.model
    blk = block_flops(cfg, cfg.data.seq_len)
    return 3 * (active_depth * blk + m.steps * router_flops(cfg) + head_flops(cfg))


def flops_per_token(cfg: Config) -> FlopsPerToken:
    m, s = cfg.model, cfg.data.seq_len
    blk = block_flops(cfg, s)
    if m.kind == "dense":
        fwd = m.n_layers * blk + head_flops(cfg)
        return FlopsPerToken(3 * fwd, fwd, fwd, fwd)
    served = served_layers(cfg.routing, m.pool_size)  # layers a step runs: P, or 1 when scheduled
    routed = sum(routed_step(cfg.routing, t) for t in range(m.steps))
    # Routed steps run `served` layers of C slots each; unrouted ones (route_every) every token once.
    slots_per_token = routed * served * capacity(s, served, m.capacity_factor) / s + (m.steps - routed)
    fwd = m.prefix_layers * blk + m.steps * router_flops(cfg) + slots_per_token * blk + head_flops(cfg)
    inf_max = m.prefix_layers * blk + m.steps * (router_flops(cfg) + blk) + head_flops(cfg)
    dense_eq = (m.prefix_layers + m.pool_size) * blk + head_flops(cfg)
    return FlopsPerToken(3 * fwd, fwd, inf_max, dense_eq)


def describe_flops(cfg: Config) -> str:
    f = flops_per_token(cfg)
    line = (f"FLOPs/token: train {f.train / 1e6:.1f}M, forward {f.forward / 1e6:.1f}M")
    if cfg.model.kind == "radial":
        line += (f", inference (all {cfg.model.steps} steps) {f.inference_max / 1e6:.1f}M; "
                 f"dense model of the same blocks {f.dense_equivalent / 1e6:.1f}M "
                 f"(compiled active fraction {f.forward / f.dense_equivalent:.2f})")
    return line
