"""AdamW with linear warmup and cosine decay, global-norm clipping, decay on matrices only.

The router's selection bias (aux-loss-free load balancing) is not trained by AdamW: its gradient is a
load error, and it moves by a fixed `balance_rate` in that error's direction (sign descent)."""

from __future__ import annotations

import jax
import optax

from radial_jax.config import TrainConfig


def lr_schedule(t: TrainConfig) -> optax.Schedule:
    """Warmup then cosine decay to the end of training; warmup is cut to the run if it is longer."""
    warmup = min(t.warmup_steps, t.steps - 1)
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=t.lr, warmup_steps=warmup,
        decay_steps=max(t.steps, warmup + 1), end_value=t.lr * t.min_lr_ratio)


BALANCE = "select_bias"  # the router parameter moved by sign descent


def _label(path, _) -> str:
    return "balance" if any(getattr(k, "key", None) == BALANCE for k in path) else "main"


def make_optimizer(t: TrainConfig, balance_rate: float = 0.0) -> optax.GradientTransformation:
    """The optimizer state's structure does not depend on `balance_rate` (0 just freezes the bias)."""
    def decay_mask(params):
        return jax.tree.map(lambda p: p.ndim >= 2, params)

    parts = [optax.clip_by_global_norm(t.grad_clip)] if t.grad_clip > 0 else []
    parts.append(optax.adamw(lr_schedule(t), b1=t.b1, b2=t.b2, eps=t.eps,
                             weight_decay=t.weight_decay, mask=decay_mask))
    balance = optax.chain(optax.scale_by_sign(), optax.scale(-balance_rate))
    return optax.multi_transform({"main": optax.chain(*parts), "balance": balance},
                                 lambda params: jax.tree_util.tree_map_with_path(_label, params))
