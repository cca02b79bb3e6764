"""`radial report DIR`: one table (Markdown + CSV) and PNG plots comparing the runs of a sweep.

Every sub-folder of DIR holding config.yaml and metrics.jsonl is an arm (the order, groups,
families, seeds and budgets of `sweep.json`, written by `radial sweep`, when present; else read
from the folder names' `_s<seed>` / `_b<budget>` suffixes). The numbers come from those two files:
FLOPs from the config (as compiled), tokens from the last logged step, eval loss / bits per byte /
routing statistics from the last eval row, step time as the median of the logged intervals after
the first (which includes compilation); the wall time of an arm, over all its attempts, and the
machine it ran on from its `sweep_done.json`. A decode benchmark JSON in an arm's folder (`radial
bench decode --checkpoint ARM --out ARM/decode.json`) adds its batch-1 ms per token. Arms of a
group differing only in seed are averaged (mean, min-max, n), and each family's isoFLOP frontier is
its lowest mean eval loss at each budget across sizes.
"""

from __future__ import annotations

import csv
import json
import os
import platform
import re
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from radial_jax.config import load_config
from radial_jax.errors import NotFoundError
from radial_jax.model.flops import flops_per_token
from radial_jax.sweep.aggregate import GroupStat, aggregate, best_per_budget, frontier
from radial_jax.sweep.cost import count_params, inference_flops, short
from radial_jax.sweep.run import DONE, MANIFEST
from radial_jax.train.metrics import read_metrics


class ReportError(NotFoundError):
    """DIR holds no finished arm; the message says what was looked for."""


@dataclass(frozen=True)
class ArmInfo:
    """Where an arm sits in its sweep: from `sweep.json`, or parsed from its folder name."""

    group: str
    family: str
    seed: int | None = None
    budget: float | None = None
    budget_label: str = ""


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
    inference_flops_per_token: float   # at the measured mean active depth (radial)
    training_flops: float
    tokens: int
    steps: int
    eval_loss: float | None
    bits_per_byte: float | None
    active_depth: float | None         # blocks per token (prefix + routed); dense: all layers
    max_depth: int
    skip_rate: float | None
    drop_rate: float | None
    step_time_s: float | None
    decode_ms_per_token: float | None
    seconds: float | None              # wall time of the arm over all its attempts (sweep_done.json)
    machine: str | None                # where it ran: platform, CPU count, backend
    curve: list = field(default_factory=list)  # [(training FLOPs at that step, eval loss), ...]


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
    reading)."""
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
    times = [r["perf/step_time_s"] for r in rows if isinstance(r.get("perf/step_time_s"), (int, float))]
    times = times[1:] or times  # the first interval includes compilation
    return ArmResult(
        name=run_dir.name, group=info.group, family=info.family, seed=info.seed, budget=info.budget,
        budget_label=info.budget_label, kind=m.kind,
        params=count_params(cfg), train_flops_per_token=per_token,
        inference_flops_per_token=inference_flops(cfg, depth), training_flops=per_token * tokens_per_step
        * steps, tokens=tokens_per_step * steps, steps=steps, eval_loss=_last(evals, "eval/loss"),
        bits_per_byte=_last(evals, "eval/bits_per_byte"), active_depth=depth,
        max_depth=m.prefix_layers + m.steps if radial else m.n_layers,
        skip_rate=_last(evals, "eval/skip_rate") if radial else None,
        drop_rate=_last(evals, "eval/drop_rate") if radial else None,
        step_time_s=statistics.median(times) if times else None,
        decode_ms_per_token=decode_ms(run_dir, m.kind),
        seconds=float(done["seconds"]) if isinstance(done.get("seconds"), (int, float)) else None,
        machine=machine_line(done["machine"]) if isinstance(done.get("machine"), dict) else None,
        curve=[(per_token * tokens_per_step * r["step"], r["eval/loss"]) for r in evals])


def _manifest_info(arm: dict, budgets: int) -> ArmInfo:
    """An arm of `sweep.json`; its budget label is its name's `_bN` (there when the sweep has
    several budgets)."""
    m = re.search(r"_(b\d+)$", arm["name"]) if budgets > 1 else None
    return ArmInfo(arm["group"], arm.get("family") or arm["group"], arm.get("seed"), arm.get("budget"),
                   m.group(1) if m else "")


def arm_dirs(root: Path) -> list[tuple[Path, ArmInfo]]:
    """(run dir, its place in the sweep) of each arm: the manifest's order if there is one, else
    sorted by name."""
    manifest = root / MANIFEST
    if manifest.is_file():
        arms = json.loads(manifest.read_text())["arms"]
        budgets = len({a.get("budget") for a in arms})
        found = [(root / a["name"], _manifest_info(a, budgets)) for a in arms]
    else:
        found = [(d, info_from_name(d.name)) for d in sorted(p for p in root.iterdir() if p.is_dir())]
    return [(d, i) for d, i in found if (d / "config.yaml").is_file() and (d / "metrics.jsonl").is_file()]


COLUMNS = [  # (header, field, format)
    ("arm", "name", str), ("params", "params", lambda v: f"{v:,}"),
    ("active FLOPs/token (train)", "train_flops_per_token", short),
    ("inference FLOPs/token", "inference_flops_per_token", short),
    ("training FLOPs", "training_flops", lambda v: f"{v:.3g}"), ("tokens", "tokens", short),
    ("eval loss", "eval_loss", lambda v: f"{v:.4f}"), ("bits/byte", "bits_per_byte", lambda v: f"{v:.4f}"),
    ("mean active depth", "active_depth", lambda v: f"{v:.2f}"),
    ("step time (s)", "step_time_s", lambda v: f"{v:.3f}"),
    ("arm time (min)", "seconds", lambda v: f"{v / 60:.1f}"),
    ("decode ms/token", "decode_ms_per_token", lambda v: f"{v:.3f}"),
]


def markdown_table(results: list[ArmResult]) -> str:
    lines = ["| " + " | ".join(h for h, _, _ in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in results:
        cells = [fmt(getattr(r, f)) if getattr(r, f) is not None else "-" for _, f, fmt in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _label(s: GroupStat) -> str:
    """group_bN: an arm's name without its seed."""
    return "_".join(x for x in (s.group, s.budget_label) if x)


