"""What an arm costs: parameters (from abstract shapes, nothing allocated) and FLOPs per token."""

from __future__ import annotations

from dataclasses import dataclass

import jax
from flax import nnx

from radial_jax.config import Config
from radial_jax.model.build import build_model
from radial_jax.model.flops import flops_per_token


def count_params(cfg: Config) -> int:
    """Parameter count of the model `cfg` builds, from shapes only (no initialisation runs)."""
    abstract = nnx.eval_shape(lambda: build_model(cfg))
    return int(sum(x.size for x in jax.tree.leaves(nnx.state(abstract, nnx.Param))))


@dataclass(frozen=True)
class ArmCost:
    params: int
    train_per_token: float      # forward + backward, as compiled
    forward_per_token: float    # one forward as compiled (radial: the capacity-bound slots)
    inference_max: float        # radial: a token that runs every routed step; dense: the forward
    tokens_per_step: int

    def training_flops(self, steps: int) -> float:
        return self.train_per_token * self.tokens_per_step * steps


def arm_cost(cfg: Config) -> ArmCost:
    f = flops_per_token(cfg)
    return ArmCost(count_params(cfg), f.train, f.forward, f.inference_max,
                   cfg.data.batch_size * cfg.data.seq_len)


def inference_flops(cfg: Config, active_depth: float | None) -> float:
    """Inference FLOPs per token at a measured mean active depth (prefix + routed blocks, as the
    `route/active_depth` metric counts them); dense models, or no measurement: the full forward.
    With `routing.skip: forbid` the depth measured in training is capacity's, but decoding has no
    capacity and runs every step: such a model pays the maximum."""
    f = flops_per_token(cfg)
    if cfg.model.kind == "dense":
        return f.forward
    if active_depth is None or cfg.routing.skip == "forbid":
        return f.inference_max
    return f.inference(active_depth - cfg.model.prefix_layers, cfg)


def short(x: float) -> str:
    """12_345_678 -> '12.3M': FLOPs, tokens and parameters in tables."""
    for div, unit in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            return f"{x / div:.3g}{unit}"
    return f"{x:.3g}"
