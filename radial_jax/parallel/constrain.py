"""Sharding constraints on activations by logical axis names, so model code never names a mesh axis.

`with_logical_constraint(x, ("batch", "length", "embed"))` is a no-op unless a trainer has made a
mesh and rules active (`active(mesh, rules)`) while the function is traced; then it becomes
`jax.lax.with_sharding_constraint` with the spec those rules give.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

import jax
from jax.sharding import Mesh, NamedSharding

from radial_jax.parallel.rules import Rules

_ACTIVE: contextvars.ContextVar[tuple[Mesh, Rules] | None] = contextvars.ContextVar(
    "radial_sharding", default=None)


@contextlib.contextmanager
def active(mesh: Mesh, rules: Rules) -> Iterator[None]:
    """Make `with_logical_constraint` shard activations on `mesh` by `rules` inside this block."""
    token = _ACTIVE.set((mesh, rules))
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def with_logical_constraint(x: jax.Array, names: tuple[str | None, ...]) -> jax.Array:
    """Constrain x's sharding by the logical names of its dimensions (a no-op with no active mesh)."""
    ctx = _ACTIVE.get()
    if ctx is None:
        return x
    mesh, rules = ctx
    if len(names) != x.ndim:
        raise ValueError(f"logical names {names} do not match an array of shape {x.shape}")
    spec = rules.spec(names, x.shape, dict(mesh.shape))
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))
