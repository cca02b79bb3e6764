"""A sweep folder's arms as the report reads them: which are finished, and the numbers of each.

Every sub-folder of a sweep's output holding config.yaml and metrics.jsonl is an arm (the order,
groups, families, seeds and budgets of `sweep.json`, written by `radial sweep`, when present; else
read from the folder names' `_s<seed>` / `_b<budget>` suffixes). An arm of a manifest is finished
when its `sweep_done.json` records its steps (as `radial sweep` decides); a folder outside a
manifest, when its metrics reach its config's `train.steps`. Only finished arms are read into
numbers; the others are listed with how far they got. Reading never writes: a sweep still running
can be read while it trains.
"""

from __future__ import annotations

import json
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from radial_jax.config import load_config
from radial_jax.model.flops import flops_per_token
from radial_jax.sweep.cost import count_params, inference_flops
from radial_jax.sweep.run import DONE, MANIFEST, spent_before
from radial_jax.train.metrics import read_metrics


@dataclass(frozen=True)
class ArmInfo:
    """Where an arm sits in its sweep: from `sweep.json`, or parsed from its folder name."""

    group: str
    family: str
    seed: int | None = None
    budget: float | None = None
    budget_label: str = ""
    steps: int | None = None      # the steps the sweep gives it (None: no manifest)


_SUFFIX = re.compile(r"_(s|b)(\d+)$")


def info_from_name(name: str) -> ArmInfo:
    """`radial_l_s1_b2` -> group radial_l, seed 1, budget b2 (a folder without a manifest)."""
    group, found = name, {}
    while (m := _SUFFIX.search(group)) and m.group(1) not in found:
        found[m.group(1)] = int(m.group(2))
        group = group[:m.start()]
    label = f"b{found['b']}" if "b" in found else ""
    return ArmInfo(group, group, found.get("s"), None, label)


@dataclass(frozen=True)
class ArmResult:
    name: str
    group: str
    family: str
    seed: int | None
    budget: float | None
    budget_label: str
    kind: str
    params: int
    train_flops_per_token: float
    inference_flops_per_token: float   # measured at inference when inference_source says so
    training_flops: float
    tokens: int
    steps: int
    eval_loss: float | None            # the last eval as trained (radial: capacity-bound routing)
    bits_per_byte: float | None
    active_depth: float | None         # blocks per token (prefix + routed) in that eval; dense: all
    max_depth: int
    skip_rate: float | None
    drop_rate: float | None
    step_time_s: float | None
    decode_ms_per_token: float | None
    seconds: float | None              # wall time of the arm over all its attempts (sweep_done.json)
    machine: str | None                # where it ran: platform, CPU count, backend
    cpus: int | None                   # the cores its process could use (sweep_done.json)
    finished_at: str | None            # when it finished (sweep_done.json)
    curve: list = field(default_factory=list)  # [(training FLOPs at that step, eval loss), ...]
    inference_depth: float | None = None  # blocks per token routed as decoding routes; dense: all
    inference_loss: float | None = None   # eval loss routed so (dense: eval_loss)
    inference_source: str = ""             # "dense", "measured at step N", or why it was not


@dataclass(frozen=True)
class Unfinished:
    """An arm of the sweep without a result yet: not started, or stopped / running at some step."""

    name: str
    group: str
    family: str
    budget_label: str
    steps_done: int
    steps: int | None
    seconds: float     # of stopped attempts so far (sweep_time.json)
    started: bool      # its run dir exists

    def status(self) -> str:
        of = f" of {self.steps}" if self.steps else ""
        if self.steps_done == 0:
            return f"started, no step logged yet{of}" if self.started else "not started"
        return f"step {self.steps_done}{of}"


def _last(rows: list[dict], key: str) -> float | None:
    vals = [r[key] for r in rows if isinstance(r.get(key), (int, float))]
    return float(vals[-1]) if vals else None


def decode_ms(run_dir: Path, kind: str) -> float | None:
    """Batch-1 ms per token from a decode benchmark JSON in the arm's folder (radial: the switch
    path, where only the chosen layer runs), or None when there is none."""
    want = "switch" if kind == "radial" else "all layers"
    for path in sorted(run_dir.glob("*.json")):
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(doc, dict) or doc.get("benchmark") != "decode":
            continue
        rows = [r for r in doc.get("results", []) if r.get("batch") == 1 and r.get("path") == want
                and r.get("kind") == kind]
        mine = [r for r in rows if str(r.get("model", "")).startswith(run_dir.name)]
        if mine or rows:
            return float((mine or rows)[0]["ms_per_token"])
    return None


def _cpus(machine) -> int | None:
    cpus = machine.get("cpus") if isinstance(machine, dict) else None
    return cpus if isinstance(cpus, int) else None


def machine_line(m: dict) -> str:
    return f"{m.get('platform', '?')}, {m.get('cpus', '?')} CPUs, {m.get('backend', '?')} backend"


