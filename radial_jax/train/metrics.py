"""Where metrics go: TensorBoard event files (tensorboardX, no TensorFlow), metrics.jsonl, and the
console."""

from __future__ import annotations

import io
import json
import math
import sys
import time
from pathlib import Path

import jax
import numpy as np
from PIL import Image


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
            self._jsonl = open(self.run_dir / "metrics.jsonl", "a", buffering=1)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        clean = {k: float(v) for k, v in values.items()}
        for k, v in clean.items():
            self._tb.add_scalar(k, v, int(step))
        row = {"step": int(step), **{k: (v if math.isfinite(v) else str(v)) for k, v in clean.items()}}
        self._jsonl.write(json.dumps(row) + "\n")

    def image(self, step: int, tag: str, png: bytes) -> None:
        if self.enabled:
            rgb_HxWx3 = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
            self._tb.add_image(tag, rgb_HxWx3, int(step), dataformats="HWC")

    def flush(self) -> None:
        if self.enabled:
            self._tb.flush()
            self._jsonl.flush()

    def close(self) -> None:
        if self.enabled:
            self._tb.close()
            self._jsonl.close()


def read_metrics(run_dir: str | Path) -> list[dict]:
    """All rows of <run_dir>/metrics.jsonl, in order."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def drop_rows_after(run_dir: str | Path, step: int) -> int:
    """Remove the rows for steps after `step` from metrics.jsonl (logged by an attempt that stopped
    before checkpointing them; a resumed run logs them again). Returns how many were removed."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return 0
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    keep = []
    for line in lines:
        try:
            if json.loads(line)["step"] <= step:
                keep.append(line)
        except (ValueError, KeyError, TypeError):  # a line cut short by a crash
            pass
    if len(keep) < len(lines):
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
