"""AdamW with linear warmup and cosine decay, global-norm clipping, decay on matrices only.

The router's selection bias (aux-loss-free load balancing) is not trained by AdamW: its gradient is a
load error, and it moves by a fixed `balance_rate` in that error's direction (sign descent)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from radial_jax.config import TrainConfig


def lr_schedule(t: TrainConfig) -> optax.Schedule:
    """Warmup then cosine decay to the end of training; warmup is cut to the run if it is longer."""
    warmup = min(t.warmup_steps, t.steps - 1)
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=t.lr, warmup_steps=warmup,
        decay_steps=max(t.steps, warmup + 1), end_value=t.lr * t.min_lr_ratio)


BALANCE = "select_bias"  # the router parameter moved by sign descent


def _is_balance(path) -> bool:
    return any(getattr(k, "key", None) == BALANCE for k in path)


def make_optimizer(t: TrainConfig, balance_rate: float = 0.0) -> optax.GradientTransformation:
    """The optimizer state's structure does not depend on `balance_rate` (0 just freezes the bias)."""
    def decay_mask(params):
        return jax.tree_util.tree_map_with_path(lambda path, p: p.ndim >= 2 and not _is_balance(path),
                                                params)

    parts = [optax.clip_by_global_norm(t.grad_clip)] if t.grad_clip > 0 else []
    parts.append(optax.adamw(lr_schedule(t), b1=t.b1, b2=t.b2, eps=t.eps,
                             weight_decay=t.weight_decay, mask=decay_mask))
    return _with_balance(optax.chain(*parts), balance_rate)


def _with_balance(main: optax.GradientTransformation, rate: float) -> optax.GradientTransformation:
    """`main` for every parameter but the selection bias, which gets -rate * sign(gradient). (Not
    optax.multi_transform: its masked states hold MaskedNodes, which sharding and checkpoints would
    have to special-case; here the bias's Adam moments just stay zero.)"""
    def update(grads, state, params=None):
        main_grads = jax.tree_util.tree_map_with_path(
            lambda path, g: jnp.zeros_like(g) if _is_balance(path) else g, grads)
        updates, state = main.update(main_grads, state, params)
        updates = jax.tree_util.tree_map_with_path(
            lambda path, u, g: -rate * jnp.sign(g) if _is_balance(path) else u, updates, grads)
        return updates, state

    return optax.GradientTransformation(main.init, update)
