"""Joining the processes of a multi-host run into one JAX runtime (`jax.distributed.initialize`).

Where the process layout comes from, first match wins:
  1. flags:       radial train --coordinator HOST:PORT --num-processes N --process-id I
  2. environment: RADIAL_COORDINATOR, RADIAL_NUM_PROCESSES, RADIAL_PROCESS_ID
  3. clusters JAX detects by itself: RADIAL_DISTRIBUTED=1 (or `--distributed`), a SLURM step of
     several tasks (SLURM_STEP_NUM_TASKS / SLURM_NTASKS > 1), a multi-worker TPU VM
     (TPU_WORKER_HOSTNAMES lists several hosts)
Otherwise the run is a single process and nothing is initialised. It must happen before JAX
touches a device; the `radial` command does it first thing.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

import jax

from radial_jax.config import ConfigError

ENV_COORDINATOR, ENV_NUM, ENV_ID = "RADIAL_COORDINATOR", "RADIAL_NUM_PROCESSES", "RADIAL_PROCESS_ID"


@dataclass(frozen=True)
class Launch:
    """How to join: explicit addresses, or None fields for JAX's own cluster detection."""

    source: str
    coordinator: str | None = None
    num_processes: int | None = None
    process_id: int | None = None


def _int(value: str | int, what: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{what}={value!r} must be an integer") from None


def resolve_launch(coordinator: str | None = None, num_processes: int | None = None,
                   process_id: int | None = None, *, auto: bool = False,
                   env: Mapping[str, str] | None = None) -> Launch | None:
    """The launch this process is part of, or None for a single-process run."""
    env = os.environ if env is None else env
    given = {"--coordinator": coordinator, "--num-processes": num_processes, "--process-id": process_id}
    source = "flags"
    if all(v is None for v in given.values()) and env.get(ENV_COORDINATOR):
        given = {ENV_COORDINATOR: env.get(ENV_COORDINATOR), ENV_NUM: env.get(ENV_NUM),
                 ENV_ID: env.get(ENV_ID)}
        source = "environment"
    if any(v is not None for v in given.values()):
        missing = [k for k, v in given.items() if v is None]
        if missing:
            raise ConfigError(f"a multi-process launch needs all of {', '.join(given)}; "
                              f"missing {', '.join(missing)}")
        host, num, pid = given.values()
        num, pid = _int(num, list(given)[1]), _int(pid, list(given)[2])
        if ":" not in str(host):
            raise ConfigError(f"coordinator {host!r} must be HOST:PORT, e.g. 10.0.0.2:1234")
        if not 0 <= pid < num:
            raise ConfigError(f"process id {pid} must be in [0, {num}) for {num} processes")
        return Launch(source, str(host), num, pid)
    if auto or env.get("RADIAL_DISTRIBUTED", "") not in ("", "0"):
        return Launch("auto")
    if _int(env.get("SLURM_STEP_NUM_TASKS") or env.get("SLURM_NTASKS") or 1, "SLURM_NTASKS") > 1:
        return Launch("slurm")
    if len([h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]) > 1:
        return Launch("tpu")
    return None


def initialize(launch: Launch | None) -> None:
    """`jax.distributed.initialize` for a multi-process launch; nothing for a single process."""
    if launch is None:
        return
    jax.distributed.initialize(coordinator_address=launch.coordinator,
                               num_processes=launch.num_processes, process_id=launch.process_id)

