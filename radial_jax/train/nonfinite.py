"""Non-finite loss or gradients: count them on the device, act on them where the loop logs.

The train step itself refuses a non-finite update (params and optimizer state stay as they were;
see step.py) and reports `train/nonfinite` (1.0 for a skipped step). The loop folds that flag into
a `Tally` on the device every step, so nothing waits on the host, and reads the tally only when it
logs or saves. `train.on_nonfinite` then decides: `skip` carries on (up to `train.max_nonfinite`
skipped steps in a row), `stop` ends the run naming the first bad step and the last good checkpoint.

Not `optax.apply_if_finite`: it looks at the gradients only (not the loss or the optimizer's
output), applies the bad update once its limit is reached (we stop instead, and never apply one),
and keeps its counters inside the optimizer state, which would change every checkpoint's layout.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from radial_jax.errors import UserError


class NonFiniteError(UserError, RuntimeError):
    """Training produced NaN/inf and was stopped, or a state holding NaN/inf was about to be saved."""

    exit_code = 1  # the run diverged: not a usage error


@struct.dataclass
class Tally:
    """Skipped (non-finite) steps since the last `take`; `run` is the current streak, kept across."""
    count: jax.Array
    run: jax.Array
    longest: jax.Array
    first: jax.Array
    last: jax.Array


def new_tally() -> Tally:
    z = jnp.zeros((), jnp.int32)
    return Tally(count=z, run=z, longest=z, first=z, last=z)


@jax.jit
def tally(t: Tally, nonfinite: jax.Array, step: jax.Array) -> Tally:
    """Fold one step's `train/nonfinite` flag into the tally (on the device: no host sync)."""
    bad = nonfinite > 0
    run = jnp.where(bad, t.run + 1, 0)
    return Tally(count=t.count + bad.astype(jnp.int32), run=run, longest=jnp.maximum(t.longest, run),
                 first=jnp.where(bad & (t.count == 0), step, t.first),
                 last=jnp.where(bad, step, t.last))


def take(t: Tally) -> tuple[dict[str, int], Tally]:
    """The tally as ints, and a fresh one for the next interval that keeps the current streak."""
    host = {k: int(v) for k, v in jax.device_get(vars(t)).items()}
    z = jnp.zeros((), jnp.int32)
    return host, Tally(count=z, run=t.run, longest=t.run, first=z, last=z)


def enforce(counts: dict[str, int], *, policy: str, max_in_row: int, last_good: str) -> None:
    """Raise NonFiniteError if `train.on_nonfinite` says this interval's skipped steps end the run."""
    if not counts["count"]:
        return
    advice = ("Lower train.lr, raise train.warmup_steps or set train.grad_clip, and check the data "
              "around that step")
    if policy == "stop":
        more = f" ({counts['count']} non-finite steps up to step {counts['last']})" \
            if counts["count"] > 1 else ""
        raise NonFiniteError(
            f"non-finite loss or gradients at step {counts['first']}{more}; stopping as "
            f"train.on_nonfinite=stop asks (those updates were not applied). Last good checkpoint: "
            f"{last_good}. {advice}, or set train.on_nonfinite=skip to step over such batches.")
    if counts["longest"] >= max_in_row:
        raise NonFiniteError(
            f"{counts['longest']} non-finite steps in a row (the latest at step {counts['last']}), "
            f"train.max_nonfinite={max_in_row}: training has diverged, skipping will not help. "
            f"Last good checkpoint: {last_good}. {advice}.")


@jax.jit
def _all_finite(tree: Any) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
              if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def all_finite(tree: Any) -> bool:
    """True if every floating-point array in `tree` holds only finite values (one host sync)."""
    return bool(_all_finite(tree))
