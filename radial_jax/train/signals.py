"""SIGTERM/SIGINT during training: finish the step, save a checkpoint, exit as a scheduler expects.

The first signal sets a flag that the loop checks after each step; the loop then checkpoints that
step and raises `Interrupted`, whose exit status is 128 + the signal number (143 for SIGTERM, 130 for
SIGINT). A second signal exits at once without saving; the newest complete checkpoint stays usable
(orbax writes into a temporary folder and renames it only when the save is complete).
"""

from __future__ import annotations

import os
import signal

from radial_jax.train.metrics import say

_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Interrupted(SystemExit):
    """Training stopped by a signal after checkpointing `step`; exit status 128 + signal number."""

    def __init__(self, signum: int, step: int):
        super().__init__(128 + signum)
        self.signum, self.step = signum, step


class StopRequest:
    """Context manager: turns the first SIGTERM/SIGINT into `self.signum`; the second exits at once."""

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
        say(f"\nreceived {name}: finishing this step, then saving a checkpoint "
            f"(send {name} again to exit at once without saving)")

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()
