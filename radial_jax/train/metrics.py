"""Where metrics go: TensorBoard event files (no TensorFlow), metrics.jsonl, and the console."""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.summary.writer.event_file_writer import EventFileWriter


class MetricWriter:
    """Writes each logged step to TensorBoard and as one JSON line; only process 0 writes."""

    def __init__(self, run_dir: str | Path, *, enabled: bool = True):
        self.enabled = enabled
        self.run_dir = Path(run_dir)
        if enabled:
            self._tb = EventFileWriter(str(self.run_dir / "tensorboard"), flush_secs=10)
            self._jsonl = open(self.run_dir / "metrics.jsonl", "a", buffering=1)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        clean = {k: float(v) for k, v in values.items()}
        summary = summary_pb2.Summary(value=[
            summary_pb2.Summary.Value(tag=k, simple_value=v) for k, v in clean.items()])
        self._tb.add_event(event_pb2.Event(wall_time=time.time(), step=int(step), summary=summary))
        row = {"step": int(step), **{k: (v if math.isfinite(v) else str(v)) for k, v in clean.items()}}
        self._jsonl.write(json.dumps(row) + "\n")

    def restart_at(self, step: int) -> None:
        """A resumed run continues after `step`: TensorBoard drops what an earlier attempt logged
        after it (a START session log purges steps >= step + 1)."""
        if self.enabled:
            log = event_pb2.SessionLog(status=event_pb2.SessionLog.START)
            self._tb.add_event(event_pb2.Event(wall_time=time.time(), step=int(step) + 1,
                                               session_log=log))

    def image(self, step: int, tag: str, png: bytes, *, height: int, width: int) -> None:
        if not self.enabled:
            return
        img = summary_pb2.Summary.Image(height=height, width=width, colorspace=4,
                                        encoded_image_string=png)
        summary = summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=tag, image=img)])
        self._tb.add_event(event_pb2.Event(wall_time=time.time(), step=int(step), summary=summary))

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
                     ("perf/tokens_per_s", "{:,.0f} tok/s")):
        if key in values:
            parts.append(fmt.format(values[key]))
    if eta_s is not None:
        parts.append(f"eta {format_eta(eta_s)}")
    return " | ".join(parts)


def say(msg: str) -> None:
    """A line of the run log; in a multi-process run only process 0 prints."""
    import jax

    if jax.process_index() == 0:
        print(msg, flush=True, file=sys.stdout)
