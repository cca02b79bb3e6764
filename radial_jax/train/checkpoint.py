"""Orbax checkpoints of a run: train state, the grain iterator's position, and the resolved config.

Layout: <run_dir>/checkpoints/<step>/{state, data, config}. Saving is asynchronous (the device-to-host
copy happens before `save` returns, so the next step may donate the buffers). Restoring takes an
abstract train state whose shardings say where each array goes, so a run can resume on another mesh;
`restore_params` reads the parameters alone (how radial_jax.io loads a run's model). The data
position is saved by each process for its data streams and merged on restore, so a run saved by N
processes resumes on any number of processes that divides its stream count (data/pipeline.py).

Every step carries a sha256 manifest of all its files (train/manifest.py), written by process 0
after every process has written its files and before orbax renames the step into place; restoring
checks it first. Damage (flipped bytes, truncated or missing files, a missing item, NaN/inf values)
becomes a `CheckpointError` naming the step. A save interrupted by a killed process leaves a
temporary folder that orbax never lists as a checkpoint and deletes when training opens the
checkpoints again (`cleanup_tmp_directories`). A state holding NaN/inf is never saved. A save that
cannot write (disk full, read-only, no permission) becomes a `CheckpointWriteError` naming the folder
and the bytes needed; the previous checkpoints are untouched (orbax deletes old steps only after a
new one is complete).
"""

from __future__ import annotations

import contextlib
import errno
import gc
import json
import logging
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Any

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from radial_jax.data.pipeline import merge_positions
from radial_jax.errors import UserError
from radial_jax.train.manifest import has_manifest, verify_manifest, write_manifest
from radial_jax.train.metrics import human_bytes, say
from radial_jax.train.nonfinite import NonFiniteError, all_finite
from radial_jax.train.step import TrainState

ITEMS = ("state", "data", "config")


class CheckpointError(UserError, RuntimeError):
    """A checkpoint cannot be used; the message names its step and folder and what to do."""


class CheckpointWriteError(UserError, OSError):
    """A checkpoint could not be written (disk full, read-only, no permission); the message names the
    folder, the bytes one checkpoint needs and the newest checkpoint that is still intact."""


# errno values (and their texts, as tensorstore reports them) meaning "this folder cannot take it".
_WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG)
_WRITE_TEXTS = tuple(os.strerror(n) for n in _WRITE_ERRNOS)


