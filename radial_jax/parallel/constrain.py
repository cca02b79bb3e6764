"""Sharding constraints on activations by logical axis names, so model code never names a mesh axis.

`with_logical_constraint(x, ("batch", "length", "embed"))` is a no-op unless a trainer has made a
mesh and rules active (`active(mesh, rules)`) while the function is traced; then it becomes
`jax.lax.with_sharding_constraint` with the spec those rules give. `gather_once` gathers a
parameter for many uses and reduce-scatters its summed gradient; `split_count` says how many ways
the rules split one dimension.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import math
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


def split_count(names: tuple[str | None, ...], shape: tuple[int, ...], dim: int) -> int:
    """Into how many shards the active rules split dimension `dim` of an array with these logical
    names and shape (1 with no active mesh)."""
    ctx = _ACTIVE.get()
    if ctx is None:
        return 1
    mesh, rules = ctx
    axes = rules.spec(names, shape, dict(mesh.shape))[dim]
    axes = (axes,) if isinstance(axes, str) else tuple(axes or ())
    return math.prod(mesh.shape[a] for a in axes)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def gather_once(w: jax.Array, names: tuple[str | None, ...], grad_names: tuple[str | None, ...]
                ) -> jax.Array:
    """w laid out by `names` (a parameter with its FSDP axis whole, for several uses in a step); its
    gradient, summed over those uses, goes back laid out by `grad_names` (the parameter's own): a
    reduce-scatter. A plain constraint would ask for the summed gradient whole on every device
    (an all-reduce). A no-op with no active mesh."""
    return with_logical_constraint(w, names)


def _gather_fwd(w, names, grad_names):
    return with_logical_constraint(w, names), None


def _gather_bwd(names, grad_names, _, g):
    return (with_logical_constraint(g, grad_names),)


gather_once.defvjp(_gather_fwd, _gather_bwd)
