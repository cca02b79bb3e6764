"""SIGTERM/SIGINT during training: finish the step, save a checkpoint, exit as a scheduler expects.

The first signal sets a flag and, in a multi-process run, tells every process through JAX's
preemption sync service (parallel/distributed.py); `should_stop(step)` is then True on every
process at one agreed step (a single process: the step during which the signal came). The loop
checkpoints that step and raises `Interrupted`, whose exit status is 128 + the signal number (143
for SIGTERM, 130 for SIGINT; processes that were not signalled themselves exit 143, as a preempted
job's would). A second signal exits at once without saving; the newest complete checkpoint stays
usable (orbax writes into a temporary folder and renames it only when the save is complete).
"""

from __future__ import annotations

import os
import signal

import jax

from radial_jax.parallel.distributed import notify_preemption, preemption_note, reached_preemption
from radial_jax.train.metrics import say

_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Interrupted(SystemExit):
    """Training stopped by a signal after checkpointing `step`; exit status 128 + signal number."""

    def __init__(self, signum: int, step: int):
        super().__init__(128 + signum)
        self.signum, self.step = signum, step


class StopRequest:
    """Context manager: turns the first SIGTERM/SIGINT into a stop at an agreed step; the second
    exits at once."""

    def __init__(self):
        self.signum: int | None = None
        self._old: dict = {}

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else ""

    def __enter__(self) -> StopRequest:
        for sig in _SIGNALS:
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def _handle(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if self.signum is not None:
            say(f"\nreceived {name} again: exiting now without saving; the newest complete checkpoint "
                "is kept")
            os._exit(128 + signum)
        self.signum = signum
        notify_preemption(f"{name} to process {jax.process_index()}")
        say(f"\nreceived {name}: finishing this step, then saving a checkpoint "
            f"(send {name} again to exit at once without saving)")

    def should_stop(self, step: int) -> bool:
        """Whether to checkpoint `step` and stop; the same answer on every process. Call it once
        per step, every step."""
        agreed = reached_preemption(step) if jax.process_count() > 1 else None
        if agreed is None:  # one process, or no sync service: this process's own signal decides
            return self.signum is not None
        if not agreed:
            return False
        if self.signum is None:  # another process was signalled (or JAX's own handler caught it)
            self.signum = signal.SIGTERM
        return True

    def reason(self) -> str:
        """What stopped the run, for the log: "SIGTERM", or "SIGTERM to process 1"."""
        if jax.process_count() == 1:
            return self.name
        return preemption_note() or "a preemption notice (SIGTERM)"

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            # None: the old handler was not Python's (JAX's preemption notifier); leave the default.
            signal.signal(sig, old if old is not None else signal.SIG_DFL)
        self._old.clear()
