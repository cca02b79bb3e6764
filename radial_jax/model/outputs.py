"""What a language model's forward pass returns beside its logits: metrics and auxiliary losses.

The losses are unweighted terms; the objective weighs them in one place (train/step.py), so a
model never reads a loss weight.
"""

from __future__ import annotations

import dataclasses

import jax
from flax import struct


@struct.dataclass
class AuxLosses:
    """Unweighted auxiliary loss terms of one forward pass; None where the configuration has none."""
    load_balance: jax.Array | None = None  # Switch load balance over pool layers (1 = balanced)
    z: jax.Array | None = None             # router z-loss: mean squared log-partition
    compute: jax.Array | None = None       # (expected active fraction - routing.compute_target)^2
    skip_predict: jax.Array | None = None  # the learned skip predictor's cross-entropy vs capacity
    balance_bias: jax.Array | None = None  # ~0; its gradient in the selection bias is the load error

    def terms(self) -> dict[str, jax.Array]:
        """The present terms by name."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if getattr(self, f.name) is not None}


@struct.dataclass
class ModelAux:
    """metrics: scalars by name (`route/...`), reported as they are; losses: for the objective;
    trace_TxBxS: the pool layer each token ran at each routing step (P = none), when asked for."""
    metrics: dict = dataclasses.field(default_factory=dict)
    losses: AuxLosses = dataclasses.field(default_factory=AuxLosses)
    trace_TxBxS: jax.Array | None = None
