"""`radial sweep FILE`: train a sweep's arms one after another, as normal (resumable) run dirs.

Each arm trains in OUT/<arm name>. When an arm finishes, a marker `sweep_done.json` (its step
count, the seconds it trained over every invocation, the machine and the date) goes into its run
dir; a later `radial sweep` skips marked arms and resumes the others from their checkpoints through
the training loop's usual resume, so an interrupted sweep continues where it stopped. An attempt
that stops (SIGTERM, Ctrl-C, an error) adds its seconds to `sweep_time.json`, so the marker's total
counts them too (a SIGKILL loses that attempt's time). `--dry-run` prints what each arm costs;
`--emit` prints one `radial train` command per arm, to launch them elsewhere.

Several `radial sweep` processes may share one output folder (one per core, or per host on a
shared disk): an arm being trained holds a lock (OUT/.locks/<arm>.lock: host and pid), and the
others pass it by and take the next arm. `--arms PATTERN ...` runs only the arms whose names match
(shell-style, e.g. '*_s1_*').
"""

from __future__ import annotations

import fnmatch
import functools
import json
import os
import platform
import shlex
import shutil
import socket
import time
from collections.abc import Callable
from pathlib import Path

import jax

from radial_jax.sweep.cost import arm_cost, short
from radial_jax.sweep.spec import Arm, Sweep, SweepError
from radial_jax.train.loop import train

DONE = "sweep_done.json"
MANIFEST = "sweep.json"
SPENT = "sweep_time.json"  # seconds of earlier, stopped attempts at an arm
LOCKS = ".locks"            # OUT/.locks/<arm>.lock while a process trains that arm


def select_arms(sweep: Sweep, patterns: list[str] | tuple = ()) -> list[Arm]:
    """The sweep's arms whose names match any of `patterns` (shell-style); all of them without any."""
    if not patterns:
        return list(sweep.arms)
    arms = [a for a in sweep.arms if any(fnmatch.fnmatchcase(a.name, p) for p in patterns)]
    if not arms:
        names = ", ".join(a.name for a in sweep.arms)
        raise SweepError(f"{sweep.path}: no arm matches --arms {' '.join(patterns)}; its arms: {names}")
    return arms


def take_lock(out: Path, arm: str) -> tuple[Path | None, str]:
    """(lock path, "") if this process may train `arm`, else (None, who holds it). A lock left by a
    dead process of this host (SIGKILL, a crash) is taken over; one from another host is not
    (remove it by hand once that host has stopped)."""
    path = out / LOCKS / f"{arm}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    me = {"host": socket.gethostname(), "pid": os.getpid()}
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                held = json.loads(path.read_text())
            except (OSError, ValueError):
                held = {}
            if held.get("host") == me["host"] and not _alive(held.get("pid")):
                path.unlink(missing_ok=True)  # stale: its process is gone
                continue
            return None, f"{held.get('host', '?')} pid {held.get('pid', '?')} ({path})"
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        return path, ""
    return None, f"a lock that keeps reappearing ({path})"


def _alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, TypeError, ValueError):
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def plan_rows(sweep: Sweep, out: Path, only: list[str] | tuple = ()) -> list[dict]:
    """One row per arm (of those matching the patterns `only`): what it is and what it will cost."""
    rows = []
    for arm in select_arms(sweep, only):
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


def emit_commands(sweep: Sweep, out: Path, only: list[str] | tuple = ()) -> list[str]:
    """One `radial train CONFIG overrides... run.dir=OUT/<arm>` line per arm (matching `only`)."""
    return [shlex.join(["radial", "train", str(a.config), *a.overrides, f"run.dir={out / a.name}"])
            for a in select_arms(sweep, only)]


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
    """Where an arm ran, for the report: the CPUs this process may use (fewer than the machine's
    when pinned, e.g. by `taskset`), platform and the JAX backend."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpus": cpus, "platform": platform.platform(), "processor": platform.processor()
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


def run_sweep(sweep: Sweep, out: Path, *, train_fn: Callable[..., dict] = train,
              only: list[str] | tuple = ()) -> dict[str, str]:
    """Train every arm not yet done (of those matching `only`, shell-style patterns; all without),
    in order, passing arms another process is training; returns arm name -> "trained", "skipped"
    (done before) or "busy" (locked by another process)."""
    chosen = select_arms(sweep, only)
    write_manifest(sweep, out)
    resume = shlex.join(["radial", "sweep", str(sweep.path), "--out", str(out),
                         *(["--arms", *only] if only else [])])
    n, status = len(chosen), {}
    for i, arm in enumerate(chosen, 1):
        run_dir = out / arm.name
        if is_done(run_dir, arm.steps):
            print(f"arm {i}/{n} {arm.name}: done ({arm.steps} steps), skipped", flush=True)
            status[arm.name] = "skipped"
            continue
        lock, holder = take_lock(out, arm.name)
        if lock is None:
            print(f"arm {i}/{n} {arm.name}: another process is training it ({holder}), passed by", flush=True)
            status[arm.name] = "busy"
            continue
        try:
            if is_done(run_dir, arm.steps):  # finished by another process between the check and the lock
                status[arm.name] = "skipped"
                continue
            cfg = arm.load(out)
            what = "resuming" if (run_dir / "checkpoints").is_dir() else "training"
            print(f"arm {i}/{n} {arm.name}: {what} {arm.steps} steps in {run_dir}" + _budget_note(arm),
                  flush=True)
            last, seconds = train_timed(run_dir, arm.steps, functools.partial(train_fn, cfg,
                                                                                 resume_command=resume))
        finally:
            lock.unlink(missing_ok=True)
        loss = last.get("eval/loss")
        print(f"arm {i}/{n} {arm.name}: finished in {seconds:.0f}s (all attempts)"
              + (f", eval loss {loss:.4f}" if loss is not None else ""), flush=True)
        status[arm.name] = "trained"
    trained = sum(s == "trained" for s in status.values())
    busy = [a for a, s in status.items() if s == "busy"]
    print(f"sweep done: {trained} arm(s) trained, {n - trained - len(busy)} already done"
          + (f", {len(busy)} being trained by other processes ({', '.join(busy)})" if busy else "")
          + f". Compare them with:\n  radial report {out}", flush=True)
    return status


def _budget_note(arm: Arm) -> str:
    if arm.budget_kind == "train_flops":
        return f" (budget {arm.budget:.3g} training FLOPs)"
    if arm.budget_kind == "tokens":
        return f" (budget {short(arm.budget)} tokens)"
    return ""
