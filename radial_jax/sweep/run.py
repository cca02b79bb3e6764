"""`radial sweep FILE`: train a sweep's arms one after another, as normal (resumable) run dirs.

Each arm trains in OUT/<arm name>. When an arm finishes, a marker `sweep_done.json` (its step
count, the seconds it trained over every invocation, the machine and the date) goes into its run
dir; a later `radial sweep` skips marked arms and resumes the others from their checkpoints through
the training loop's usual resume, so an interrupted sweep continues where it stopped. An attempt
that stops (SIGTERM, Ctrl-C, an error) adds its seconds to `sweep_time.json`, so the marker's total
counts them too (a SIGKILL loses that attempt's time). `--dry-run` prints what each arm costs;
`--emit` prints one `radial train` command per arm, to launch them elsewhere.
"""

from __future__ import annotations

import functools
import json
import os
import platform
import shlex
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import jax

from radial_jax.sweep.cost import arm_cost, short
from radial_jax.sweep.spec import Arm, Sweep
from radial_jax.train.loop import train

DONE = "sweep_done.json"
MANIFEST = "sweep.json"
SPENT = "sweep_time.json"  # seconds of earlier, stopped attempts at an arm


def plan_rows(sweep: Sweep, out: Path) -> list[dict]:
    """One row per arm: what it is and what it will cost."""
    rows = []
    for arm in sweep.arms:
        cfg = arm.load(out)
        c = arm_cost(cfg)
        rows.append({"arm": arm.name, "kind": cfg.model.kind, "params": c.params,
                     "train_flops_per_token": c.train_per_token,
                     "forward_flops_per_token": c.forward_per_token, "inference_max": c.inference_max,
                     "steps": arm.steps, "tokens": arm.steps * c.tokens_per_step,
                     "training_flops": c.training_flops(arm.steps)})
    return rows


def format_plan(rows: list[dict]) -> str:
    head = ["arm", "kind", "params", "train FLOPs/tok", "fwd FLOPs/tok", "infer max FLOPs/tok", "steps",
            "tokens", "train FLOPs"]
    body = [[r["arm"], r["kind"], f"{r['params']:,}", short(r["train_flops_per_token"]),
             short(r["forward_flops_per_token"]), short(r["inference_max"]), str(r["steps"]),
             short(r["tokens"]), f"{r['training_flops']:.3g}"] for r in rows]
    widths = [max(len(x) for x in col) for col in zip(head, *body, strict=True)]
    lines = ["  ".join(x.ljust(w) if i < 2 else x.rjust(w) for i, (x, w) in enumerate(zip(row, widths,
                                                                                        strict=True)))
             for row in [head, *body]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    note = ["FLOPs per token: train = forward + backward as compiled; fwd = one forward as compiled",
            "(radial: the slots its capacity allows); infer max = a token that runs every routed step.",
            "`radial report` gives radial inference FLOPs at the measured active depth."]
    return "\n".join(lines + ["", *note])


def emit_commands(sweep: Sweep, out: Path) -> list[str]:
    """One `radial train CONFIG overrides... run.dir=OUT/<arm>` line per arm."""
    return [shlex.join(["radial", "train", str(a.config), *a.overrides, f"run.dir={out / a.name}"])
            for a in sweep.arms]


def is_done(run_dir: Path, steps: int) -> bool:
    """Did this arm finish its `steps` in an earlier invocation? (a marker, written after training)"""
    marker = run_dir / DONE
    try:
        return json.loads(marker.read_text()).get("steps") == steps
    except (OSError, ValueError, AttributeError):
        return False


def write_manifest(sweep: Sweep, out: Path) -> None:
    """The arms in order with their group and budget, and a copy of the sweep file, for the report."""
    out.mkdir(parents=True, exist_ok=True)
    arms = [{"name": a.name, "group": a.group, "family": a.family, "seed": a.seed, "config": str(a.config),
             "overrides": list(a.overrides), "steps": a.steps, "budget": a.budget,
             "budget_kind": a.budget_kind} for a in sweep.arms]
    (out / MANIFEST).write_text(json.dumps({"sweep": str(sweep.path), "arms": arms}, indent=2))
    if sweep.path.resolve() != (out / "sweep.yaml").resolve():
        shutil.copyfile(sweep.path, out / "sweep.yaml")


def machine() -> dict:
    """Where an arm ran, for the report: CPU count, platform and the JAX backend."""
    return {"cpus": os.cpu_count(), "platform": platform.platform(), "processor": platform.processor()
            or platform.machine(), "backend": jax.default_backend()}


def spent_before(run_dir: Path) -> tuple[float, int]:
    """(seconds, attempts) of earlier stopped attempts at this arm, from `sweep_time.json`."""
    try:
        doc = json.loads((run_dir / SPENT).read_text())
        return float(doc["seconds"]), int(doc["attempts"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0.0, 0


def train_timed(run_dir: Path, steps: int, fn: Callable[[], dict]) -> tuple[dict, float]:
    """Run one attempt at an arm; on success write the done marker with the seconds of this and
    every earlier attempt, on failure add this attempt's seconds to `sweep_time.json`."""
    before, attempts = spent_before(run_dir)
    t0 = time.perf_counter()
    try:
        last = fn()
    except BaseException:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / SPENT).write_text(json.dumps({"seconds": round(before + time.perf_counter() - t0, 1),
                                                 "attempts": attempts + 1}) + "\n")
        raise
    seconds = round(before + time.perf_counter() - t0, 1)
    (run_dir / DONE).write_text(json.dumps({
        "steps": steps, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "seconds": seconds,
        "attempts": attempts + 1, "machine": machine()}) + "\n")
    return last, seconds


def run_sweep(sweep: Sweep, out: Path, *, train_fn: Callable[..., dict] = train) -> dict[str, str]:
    """Train every arm not yet done, in order; returns arm name -> "trained" or "skipped"."""
    write_manifest(sweep, out)
    resume = shlex.join(["radial", "sweep", str(sweep.path), "--out", str(out)])
    n, status = len(sweep.arms), {}
    for i, arm in enumerate(sweep.arms, 1):
        run_dir = out / arm.name
        if is_done(run_dir, arm.steps):
            print(f"arm {i}/{n} {arm.name}: done ({arm.steps} steps), skipped", flush=True)
            status[arm.name] = "skipped"
            continue
        cfg = arm.load(out)
        what = "resuming" if (run_dir / "checkpoints").is_dir() else "training"
        print(f"arm {i}/{n} {arm.name}: {what} {arm.steps} steps in {run_dir}" + _budget_note(arm),
              flush=True)
        last, seconds = train_timed(run_dir, arm.steps, functools.partial(train_fn, cfg,
                                                                             resume_command=resume))
        loss = last.get("eval/loss")
        print(f"arm {i}/{n} {arm.name}: finished in {seconds:.0f}s (all attempts)"
              + (f", eval loss {loss:.4f}" if loss is not None else ""), flush=True)
        status[arm.name] = "trained"
    trained = sum(s == "trained" for s in status.values())
    print(f"sweep done: {trained} arm(s) trained, {n - trained} already done. Compare them with:\n"
          f"  radial report {out}", flush=True)
    return status


def _budget_note(arm: Arm) -> str:
    if arm.budget_kind == "train_flops":
        return f" (budget {arm.budget:.3g} training FLOPs)"
    if arm.budget_kind == "tokens":
        return f" (budget {short(arm.budget)} tokens)"
    return ""
