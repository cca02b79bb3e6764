"""Joining the processes of a multi-host run into one JAX runtime (`jax.distributed.initialize`).

Where the process layout comes from, first match wins:
  1. flags:       radial train --coordinator HOST:PORT --num-processes N --process-id I
  2. environment: RADIAL_COORDINATOR, RADIAL_NUM_PROCESSES, RADIAL_PROCESS_ID
  3. clusters JAX detects by itself: RADIAL_DISTRIBUTED=1 (or `--distributed`), a SLURM step of
     several tasks (SLURM_STEP_NUM_TASKS / SLURM_NTASKS > 1), a multi-worker TPU VM
     (TPU_WORKER_HOSTNAMES lists several hosts)
Otherwise the run is a single process and nothing is initialised. It must happen before JAX
touches a device; the `radial` command does it first thing.

Failures of other processes, through JAX's coordination service:
  - preemption: a process that gets SIGTERM/SIGINT publishes a notice (`notify_preemption`); JAX's
    preemption sync service then picks one step at which every process returns True from
    `reached_preemption`, so all of them save that same step.
  - a lost process: a process that stops sending heartbeats for RADIAL_HEARTBEAT_TIMEOUT seconds
    (default 100) is reported dead. Recoverability is on, so JAX does not abort the survivors
    itself; `PeerWatch` (and the train loop, when a collective fails) names the lost process and
    ends this one with `abandon`, which skips the shutdown barrier that would wait for it.
    Normal exits meet at a barrier first (`_leave_together`).
"""

from __future__ import annotations

import atexit
import datetime
import os
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import jax
from jax._src import distributed as _jax_distributed  # the coordination client: no public handle
from jax.experimental import multihost_utils

from radial_jax.config import ConfigError

ENV_COORDINATOR, ENV_NUM, ENV_ID = "RADIAL_COORDINATOR", "RADIAL_NUM_PROCESSES", "RADIAL_PROCESS_ID"
ENV_HEARTBEAT = "RADIAL_HEARTBEAT_TIMEOUT"
LOST_EXIT_CODE = 1
# The coordination-service key JAX's preemption notifier sets on SIGTERM: setting it starts the
# same sync protocol on every process. Ours names who was signalled, for the log.
_PREEMPTION_KEY, _NOTE_KEY = "RECEIVED_PREEMPTION_NOTICE", "radial_jax/preemption_note"


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


def heartbeat_timeout(env: Mapping[str, str] | None = None) -> int:
    """Seconds without a heartbeat after which a process counts as lost (RADIAL_HEARTBEAT_TIMEOUT)."""
    env = os.environ if env is None else env
    value = _int(env.get(ENV_HEARTBEAT, "100"), ENV_HEARTBEAT)
    if value < 1:
        raise ConfigError(f"{ENV_HEARTBEAT}={value} must be at least 1 (seconds)")
    return value


def initialize(launch: Launch | None) -> None:
    """`jax.distributed.initialize` for a multi-process launch; nothing for a single process."""
    if launch is None:
        return
    # A lost process must not abort the others before they can say which one it was (see above).
    jax.config.update("jax_enable_recoverability", True)
    timeout = heartbeat_timeout()
    jax.distributed.initialize(coordinator_address=launch.coordinator,
                               num_processes=launch.num_processes, process_id=launch.process_id,
                               heartbeat_timeout_seconds=timeout,
                               shutdown_timeout_seconds=max(timeout, 60))
    atexit.register(_leave_together, max(timeout, 60))  # runs before JAX's own shutdown


def _leave_together(timeout_s: int) -> None:
    """Exit in order: everyone meets at a barrier, then process 0 (which hosts the coordination
    service) waits for the others to disconnect before it goes. With recoverability on, JAX's
    shutdown no longer waits for this, and a process whose service is gone aborts on exit."""
    client = _client()
    if client is None:
        return
    try:
        client.wait_at_barrier("radial_jax/exit", timeout_in_ms=timeout_s * 1000)
    except Exception:  # noqa: BLE001 - a process is gone or took another path: leave anyway
        return
    if jax.process_index() == 0:
        deadline = time.monotonic() + timeout_s
        while len(lost_processes()) < jax.process_count() - 1 and time.monotonic() < deadline:
            time.sleep(0.05)


def _client():
    return _jax_distributed.global_state.client


def notify_preemption(note: str) -> None:
    """Tell every process that this one is being stopped (safe to call when others did already)."""
    client = _client()
    if client is None:
        return
    for key, value in ((_NOTE_KEY, note),
                       (_PREEMPTION_KEY, datetime.datetime.now(datetime.timezone.utc).isoformat())):
        try:
            client.key_value_set(key, value)
        except Exception:  # noqa: BLE001 - ALREADY_EXISTS: another process told them first
            pass


def preemption_note() -> str | None:
    """Who was signalled (as `notify_preemption` recorded it), or None."""
    client = _client()
    if client is None:
        return None
    try:
        return client.key_value_try_get(_NOTE_KEY)
    except Exception:  # noqa: BLE001 - NOT_FOUND: signalled outside our handler (JAX's own)
        return None


def reached_preemption(step: int) -> bool | None:
    """True on every process at the same step once any of them was preempted; call it every step.
    None where JAX's preemption service is off (`jax_enable_preemption_service`)."""
    try:
        return multihost_utils.reached_preemption_sync_point(step)
    except RuntimeError:
        return None


def lost_processes() -> list[int]:
    """Processes the coordination service no longer hears from ([0] when the coordinator, process 0,
    cannot be reached itself)."""
    client, n = _client(), jax.process_count()
    if client is None or n == 1:
        return []
    try:
        live = client.get_live_nodes(list(range(n)))
    except Exception:  # noqa: BLE001 - the coordinator is gone
        return [0]
    return [i for i in range(n) if i not in live]


def wait_for_lost(timeout_s: float, every_s: float = 1.0) -> list[int]:
    """`lost_processes()` once it names any, or [] after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        lost = lost_processes()
        if lost or time.monotonic() >= deadline:
            return lost
        time.sleep(every_s)


def abandon(message: str, code: int = LOST_EXIT_CODE) -> None:
    """Print `error: message` and end the process now: no atexit shutdown barrier (it would wait
    for the lost process) and no hang in a collective that can never complete."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(code)


class PeerWatch:
    """A daemon thread that checks every `every_s` seconds whether a process was lost and, if so,
    calls `abandon(message(lost))`: the survivors stop even while blocked in a collective."""

    def __init__(self, message: Callable[[list[int]], str], every_s: float = 2.0):
        self._message, self._every = message, every_s
        self._stop, self._lock = threading.Event(), threading.Lock()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> PeerWatch:
        if jax.process_count() > 1 and _client() is not None:
            self._thread = threading.Thread(target=self._run, name="radial-peer-watch", daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self._every):
            lost = lost_processes()
            with self._lock:  # once __exit__ returns, never abandon (peers may exit normally)
                if lost and not self._stop.is_set():
                    abandon(self._message(lost))

    def __exit__(self, *exc) -> None:
        with self._lock:
            self._stop.set()