def _spread(s: GroupStat) -> str:
    if s.eval_loss_mean is None:
        return "-"
    if s.n < 2:
        return f"{s.eval_loss_mean:.4f}"
    return f"{s.eval_loss_mean:.4f} ({s.eval_loss_min:.4f}-{s.eval_loss_max:.4f}, n={s.n})"


def _budget(s: GroupStat) -> str:
    return f"{s.budget:.3g}" if s.budget is not None else f"{s.training_flops:.3g} (spent)"


def best_lines(stats: list[GroupStat]) -> list[str]:
    """For each training budget (or all arms when there is one): which group reached the lowest
    mean eval loss, and at what inference cost."""
    lines = []
    for label, ss in best_per_budget(stats).items():
        if len(ss) < 2:
            continue
        best, others = ss[0], ss[1:]
        rest = ", ".join(f"{_label(s)} {_spread(s)} ({short(s.inference_flops_per_token)})" for s in others)
        lines.append(f"- {'budget ' + _budget(best) if label else 'all arms'}: lowest mean eval loss "
                     f"{_label(best)} ({_spread(best)} at {best.training_flops:.3g} training FLOPs, "
                     f"{short(best.inference_flops_per_token)} inference FLOPs/token); {rest}")
    return lines


def seeds_table(stats: list[GroupStat]) -> str:
    lines = ["| arm group | family | budget | params | seeds | eval loss: mean (min-max, n) | training FLOPs "
             "| inference FLOPs/token | arm time (min): mean / total |", "|" + "---|" * 9]
    for s in stats:
        seeds = ", ".join("-" if x is None else str(x) for x in s.seeds)
        time_ = "-" if s.seconds_mean is None else f"{s.seconds_mean / 60:.1f} / {s.seconds_total / 60:.1f}"
        lines.append(f"| {_label(s)} | {s.family} | {_budget(s)} | {s.params:,} | {seeds} | {_spread(s)} | "
                     f"{s.training_flops:.3g} | {short(s.inference_flops_per_token)} | {time_} |")
    return "\n".join(lines)


