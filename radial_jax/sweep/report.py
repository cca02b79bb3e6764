"""`radial report DIR`: one table (Markdown + CSV) and PNG plots comparing the runs of a sweep.

Every sub-folder of DIR holding config.yaml and metrics.jsonl is an arm (the order and groups of
`sweep.json`, written by `radial sweep`, when present). All numbers come from those two files:
FLOPs from the config (as compiled), tokens from the last logged step, eval loss / bits per byte /
routing statistics from the last eval row, step time as the median of the logged intervals after
the first (which includes compilation). A decode benchmark JSON in an arm's folder (`radial bench
decode --checkpoint ARM --out ARM/decode.json`) adds its batch-1 ms per token.
"""

from __future__ import annotations

import csv
import json
import re
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path

from radial_jax.config import load_config
from radial_jax.errors import NotFoundError
from radial_jax.model.flops import flops_per_token
from radial_jax.sweep.cost import count_params, inference_flops, short
from radial_jax.sweep.run import MANIFEST
from radial_jax.train.metrics import read_metrics


class ReportError(NotFoundError):
    """DIR holds no finished arm; the message says what was looked for."""


@dataclass(frozen=True)
class ArmResult:
    name: str
    group: str
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


def read_arm(run_dir: Path, group: str | None = None) -> ArmResult:
    """The numbers of one arm from its config.yaml and metrics.jsonl (pure reading)."""
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
        name=run_dir.name, group=group or re.sub(r"_b\d+$", "", run_dir.name), kind=m.kind,
        params=count_params(cfg), train_flops_per_token=per_token,
        inference_flops_per_token=inference_flops(cfg, depth), training_flops=per_token * tokens_per_step
        * steps, tokens=tokens_per_step * steps, steps=steps, eval_loss=_last(evals, "eval/loss"),
        bits_per_byte=_last(evals, "eval/bits_per_byte"), active_depth=depth,
        max_depth=m.prefix_layers + m.steps if radial else m.n_layers,
        skip_rate=_last(evals, "eval/skip_rate") if radial else None,
        drop_rate=_last(evals, "eval/drop_rate") if radial else None,
        step_time_s=statistics.median(times) if times else None,
        decode_ms_per_token=decode_ms(run_dir, m.kind),
        curve=[(per_token * tokens_per_step * r["step"], r["eval/loss"]) for r in evals])


def arm_dirs(root: Path) -> list[tuple[Path, str | None]]:
    """(run dir, group) of each arm: the manifest's order if there is one, else sorted by name."""
    manifest = root / MANIFEST
    if manifest.is_file():
        arms = json.loads(manifest.read_text())["arms"]
        found = [(root / a["name"], a["group"]) for a in arms]
    else:
        found = [(d, None) for d in sorted(p for p in root.iterdir() if p.is_dir())]
    return [(d, g) for d, g in found if (d / "config.yaml").is_file() and (d / "metrics.jsonl").is_file()]


COLUMNS = [  # (header, field, format)
    ("arm", "name", str), ("params", "params", lambda v: f"{v:,}"),
    ("active FLOPs/token (train)", "train_flops_per_token", short),
    ("inference FLOPs/token", "inference_flops_per_token", short),
    ("training FLOPs", "training_flops", lambda v: f"{v:.3g}"), ("tokens", "tokens", short),
    ("eval loss", "eval_loss", lambda v: f"{v:.4f}"), ("bits/byte", "bits_per_byte", lambda v: f"{v:.4f}"),
    ("mean active depth", "active_depth", lambda v: f"{v:.2f}"),
    ("step time (s)", "step_time_s", lambda v: f"{v:.3f}"),
    ("decode ms/token", "decode_ms_per_token", lambda v: f"{v:.3f}"),
]


def markdown_table(results: list[ArmResult]) -> str:
    lines = ["| " + " | ".join(h for h, _, _ in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in results:
        cells = [fmt(getattr(r, f)) if getattr(r, f) is not None else "-" for _, f, fmt in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def best_per_budget(results: list[ArmResult]) -> list[str]:
    """For arms of the same training budget (same `_bN` suffix, or all arms when there is none):
    which reached the lowest eval loss, and at what inference cost."""
    groups: dict[str, list[ArmResult]] = {}
    for r in results:
        if r.eval_loss is not None:
            groups.setdefault(r.name[len(r.group):].lstrip("_") or "all", []).append(r)
    lines = []
    for budget, rs in groups.items():
        if len(rs) < 2:
            continue
        best = min(rs, key=lambda r: r.eval_loss)
        others = ", ".join(f"{r.name} {r.eval_loss:.4f} ({short(r.inference_flops_per_token)})"
                           for r in rs if r is not best)
        lines.append(f"- {'budget ' + budget if budget != 'all' else 'all arms'}: lowest eval loss "
                     f"{best.name} ({best.eval_loss:.4f} at {best.training_flops:.3g} training FLOPs, "
                     f"{short(best.inference_flops_per_token)} inference FLOPs/token); {others}")
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
    results = [read_arm(d, g) for d, g in arm_dirs(root)]
    if not results:
        raise ReportError(f"{root} has no arm folders with config.yaml and metrics.jsonl (run "
                          "`radial sweep FILE --out DIR` first)")
    paths = {"isoflop": plots.loss_vs_training_flops(results, root / "isoflop.png"),
             "inference": plots.loss_vs_inference_flops(results, root / "loss_vs_inference_flops.png"),
             "routing": plots.routing_stats(results, root / "routing.png")}
    paths["csv"] = write_csv(results, root / "report.csv")
    notes = best_per_budget(results)
    md = [f"# Sweep report: {root}", "", markdown_table(results), ""]
    if notes:
        md += ["Lowest eval loss at each training budget:", "", *notes, ""]
    md += ["Active FLOPs/token (train): forward + backward as compiled (radial: the capacity-bound "
           "slots). Inference FLOPs/token: radial at the measured mean active depth of the last eval "
           "(with routing.skip: forbid, every routed step, since decoding has no capacity). "
           "Step time: median over logged intervals after the first (compilation). Decode: batch 1, "
           "from a decode benchmark JSON in the arm's folder.", ""]
    md += [f"![{k}]({p.name})" for k, p in paths.items() if p.suffix == ".png"]
    paths["md"] = root / "report.md"
    paths["md"].write_text("\n".join(md) + "\n")
    return paths
