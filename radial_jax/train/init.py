"""The function that creates a fresh train state, for a sharding plan to trace (abstract state,
checkpoint restore target) or to run straight into its shards."""

from __future__ import annotations

from collections.abc import Callable

import optax
from flax import nnx

from radial_jax.train.step import TrainState, init_state


def train_state_init(make_model: Callable[[], nnx.Module], tx: optax.GradientTransformation
                     ) -> Callable[[], TrainState]:
    """() -> TrainState: the model's parameters from `make_model` and `tx`'s optimizer state."""
    def init() -> TrainState:
        _, params = nnx.split(make_model(), nnx.Param)
        return init_state(params, tx)

    return init