def done_marker(run_dir: Path) -> dict:
    """The arm's `sweep_done.json` ({} when it has none, e.g. a run trained outside a sweep)."""
    try:
        doc = json.loads((run_dir / DONE).read_text())
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def read_arm(run_dir: Path, info: ArmInfo | None = None) -> ArmResult:
    """The numbers of one arm from its config.yaml, metrics.jsonl and sweep_done.json (pure
    reading). Inference figures are the training eval's until `inference.measure` replaces them."""
    info = info or info_from_name(run_dir.name)
    done = done_marker(run_dir)
    cfg = load_config(run_dir / "config.yaml")
    rows = read_metrics(run_dir)
    steps = max((int(r["step"]) for r in rows), default=0)
    evals = [r for r in rows if isinstance(r.get("eval/loss"), (int, float))]
    tokens_per_step = cfg.data.batch_size * cfg.data.seq_len
    per_token = flops_per_token(cfg).train
    m = cfg.model
    radial = m.kind == "radial"
    depth = _last(evals, "eval/active_depth") if radial else float(m.n_layers)
    loss = _last(evals, "eval/loss")
    times = [r["perf/step_time_s"] for r in rows if isinstance(r.get("perf/step_time_s"), (int, float))]
    times = times[1:] or times  # the first interval includes compilation
    return ArmResult(
        name=run_dir.name, group=info.group, family=info.family, seed=info.seed, budget=info.budget,
        budget_label=info.budget_label, kind=m.kind,
        params=count_params(cfg), train_flops_per_token=per_token,
        inference_flops_per_token=inference_flops(cfg, depth), training_flops=per_token * tokens_per_step
        * steps, tokens=tokens_per_step * steps, steps=steps, eval_loss=loss,
        bits_per_byte=_last(evals, "eval/bits_per_byte"), active_depth=depth,
        max_depth=m.prefix_layers + m.steps if radial else m.n_layers,
        skip_rate=_last(evals, "eval/skip_rate") if radial else None,
        drop_rate=_last(evals, "eval/drop_rate") if radial else None,
        step_time_s=statistics.median(times) if times else None,
        decode_ms_per_token=decode_ms(run_dir, m.kind),
        seconds=float(done["seconds"]) if isinstance(done.get("seconds"), (int, float)) else None,
        machine=machine_line(done["machine"]) if isinstance(done.get("machine"), dict) else None,
        cpus=_cpus(done.get("machine")),
        finished_at=done.get("time") if isinstance(done.get("time"), str) else None,
        curve=[(per_token * tokens_per_step * r["step"], r["eval/loss"]) for r in evals],
        inference_depth=None if radial else depth, inference_loss=None if radial else loss,
        inference_source="training eval (not measured)" if radial else "dense")


def _manifest_info(arm: dict, budgets: int) -> ArmInfo:
    """An arm of `sweep.json`; its budget label is its name's `_bN` (there when the sweep has
    several budgets)."""
    m = re.search(r"_(b\d+)$", arm["name"]) if budgets > 1 else None
    return ArmInfo(arm["group"], arm.get("family") or arm["group"], arm.get("seed"), arm.get("budget"),
                   m.group(1) if m else "", arm.get("steps"))


def _logged_steps(run_dir: Path) -> int:
    if not (run_dir / "metrics.jsonl").is_file():
        return 0
    return max((int(r["step"]) for r in read_metrics(run_dir) if "step" in r), default=0)


def is_finished(run_dir: Path, info: ArmInfo) -> bool:
    """A manifest arm: its done marker records its steps. Otherwise: its metrics reach the
    config's train.steps."""
    if not ((run_dir / "config.yaml").is_file() and (run_dir / "metrics.jsonl").is_file()):
        return False
    if info.steps is not None:
        return done_marker(run_dir).get("steps") == info.steps
    return _logged_steps(run_dir) >= load_config(run_dir / "config.yaml").train.steps


@dataclass(frozen=True)
class SweepArms:
    """The arms of a sweep folder, in order: finished ones (to read) and the rest."""

    finished: list[tuple[Path, ArmInfo]]
    unfinished: list[Unfinished]
    manifest: dict          # sweep.json ({} without one)


def arm_dirs(root: Path) -> SweepArms:
    """Each arm of the sweep in `root`: the manifest's order if there is one, else the folders with
    config.yaml and metrics.jsonl, sorted by name."""
    path = root / MANIFEST
    manifest = json.loads(path.read_text()) if path.is_file() else {}
    if manifest:
        arms = manifest["arms"]
        budgets = len({a.get("budget") for a in arms})
        found = [(root / a["name"], _manifest_info(a, budgets)) for a in arms]
    else:
        found = [(d, info_from_name(d.name)) for d in sorted(p for p in root.iterdir() if p.is_dir())
                 if (d / "config.yaml").is_file() and (d / "metrics.jsonl").is_file()]
    finished, unfinished = [], []
    for d, info in found:
        if is_finished(d, info):
            finished.append((d, info))
        else:
            unfinished.append(Unfinished(d.name, info.group, info.family, info.budget_label,
                                         _logged_steps(d), info.steps, spent_before(d)[0], d.is_dir()))
    return SweepArms(finished, unfinished, manifest)


def planned_params(arms: SweepArms, root: Path) -> dict[str, int]:
    """Parameter counts of the groups that have no finished arm, from their configs (the arm's
    config.yaml once it started, else the manifest's config and overrides), so a partial sweep's
    sizes are known before its larger arms finish. A group whose config cannot be read is left out."""
    done = {info.group for _, info in arms.finished}
    entries = {a["name"]: a for a in arms.manifest.get("arms", [])}
    out: dict[str, int] = {}
    for u in arms.unfinished:
        if u.group in done or u.group in out:
            continue
        run_cfg, entry = root / u.name / "config.yaml", entries.get(u.name, {})
        try:
            if run_cfg.is_file():
                cfg = load_config(run_cfg)
            elif entry.get("config") and Path(entry["config"]).is_file():
                cfg = load_config(entry["config"], list(entry.get("overrides", [])))
            else:
                continue
        except (ValueError, OSError):  # a config that no longer loads: that group's size stays unknown
            continue
        out[u.group] = count_params(cfg)
    return out
