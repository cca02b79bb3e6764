"""A `jax.sharding.Mesh` from the `mesh` config section.

Axes, outermost first: data, fsdp, pool, tensor. The innermost axis gets the devices closest
together (same host, fastest links), which suits tensor parallelism's per-layer collectives; the
outer data axes then span hosts, so each process holds a contiguous block of the batch.
"""

from __future__ import annotations

import math

import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh

from radial_jax.axes import MESH_AXES
from radial_jax.config import ConfigError, MeshConfig


class MeshError(ConfigError):
    """The mesh in config does not fit the devices; the message says what would."""


def _fmt(sizes: dict[str, int]) -> str:
    return " x ".join(f"mesh.{a}={sizes[a]}" for a in ("data", "fsdp", "tensor", "pool"))


def mesh_shape(m: MeshConfig, n_devices: int) -> dict[str, int]:
    """Axis sizes with the -1 axis (if any) resolved; raises MeshError unless they use every device."""
    sizes = {a: getattr(m, a) for a in MESH_AXES}
    rest = [a for a, s in sizes.items() if s == -1]
    fixed = math.prod(s for s in sizes.values() if s != -1)
    if rest:
        if n_devices % fixed:
            raise MeshError(f"{_fmt(sizes)}: the fixed axes need a multiple of {fixed} devices, but "
                            f"{n_devices} are available; change them so their product divides "
                            f"{n_devices}")
        sizes[rest[0]] = n_devices // fixed
    elif fixed != n_devices:
        raise MeshError(f"{_fmt(sizes)} = {fixed} devices, but {n_devices} are available "
                        f"({jax.process_count()} process(es)); make the product {n_devices}, "
                        "or set one axis to -1 to take the rest")
    return sizes


def make_mesh(m: MeshConfig, devices: list | None = None) -> Mesh:
    """The mesh over `devices` (default: all devices of all processes)."""
    devices = list(jax.devices() if devices is None else devices)
    shape = mesh_shape(m, len(devices))
    sizes = tuple(shape[a] for a in MESH_AXES)
    auto = (AxisType.Auto,) * len(MESH_AXES)
    slices = len({getattr(d, "slice_index", 0) for d in devices})
    if slices > 1:  # multi-slice: only `data` crosses the data-center network between slices
        if shape["data"] % slices:
            raise MeshError(f"{_fmt(shape)} over {slices} slices: mesh.data must be a multiple of the "
                            f"slice count {slices} (only data parallelism spans slices)")
        ici = (shape["data"] // slices, *sizes[1:])
        grid = mesh_utils.create_hybrid_device_mesh(ici, (slices, 1, 1, 1), devices)
        return Mesh(grid, MESH_AXES, axis_types=auto)
    if len(devices) == len(jax.devices()) or devices[0].platform == "tpu":  # topology-aware order
        return jax.make_mesh(sizes, MESH_AXES, axis_types=auto, devices=devices)
    return Mesh(np.asarray(devices).reshape(sizes), MESH_AXES, axis_types=auto)


def describe_mesh(mesh: Mesh) -> str:
    """e.g. "mesh: data=2 fsdp=1 pool=2 tensor=1 (4 cpu devices, 1 process)"."""
    axes = " ".join(f"{a}={n}" for a, n in mesh.shape.items())
    platform = mesh.devices.flat[0].platform
    procs = len({d.process_index for d in mesh.devices.flat})
    return f"mesh: {axes} ({mesh.size} {platform} devices, {procs} process{'es' if procs > 1 else ''})"
