"""Checks that fail before anything compiles: a run dir that cannot be written, or lacks the room
for a checkpoint. (Data paths are checked by the data sources, which raise `DataError`.)"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from radial_jax.errors import UserError
from radial_jax.train.metrics import say


class RunDirError(UserError, RuntimeError):
    """The run directory cannot be used; the message names it and says what to do."""


def prepare_run_dir(path: str | Path) -> Path:
    """Create `run.dir` if needed and prove it writable by writing to it (root ignores permission
    bits, so `os.access` alone can say yes where a write would fail, and the reverse)."""
    run_dir = Path(path).expanduser()
    fix = "choose another with run.dir=PATH, or fix its permissions"
    blocker = next((p for p in [run_dir, *run_dir.parents] if p.exists()), None)
    if blocker is not None and not blocker.is_dir():
        raise RunDirError(f"run.dir {run_dir} cannot be created: {blocker} is a file, not a folder; "
                          "choose another with run.dir=PATH")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RunDirError(f"run.dir {run_dir} cannot be created ({e.strerror}); {fix}") from None
    for d in [run_dir] + [p for p in (run_dir / "checkpoints",) if p.is_dir()]:
        if not os.access(d, os.W_OK | os.X_OK, effective_ids=os.access in os.supports_effective_ids):
            raise RunDirError(f"run.dir {run_dir}: {d} is not writable (permissions "
                              f"{oct(d.stat().st_mode & 0o777)}); {fix}")
        probe = d / f".write_test.{os.uname().nodename}.{os.getpid()}"  # per process (shared run.dir)
        try:
            probe.write_text("ok")
            probe.unlink()
        except OSError as e:
            raise RunDirError(f"run.dir {run_dir}: cannot write in {d} ({e.strerror}); {fix}") from None
    return run_dir


def check_free_space(run_dir: Path, checkpoint_bytes: int, keep: int) -> None:
    """Refuse to start without room for one checkpoint (with 10% to spare); warn below `keep` + 1."""
    free = shutil.disk_usage(run_dir).free
    need = int(checkpoint_bytes * 1.1)
    mb = lambda n: f"{n / 1e6:,.0f} MB" if n >= 1e6 else f"{n / 1e3:,.1f} kB"
    if free < need:
        raise RunDirError(f"run.dir {run_dir} has {mb(free)} free, but one checkpoint needs about "
                          f"{mb(checkpoint_bytes)}; free some space or choose another run.dir")
    if free < need * (keep + 1):
        say(f"warning: run.dir {run_dir} has {mb(free)} free, room for fewer than the "
            f"train.keep_checkpoints={keep} checkpoints (+1 being written) of about "
            f"{mb(checkpoint_bytes)} each")