def frontier_table(stats: list[GroupStat]) -> str:
    lines = ["| family | budget | lowest mean eval loss (min-max, n) | from | params | inference FLOPs/token "
             "| the family's other sizes |", "|" + "---|" * 7]
    for p in frontier(stats):
        b = p.best
        others = ", ".join(f"{s.group} {s.eval_loss_mean:.4f}" for s in p.others) or "-"
        lines.append(f"| {p.family} | {_budget(b)} | {_spread(b)} | {b.group} | {b.params:,} | "
                     f"{short(b.inference_flops_per_token)} | {others} |")
    return "\n".join(lines)


def machines(results: list[ArmResult]) -> list[str]:
    """Report date and machine, and the machine(s) the arms trained on."""
    lines = [f"Written {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {platform.platform()}, "
             f"{os.cpu_count()} CPUs."]
    ran = list(dict.fromkeys(r.machine for r in results if r.machine))
    if ran:
        timed = [r.seconds for r in results if r.seconds is not None]
        lines.append(f"Arms trained on: {'; '.join(ran)}. Arm time: wall seconds over every attempt "
                     f"at the arm, from its sweep_done.json; {len(timed)} of {len(results)} arms timed, "
                     f"{sum(timed) / 3600:.2f} h in all.")
    return lines


def write_csv(results: list[ArmResult], path: Path) -> Path:
    fields = [k for k in asdict(results[0]) if k != "curve"]
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=fields)
        w.writeheader()
        for r in results:
            w.writerow({k: ("" if v is None else v) for k, v in asdict(r).items() if k != "curve"})
    return path


def write_report(root: str | Path) -> dict[str, Path]:
    """Read every arm under `root`; write report.md, report.csv and the PNGs there."""
    from radial_jax.sweep import plots  # deferred: matplotlib is heavy, and only reports draw

    root = Path(root)
    if not root.is_dir():
        raise ReportError(f"no such folder: {root}")
    results = [read_arm(d, i) for d, i in arm_dirs(root)]
    if not results:
        raise ReportError(f"{root} has no arm folders with config.yaml and metrics.jsonl (run "
                          "`radial sweep FILE --out DIR` first)")
    stats = aggregate(results)
    paths = {"isoflop": plots.loss_vs_training_flops(results, root / "isoflop.png"),
             "frontier": plots.frontier(stats, frontier(stats), root / "frontier.png"),
             "inference": plots.loss_vs_inference_flops(stats, root / "loss_vs_inference_flops.png"),
             "routing": plots.routing_stats(results, root / "routing.png")}
    paths["csv"] = write_csv(results, root / "report.csv")
    notes = best_lines(stats)
    md = [f"# Sweep report: {root}", "", *machines(results), "", markdown_table(results), ""]
    if any(s.n > 1 for s in stats) or any(r.family != r.group for r in results):
        md += ["## Over seeds", "", seeds_table(stats), "",
               "## isoFLOP frontier per family", "",
               "At each training budget, the family's size with the lowest mean eval loss.", "",
               frontier_table(stats), ""]
    if notes:
        md += ["Lowest mean eval loss at each training budget:", "", *notes, ""]
    md += ["Active FLOPs/token (train): forward + backward as compiled (radial: the capacity-bound "
           "slots). Inference FLOPs/token: radial at the measured mean active depth of the last eval "
           "(with routing.skip: forbid, every routed step, since decoding has no capacity). "
           "Step time: median over logged intervals after the first (compilation). Decode: batch 1, "
           "from a decode benchmark JSON in the arm's folder.", ""]
    md += [f"![{k}]({p.name})" for k, p in paths.items() if p.suffix == ".png"]
    paths["md"] = root / "report.md"
    paths["md"].write_text("\n".join(md) + "\n")
    return paths