def write_failure(e: BaseException) -> str | None:
    """Why `e` (or an error it was raised from) says the disk refused a write, or None."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in _WRITE_ERRNOS:
            return e.strerror + (f": {e.filename}" if e.filename else "")
        text = next((t for t in _WRITE_TEXTS if t in str(e)), None)
        if text:
            return text
        e = e.__cause__ or e.__context__
    return None


def _reason(e: BaseException) -> str:
    """The most specific line of an orbax/tensorstore error chain, without the long store specs."""
    while e.__cause__ is not None:
        e = e.__cause__
    text = (str(e).strip().splitlines() or [type(e).__name__])[0]
    text = text.split(" See full TensorStore details")[0].strip("'\" ")
    return (text[:240] + "...") if len(text) > 240 else text


@contextlib.contextmanager
def _quiet_failed_reads():
    """Orbax leaves its failed read tasks for the garbage collector, which reports each one; the
    CheckpointError says it once."""
    log, hook = logging.getLogger("asyncio"), sys.unraisablehook
    level = log.level
    log.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        sys.unraisablehook = lambda unraisable: None
        try:
            gc.collect()
        finally:
            sys.unraisablehook = hook
            log.setLevel(level)


class Checkpointer:
    def __init__(self, directory: str | Path, *, keep: int, async_save: bool = True,
                 read_only: bool = False):
        self.directory = Path(directory).absolute()
        # read_only: never creates the folder (orbax's own read_only mode warns on every open).
        self.read_only = read_only
        self.async_save = async_save
        self._pending: int | None = None  # the step being saved in the background
        self._bytes = 0  # what the last state saved holds
        # A writer deletes the folders of saves that never completed (the process died in them).
        # The manifest is written on process 0 once every process's files are in, before the rename.
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=not read_only, cleanup_tmp_directories=not read_only,
            enable_async_checkpointing=async_save,
            async_options=ocp.AsyncOptions(post_finalization_callback=self._seal_pending)
            if async_save else None)
        self._mgr = ocp.CheckpointManager(self.directory, options=options, item_names=ITEMS)

    def latest_step(self) -> int | None:
        return self._mgr.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._mgr.all_steps())

    def complete_steps(self) -> list[int]:
        """Steps whose save has finished (renamed into place); `all_steps` also lists the step being
        saved in the background."""
        return [s for s in self.all_steps() if (self.directory / str(s)).is_dir()]

    def save(self, step: int, state: TrainState, data_iter: Any, config: dict) -> None:
        """Start saving `step` (asynchronously); NonFiniteError, writing nothing, if `state` holds
        NaN/inf."""
        if self.read_only:
            raise ValueError(f"{self.directory} was opened read-only")
        if not all_finite(state):
            latest = self.latest_step()
            raise NonFiniteError(
                f"the train state at step {step} holds NaN or inf values; no checkpoint was written. "
                + (f"The last good checkpoint is {self.directory / str(latest)}." if latest else
                   "There is no earlier checkpoint."))
        args = {"state": ocp.args.StandardSave(state), "config": ocp.args.JsonSave(config)}
        if data_iter is not None:
            args["data"] = grain.checkpoint.CheckpointSave(data_iter)
        self.wait()  # a failure of the previous save is reported as that step's
        self._bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state))
        self._pending = step
        with self._writing(step):
            self._mgr.save(step, args=ocp.args.Composite(**args), force=True)
            if not self.async_save:
                self._seal(self.directory / str(step))
                self._pending = None

    def _seal_pending(self) -> None:
        """orbax's post-finalization hook (process 0, all files written, not yet renamed)."""
        step = self._pending
        tmp = [p for p in self.directory.glob(f"{step}.orbax-checkpoint-tmp*") if p.is_dir()]
        self._seal(tmp[0] if len(tmp) == 1 else self.directory / str(step))

    def _seal(self, step_dir: Path) -> None:
        if jax.process_index() == 0:
            write_manifest(step_dir)

    @contextlib.contextmanager
    def _writing(self, step: int):
        """Turn a refused write into a CheckpointWriteError naming the folder and the room needed."""
        try:
            yield
        except Exception as e:  # orbax and tensorstore wrap OS errors in many types
            why = write_failure(e)
            if why is None:
                raise
            self._pending = None
            if jax.process_index() == 0:  # free what the failed save wrote
                for tmp in self.directory.glob(f"{step}.orbax-checkpoint-tmp*"):
                    shutil.rmtree(tmp, ignore_errors=True)
            try:
                free = f"{human_bytes(shutil.disk_usage(self.directory).free)} free there"
            except OSError:
                free = "its free space is unknown"
            intact = [s for s in self.all_steps() if s != step]
            prev = (f"The newest complete checkpoint, {self.directory / str(max(intact))}, is intact"
                    if intact else "No earlier checkpoint exists")
            raise CheckpointWriteError(
                f"could not write the checkpoint of step {step} to {self.directory}: {why}. One "
                f"checkpoint needs about {human_bytes(self._bytes)} ({free}). {prev}; free some space "
                "(or fix the folder's permissions) and run the same command again to resume."
            ) from None

    def damaged(self, step: int, why: str) -> str:
        return f"checkpoint {self.directory / str(step)} (step {step}) is damaged: {why}"

    def missing_items(self, step: int) -> list[str]:
        """Items of `step` whose folder is gone or empty (a checkpoint always has all of ITEMS)."""
        d = self.directory / str(step)
        return [i for i in ITEMS if not (d / i).is_dir() or not any((d / i).iterdir())]

    def restore(self, step: int, abstract_state: TrainState, data_iter: Any = None) -> TrainState:
        """Restore into `abstract_state`'s shapes/shardings; moves `data_iter` to the saved position.

        CheckpointError (naming the step) if an item is missing, a file cannot be read, or a value
        is NaN/inf; DataError if `data_iter` reads other data streams than the checkpoint saved."""
        self._check(step)
        if data_iter is not None:
            position = self._data_position(step)
            # grain's handler hands iterators that are not grain datasets their state as JSON bytes.
            data_iter.set_state(position if isinstance(data_iter, grain.DatasetIterator)
                                else json.dumps(position).encode())
        return self._read_state(step, {"state": ocp.args.StandardRestore(abstract_state)})

    def _data_position(self, step: int) -> dict:
        """The global data position of `step`: the streams every process saved (grain's
        `process_I-of-N.json`, one file per process) merged, so any number of processes that
        divides the stream count resumes exactly from it."""
        files = sorted((self.directory / str(step) / "data").glob("process_*-of-*.json"))
        try:
            saved = [(*map(int, re.findall(r"\d+", f.name)[-2:]), json.loads(f.read_text()))
                     for f in files]
            position = merge_positions(saved)
        except (OSError, ValueError) as e:  # json and DataError are ValueErrors
            raise CheckpointError(self.damaged(step, f"its data position: {_reason(e)}")) from e
        n = position["stream_count"]
        missing = sorted(set(range(n)) - set(map(int, position["streams"])))
        if missing:
            raise CheckpointError(self.damaged(
                step, f"its data position lacks stream{'s' if len(missing) > 1 else ''} "
                f"{', '.join(map(str, missing))} of {n} ({len(files)} process files in data/)"))
        return position

    def data_streams(self) -> int | None:
        """The number of data streams of the newest checkpoint whose data position reads (a
        resumed run keeps them), or None if there is none."""
        for step in sorted(self.all_steps(), reverse=True):
            try:
                return self._data_position(step)["stream_count"]
            except CheckpointError:
                pass
        return None

    def restore_params(self, step: int, abstract_params: Any) -> Any:
        """Only the parameters of `step`, into `abstract_params`' shapes/shardings: an orbax partial
        restore, so the optimizer state is never read. CheckpointError as `restore`."""
        target = {"params": abstract_params}
        args = {"state": ocp.args.PyTreeRestore(
            item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
            partial_restore=True)}
        self._check(step)
        return self._read_state(step, args)["params"]

    def _check(self, step: int) -> None:
        """CheckpointError naming the step if an item is missing or a file differs from its
        manifest."""
        missing = self.missing_items(step)
        if missing:
            raise CheckpointError(self.damaged(step, f"missing {', '.join(missing)}"))
        why = self.verify(step)
        if why:
            raise CheckpointError(self.damaged(step, why))

    def _read_state(self, step: int, args: dict) -> Any:
        """The restored "state" item; CheckpointError naming the step if it is unreadable or not
        finite."""
        try:
            with _quiet_failed_reads():
                state = self._mgr.restore(step, args=ocp.args.Composite(**args))["state"]
        except Exception as e:  # orbax, tensorstore and json raise many types; all mean "damaged"
            raise CheckpointError(self.damaged(step, _reason(e))) from e
        if not all_finite(state):
            raise CheckpointError(self.damaged(step, "it holds NaN or inf values"))
        return state

    def verify(self, step: int) -> str | None:
        """What differs from the step's sha256 manifest, or None; process 0 reads the files and
        tells the others (on a shared filesystem they would all read the same bytes)."""
        why = verify_manifest(self.directory / str(step)) if jax.process_index() == 0 else None
        if jax.process_count() > 1:
            bad = multihost_utils.broadcast_one_to_all(np.int32(why is not None))
            if bad and why is None:
                why = "its files differ from its sha256 manifest (process 0 names them)"
        return why

    def sealed(self, step: int) -> bool:
        """Whether `step` has a checksum manifest (steps saved before manifests have none)."""
        return has_manifest(self.directory / str(step))

    def restore_config(self, step: int) -> dict:
        try:
            return self._mgr.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))[
                "config"]
        except Exception as e:
            raise CheckpointError(self.damaged(step, f"its config: {_reason(e)}")) from e

    def newest_config(self) -> tuple[int, dict] | None:
        """(step, saved config) of the newest checkpoint whose config reads back, or None."""
        for step in sorted(self.all_steps(), reverse=True):
            if "config" not in self.missing_items(step):
                try:
                    return step, self.restore_config(step)
                except CheckpointError:
                    pass
        return None

    def restore_newest(self, abstract_state: TrainState, data_iter: Any = None
                       ) -> tuple[int, TrainState | None, list[int]]:
        """(step, state, damaged steps) from the newest checkpoint that restores, trying older ones
        (and saying why) when a newer one is damaged; (0, None, []) if there are none.

        CheckpointError if every checkpoint is damaged."""
        damaged: dict[int, str] = {}
        for step in sorted(self.all_steps(), reverse=True):
            try:
                return step, self.restore(step, abstract_state, data_iter), list(damaged)
            except CheckpointError as e:
                damaged[step] = str(e)
                say(f"{e}; trying the previous checkpoint")
        if damaged:
            raise CheckpointError(
                f"no intact checkpoint in {self.directory}:\n" + "\n".join(f"  {m}" for m in damaged.values())
                + f"\nMove {self.directory} aside to start the run over, or restore it from a backup.")
        return 0, None, []

    def set_aside(self, steps: list[int]) -> Path:
        """Move damaged step folders to `<checkpoints>.damaged/` (kept for inspection), so a resumed
        run can save those steps again."""
        dest = self.directory.with_name(self.directory.name + ".damaged")
        if jax.process_index() == 0:
            dest.mkdir(exist_ok=True)
            for step in steps:
                target, n = dest / str(step), 1
                while target.exists():
                    target, n = dest / f"{step}.{n}", n + 1
                shutil.move(str(self.directory / str(step)), str(target))
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices("radial_jax: damaged checkpoints set aside")
        self._mgr.reload()
        return dest

    def wait(self) -> None:
        """Block until the background save is complete; CheckpointWriteError if it could not write."""
        step = self._pending
        with self._writing(step) if step is not None else contextlib.nullcontext():
            self._mgr.wait_until_finished()
        self._pending = None

    def close(self) -> None:
        self.wait()
        self._mgr.close()

