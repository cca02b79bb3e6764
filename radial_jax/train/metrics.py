"""Where metrics go: TensorBoard event files (tensorboardX, no TensorFlow), metrics.jsonl, and the
console.

metrics.jsonl is appended one whole line per write call; a write the disk refuses is cut back to the
last whole line (and raises MetricsWriteError), and a line torn by a crash is dropped on resume and
skipped by `read_metrics`.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import sys
import time
from pathlib import Path

import jax
import numpy as np
from PIL import Image

from radial_jax.errors import UserError


class MetricsWriteError(UserError, OSError):
    """metrics.jsonl could not be appended to; the message names the file and why."""


def human_bytes(n: float) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:,.1f} {unit}"
    return f"{int(n)} B"


def append_line(path: Path, fd: int, line: str) -> None:
    """Append `line` with one write; on a short or failed write cut the file back to where it was."""
    data = line.encode()
    start = os.lseek(fd, 0, os.SEEK_END)
    try:
        if os.write(fd, data) != len(data):
            raise OSError(28, os.strerror(28))  # a short write: the disk is full
    except OSError as e:
        with contextlib.suppress(OSError):
            os.ftruncate(fd, start)
        raise MetricsWriteError(f"could not append to {path}: {e.strerror}; free some space (or fix "
                                "its permissions) and run the same command again to resume") from None


class MetricWriter:
    """Writes each logged step to TensorBoard and as one JSON line; only process 0 writes.

    A run resumed after `start_step` logs the later steps again, so what an earlier attempt logged
    after it is dropped from both: TensorBoard hides it (tensorboardX's `purge_step`) and
    metrics.jsonl loses those rows (`dropped` says how many)."""

    def __init__(self, run_dir: str | Path, *, enabled: bool = True, start_step: int = 0):
        self.enabled = enabled
        self.run_dir = Path(run_dir)
        self.dropped = 0
        if enabled:
            # Deferred: tensorboardX imports torch whenever torch is installed; only training needs it.
            from tensorboardX import SummaryWriter

            self.dropped = drop_rows_after(self.run_dir, start_step)
            # Named by the time in ns: an attempt resumed within the same second neither overwrites
            # the last one's file nor sorts before it (TensorBoard reads the files in name order).
            self._tb = SummaryWriter(str(self.run_dir / "tensorboard"), purge_step=start_step + 1,
                                     flush_secs=10, filename_suffix=f".{time.time_ns()}")
            self._jsonl_path = self.run_dir / "metrics.jsonl"
            self._jsonl = os.open(self._jsonl_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        clean = {k: float(v) for k, v in values.items()}
        for k, v in clean.items():
            self._tb.add_scalar(k, v, int(step))
        row = {"step": int(step), **{k: (v if math.isfinite(v) else str(v)) for k, v in clean.items()}}
        append_line(self._jsonl_path, self._jsonl, json.dumps(row) + "\n")

    def image(self, step: int, tag: str, png: bytes) -> None:
        if self.enabled:
            rgb_HxWx3 = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
            self._tb.add_image(tag, rgb_HxWx3, int(step), dataformats="HWC")

    def flush(self) -> None:
        if self.enabled:
            self._tb.flush()

    def close(self) -> None:
        if self.enabled:
            self._tb.close()
            if self._jsonl is not None:
                os.close(self._jsonl)
                self._jsonl = None


def read_metrics(run_dir: str | Path) -> list[dict]:
    """All rows of <run_dir>/metrics.jsonl, in order (a last line torn by a crash is left out)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    rows = []
    for i, line in enumerate(lines):
        try:
            rows.append(json.loads(line))
        except ValueError:
            if i < len(lines) - 1:
                raise
    return rows


def drop_rows_after(run_dir: str | Path, step: int) -> int:
    """Remove the rows for steps after `step` from metrics.jsonl (logged by an attempt that stopped
    before checkpointing them; a resumed run logs them again) and a line torn by a crash. Returns how
    many were removed."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return 0
    text = path.read_text()
    lines = [line for line in text.splitlines() if line.strip()]
    keep = []
    for line in lines:
        try:
            if json.loads(line)["step"] <= step:
                keep.append(line)
        except (ValueError, KeyError, TypeError):  # a line cut short by a crash
            pass
    if len(keep) < len(lines) or (text and not text.endswith("\n")):  # no row glued to a torn one
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(line + "\n" for line in keep))
        tmp.replace(path)
    return len(lines) - len(keep)


def format_eta(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def console_line(step: int, total: int, values: dict[str, float], eta_s: float | None) -> str:
    """One progress line: step, loss and the throughput figures a user watches."""
    parts = [f"step {step:>{len(str(total))}}/{total}"]
    for key, fmt in (("train/loss", "loss {:.4f}"), ("eval/loss", "eval {:.4f}"),
                     ("train/grad_norm", "gnorm {:.2f}"), ("train/lr", "lr {:.2e}"),
                     ("route/active_depth", "depth {:.2f}"), ("route/drop_rate", "drop {:.3f}"),
                     ("perf/tokens_per_s", "{:,.0f} tok/s"), ("perf/mfu", "mfu {:.1%}")):
        if key in values:
            parts.append(fmt.format(values[key]))
    if eta_s is not None:
        parts.append(f"eta {format_eta(eta_s)}")
    return " | ".join(parts)


def say(msg: str) -> None:
    """A line of the run log; in a multi-process run only process 0 prints."""
    if jax.process_index() == 0:
        print(msg, flush=True, file=sys.stdout)
