"""Topology names -> devices to compile for: TPU slices through libtpu's topology descriptions
(`v5p:4x4x4`, `v5e:16x16`, `v6e:8x8`, ... with `slices` for multi-slice), `cpu:N` virtual CPU
devices, or `local`: this host's own devices (a GPU or TPU VM). No device of a TPU slice or of
cpu:N needs to exist."""

from __future__ import annotations

import importlib.util
import math
import os
import re
from dataclasses import dataclass

import jax

from radial_jax.config import ConfigError
from radial_jax.parallel.chips import CHIPS, Chip, chip_for_device_kind

TPU_CHIPS = ("v4", "v5e", "v5p", "v6e")
EXAMPLES = ("v4:2x2x1", "v5p:2x2x1", "v5p:4x4x4", "v5p:4x4x8", "v5e:8x8", "v5e:16x16", "v6e:8x8",
            "v6e:16x16", "local", "cpu:8")
_TPU_NAME = re.compile(r"^(v4|v5e|v5p|v6e):(\d+(?:x\d+){1,2})$")
_CPU_NAME = re.compile(r"^cpu:(\d+)$")


class TopologyError(ConfigError):
    """A topology name we cannot compile for; the message lists the known ones."""


@dataclass(frozen=True)
class Topology:
    name: str
    chip: Chip | None  # None for cpu:N (no roofline)
    devices: list
    slices: int

    @property
    def n_devices(self) -> int:
        return len(self.devices)


@dataclass(frozen=True)
class TopologyName:
    chip: str    # "cpu", "local" or a TPU chip name
    dims: tuple  # chips along each axis of one slice (cpu: (N,); local: ())

    @property
    def chips_per_slice(self) -> int:
        return math.prod(self.dims)


def parse_topology(name: str) -> TopologyName:
    """`v5p:4x4x4` -> TopologyName("v5p", (4, 4, 4)); `cpu:8` -> ("cpu", (8,)); `local` ->
    ("local", ()); else TopologyError."""
    if name.strip().lower() == "local":
        return TopologyName("local", ())
    if m := _CPU_NAME.match(name.strip()):
        return TopologyName("cpu", (int(m.group(1)),))
    if m := _TPU_NAME.match(name.strip().lower()):
        return TopologyName(m.group(1), tuple(int(x) for x in m.group(2).split("x")))
    raise TopologyError(f"--topology {name!r} is not a known topology: give CHIP:AxB[xC] with CHIP one of "
                        f"{', '.join(TPU_CHIPS)} (e.g. {', '.join(EXAMPLES[:-2])}), local for this host's "
                        "devices, or cpu:N for N virtual CPU devices")


def have_libtpu() -> bool:
    return importlib.util.find_spec("libtpu") is not None


def tpu_environment() -> None:
    """Settings for libtpu on a host without TPUs: no metadata-server queries, and no exclusive lock
    (other JAX processes on the machine load libtpu too). Must run before JAX initialises backends."""
    os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")


def cpu_flag(n: int) -> str:
    return f"--xla_force_host_platform_device_count={n}"


def get_topology(name: str, slices: int = 1) -> Topology:
    """The devices of `name` (x `slices`). cpu:N needs XLA_FLAGS=--xla_force_host_platform_device_count=N
    set before JAX starts (`radial compile` re-runs itself with it)."""
    parsed = parse_topology(name)
    if slices < 1:
        raise TopologyError(f"--slices must be >= 1, got {slices}")
    if parsed.chip == "local":
        if slices != 1:
            raise TopologyError("--slices applies to TPU slice names only; `local` is this host's devices")
        devices = jax.devices()
        return Topology(name, chip_for_device_kind(devices[0].device_kind), list(devices), 1)
    if parsed.chip == "cpu":
        n = parsed.dims[0]
        if slices != 1:
            raise TopologyError("--slices applies to TPU topologies only; for cpu:N give the device count")
        devices = jax.devices("cpu")
        if len(devices) != n:
            raise TopologyError(f"--topology {name} needs {n} CPU devices but JAX has {len(devices)}: set "
                                f"XLA_FLAGS={cpu_flag(n)} before JAX starts (`radial compile` does this "
                                "itself)")
        return Topology(name, None, list(devices), 1)
    if not have_libtpu():
        raise TopologyError(f"--topology {name} compiles with the TPU compiler, which is not installed: "
                            "pip install '.[tpu]' (or pip install \"jax[tpu]\"); cpu:N works without it")
    tpu_environment()
    from jax.experimental import topologies

    try:
        desc = topologies.get_topology_desc(platform="tpu", topology_name=name.strip().lower(),
                                            num_slices=slices)
    except Exception as e:  # libtpu rejects shapes a chip has no slice of
        raise TopologyError(f"--topology {name}: libtpu has no such slice ({str(e).splitlines()[0]}); "
                            f"known examples: {', '.join(EXAMPLES)}") from None
    return Topology(name, CHIPS[parsed.chip], list(desc.devices), slices)
