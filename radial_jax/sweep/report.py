"""`radial report DIR [--out OUT]`: a sweep's results page, CSV and figures, from its runs.

The arms' numbers come from their run dirs (arms.py), routed arms' inference cost from evaluating
their final checkpoints as decoding routes (inference.py, cached in the output folder), the means
over seeds and the isoFLOP frontier from aggregate.py, the verdict on issue 19's goal from
verdict.py, and the page from page.py. Without OUT everything goes into DIR (report.md beside the
figures); with OUT the page is OUT.md and its figures, CSV and cache go into the folder OUT, so a
page under docs/results/ is written without touching the sweep, which may still be training.
"""

from __future__ import annotations

import csv
import shlex
from dataclasses import asdict
from pathlib import Path

import yaml

from radial_jax.config import load_config
from radial_jax.errors import NotFoundError
from radial_jax.sweep.aggregate import aggregate, frontier
from radial_jax.sweep.arms import ArmResult, arm_dirs, planned_params, read_arm
from radial_jax.sweep.inference import measure_arms
from radial_jax.sweep.page import PageInputs, render
from radial_jax.sweep.verdict import Goal, judge


class ReportError(NotFoundError):
    """DIR holds no finished arm; the message says what was looked for."""


def write_csv(results: list[ArmResult], path: Path) -> Path:
    fields = [k for k in asdict(results[0]) if k != "curve"]
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=fields)
        w.writeheader()
        for r in results:
            w.writerow({k: ("" if v is None else v) for k, v in asdict(r).items() if k != "curve"})
    return path


def description(root: Path, sweep_file: str | None) -> str:
    """The sweep file's `description:` and where it is, from the copy `radial sweep` keeps in DIR."""
    try:
        doc = yaml.safe_load((root / "sweep.yaml").read_text())
    except (OSError, yaml.YAMLError):
        doc = None
    text = doc.get("description", "") if isinstance(doc, dict) else ""
    where = f"Sweep file: `{sweep_file}`." if sweep_file else ""
    return " ".join(x for x in (f"{text[:1].upper()}{text[1:]}." if text else "", where) if x)


def page_path(root: Path, out: Path | None) -> Path:
    """DIR/report.md, or OUT.md beside the folder OUT."""
    return root / "report.md" if out is None else out.parent / f"{out.name}.md"


def write_report(root: str | Path, out: str | Path | None = None, *, goal: Goal = Goal()) -> dict[str, Path]:
    """Read every finished arm under `root`, measure routed arms' inference depth (cached), and write
    the page, report.csv and the PNGs (into `out`, default `root`). Returns {name: path}."""
    from radial_jax.sweep import plots  # deferred: matplotlib is heavy, and only reports draw

    root = Path(root)
    if not root.is_dir():
        raise ReportError(f"no such folder: {root}")
    arms = arm_dirs(root)
    if not arms.finished:
        what = (f"none of its {len(arms.unfinished)} arms has finished yet" if arms.unfinished else
                "no arm folders with config.yaml and metrics.jsonl (run `radial sweep FILE --out DIR` first)")
        raise ReportError(f"{root} has {what}")
    folder = root if out is None else Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    results = measure_arms([(read_arm(d, i), d) for d, i in arms.finished], folder)
    stats = aggregate(results)
    planned = planned_params(arms, root)
    verdict = judge(stats, [(u.group, u.family, u.budget_label) for u in arms.unfinished], goal, planned)
    paths = {"frontier": plots.frontier(stats, frontier(stats), folder / "frontier.png"),
             "inference": plots.loss_vs_inference_flops(stats, folder / "loss_vs_inference_flops.png",
                                                        verdict),
             "isoflop": plots.loss_vs_training_flops(results, folder / "isoflop.png"),
             "routing": plots.routing_stats(results, folder / "routing.png")}
    paths["csv"] = write_csv(results, folder / "report.csv")
    md = page_path(root, None if out is None else folder)
    rel = "" if out is None else f"{folder.name}/"
    command = shlex.join(["radial", "report", str(root), *(["--out", str(out)] if out is not None else [])])
    sweep_file = arms.manifest.get("sweep")
    title = f"Sweep report: {Path(sweep_file).stem if sweep_file else root.name}"
    md.write_text(render(PageInputs(
        title=title, description=description(root, sweep_file), command=command, results=results,
        stats=stats, unfinished=arms.unfinished, planned=planned,
        verdict=verdict, configs=[load_config(d / "config.yaml") for d, _ in arms.finished],
        figures={k: rel + p.name for k, p in paths.items() if p.suffix == ".png"},
        csv=rel + paths["csv"].name)))
    paths["md"] = md
    return paths
