"""`radial profile --trend`: median residual ratio against model size (the paper's Figure 2 trend).

Each model (run, export or Hugging Face directory) is profiled on its own config's validation batches;
its point is the median per-token ratio over all its residual blocks (dense) or over its prefix blocks
and routed updates (radial), plotted against its parameter count (embeddings included) on a log axis,
with the values the paper reports beside them for reference (PAPER.md).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import jax
import numpy as np

from radial_jax.analysis.profile import profile_dense, profile_radial
from radial_jax.analysis.ratios import RATIO_FORMULA, check_ratio, ratio_definition
from radial_jax.data.pipeline import make_eval_batches
from radial_jax.io.load import load_model

# What the paper and its companion report (PAPER.md), for reference only: their normalisation is not
# given, OPT is a different model family and data, ViT a different modality. params None: no size given.
PAPER_VALUES = (
    {"model": "OPT-66B", "params": 66e9, "median": 0.05, "status": "confirmed (abstract)"},
    {"model": "ViT-Huge", "params": 632e6, "median": 0.07,
     "status": "confirmed (companion workshop paper; vision model)"},
    {"model": "OPT-125M", "params": 125e6, "median": 0.20, "status": "not confirmed (secondary summaries)"},
    {"model": "OPT-66B", "params": 66e9, "median": 0.059, "status": "not confirmed (secondary summaries)"},
    {"model": "state-of-the-art models", "params": None, "median": 0.01,
     "status": "confirmed (Figure 2 caption, 'around 1%'); no model size given, not plotted"},
)
NOT_GIVEN = ("not given by the paper: its normalisation, profiling data beyond secondary summaries, and "
             "the values of its other points in Figure 2 (OPT-350M only as 'comparable to ViT-Huge')")


def param_count(params) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))


def profile_point(path: str, overrides: Sequence[str], *, n_batches: int, ratio: str) -> dict:
    """One model's trend point: size, median ratio and its quartiles."""
    loaded = load_model(path, overrides)
    cfg, m = loaded.cfg, loaded.cfg.model
    batches = make_eval_batches(cfg.data, loaded.tokenizer, n_batches or cfg.train.eval_batches)
    if m.kind == "dense":
        rep = profile_dense(loaded.graphdef, loaded.params, batches, [], n_layers=m.n_layers, ratio=ratio)
        overall, detail = rep["overall"], {"median_of_block_medians": rep["median_of_block_medians"]}
        shape = f"d_model {m.d_model}, {m.n_layers} layers"
    else:
        rep = profile_radial(loaded.graphdef, loaded.params, batches, pool_size=m.pool_size, steps=m.steps,
                             prefix_layers=m.prefix_layers, ratio=ratio)
        overall, detail = rep["ratios"]["overall"], {"routed_overall": rep["ratios"]["routed_overall"]}
        shape = f"d_model {m.d_model}, {m.prefix_layers} prefix + {m.pool_size} pool layers, {m.steps} steps"
    return {"path": str(path), "kind": m.kind, "shape": shape, "params": param_count(loaded.params),
            "step": loaded.step, "source": loaded.source, "eval_loss": rep["eval"]["loss"],
            "median": overall["median"], "q25": overall["q25"], "q75": overall["q75"],
            "tokens": overall["tokens"], **detail}


def trend_table(report: dict) -> str:
    lines = [f"Median residual ratio ({report['ratio']}: r = {RATIO_FORMULA[report['ratio']]}) against "
             "model size", "",
             "| model | kind | parameters | steps | eval loss | median | q25-q75 | tokens |",
             "|---|---|---|---|---|---|---|---|"]
    for p in report["models"]:
        q = f"{100 * p['q25']:.2f}-{100 * p['q75']:.2f}%"
        lines.append(f"| {p['shape']} | {p['kind']} | {p['params']:,} | {p['step']} | {p['eval_loss']:.3f} | "
                     f"{100 * p['median']:.2f}% | {q} | {p['tokens']} |")
    lines += ["", "Reported by the paper (reference only; normalisation not given)", "",
              "| model | parameters | median | status |", "|---|---|---|---|"]
    for v in PAPER_VALUES:
        size = f"{v['params']:.3g}" if v["params"] else "not given"
        lines.append(f"| {v['model']} | {size} | {100 * v['median']:.1f}% | {v['status']} |")
    lines += ["", NOT_GIVEN]
    return "\n".join(lines)


def run_trend(paths: Sequence[str], overrides: Sequence[str] = (), *, out_dir: str | Path,
              n_batches: int = 0, ratio: str = "stream") -> tuple[dict, dict[str, Path]]:
    """Profile each model, write trend.json, trend.md and trend.png into out_dir."""
    from radial_jax.analysis import plots  # deferred: matplotlib is heavy, and only reports draw

    check_ratio(ratio)
    points = sorted((profile_point(p, overrides, n_batches=n_batches, ratio=ratio) for p in paths),
                    key=lambda p: p["params"])
    report = {"ratio": ratio, "definition": ratio_definition(ratio), "models": points,
              "paper": list(PAPER_VALUES), "paper_not_given": NOT_GIVEN}
    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    files = {"plot": plots.trend_plot(report, out / "trend.png"), "json": out / "trend.json",
             "table": out / "trend.md"}
    files["json"].write_text(json.dumps(report, indent=2) + "\n")
    report["_table"] = trend_table(report)
    files["table"].write_text(report["_table"] + "\n")
    return report, files
