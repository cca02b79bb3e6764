"""Resuming under a changed config: refuse what would break the run, record what is safe.

A checkpoint stores the config it was trained with. Keys that fix the parameters' shapes or what the
model computes and reads must match, or resuming would fail or silently train a different run: the
model, router and routing sections, the init seed, and the data section (tokenizer, sequence length,
batch size, training data and its order) but for where files live and the eval data. Everything else
(train.steps and the schedule, optimizer settings, intervals, checkpoints kept, the mesh) may change;
each change is printed and appended to `<run_dir>/config_changes.jsonl`. `run.dir` itself is not
compared (a run may move).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from radial_jax.config import Config, ConfigError

# Keys (or whole sections, ending in ".") that a resumed run must keep, and the exceptions: data
# keys that only say where things are or what to evaluate on.
FIXED = ("model.", "router.", "routing.", "data.", "run.seed")
FREE = ("data.cache_dir", "data.valid_files", "data.tfds_data_dir", "data.tfds_valid_split")

# Where the run lives is how we found the checkpoint, not a change to the run (it may be moved).
IGNORED = ("run.dir",)

_ABSENT = "<absent>"


def flatten(cfg: dict, prefix: str = "") -> dict[str, Any]:
    """{"model": {"d_model": 8}} -> {"model.d_model": 8}."""
    out: dict[str, Any] = {}
    for k, v in cfg.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def is_fixed(key: str) -> bool:
    return key not in FREE and any(key.startswith(f) if f.endswith(".") else key == f for f in FIXED)


def diff(old: dict, new: dict) -> dict[str, tuple[Any, Any]]:
    """key -> (old value, new value) for every leaf of `new` that differs from `old` (`<absent>` for
    a key `old` lacks); keys only `old` has (since removed from the schema) are ignored."""
    a = flatten(old)
    return {k: (a.get(k, _ABSENT), v) for k, v in flatten(new).items()
            if a.get(k, _ABSENT) != v and k not in IGNORED}


def _show(v: Any) -> str:
    return v if v is _ABSENT else json.dumps(v)


def check_resume(old: dict, new: dict, *, step: int, where: Path) -> dict[str, tuple[Any, Any]]:
    """The safe changes from the config saved at `step` (in `where`) to `new`; ConfigError listing
    every fixed key that differs, with its old and new value, if there is any."""
    changes = diff(old, new)
    # A key the old schema lacked is only a change if someone set it away from its default.
    defaults = flatten(Config().to_dict())
    changes = {k: v for k, v in changes.items()
               if not (v[0] is _ABSENT and defaults.get(k, _ABSENT) == v[1])}
    fixed = {k: v for k, v in changes.items() if is_fixed(k)}
    if fixed:
        lines = "\n".join(f"  {k}: {_show(o)} (checkpoint) -> {_show(n)} (now)"
                          for k, (o, n) in fixed.items())
        raise ConfigError(
            f"cannot resume the checkpoint at step {step} in {where}: the config changes "
            f"{len(fixed)} key{'s' if len(fixed) > 1 else ''} that fix the model's shapes or the data it "
            f"trains on:\n{lines}\nSet them back to the checkpoint's values to resume (its config is "
            f"saved with it), or set run.dir to a new folder to start a fresh run.")
    return changes


def record_changes(run_dir: Path, step: int, changes: dict[str, tuple[Any, Any]]) -> Path:
    """Append one line {"step", "time", "changes": {key: [old, new]}} to config_changes.jsonl."""
    path = run_dir / "config_changes.jsonl"
    row = {"step": step, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
           "changes": {k: [o if o is not _ABSENT else None, n] for k, (o, n) in changes.items()}}
    with open(path, "a") as fh:
        fh.write(json.dumps(row) + "\n")
    return path


def describe_changes(changes: dict[str, tuple[Any, Any]]) -> str:
    return "; ".join(f"{k}: {_show(o)} -> {_show(n)}" for k, (o, n) in changes.items())
