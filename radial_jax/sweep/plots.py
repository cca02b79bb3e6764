"""PNG plots of a sweep report: the isoFLOP picture (per arm, and per family over seeds), loss
against inference cost, routing per arm.

Arms of one group (the same model at different budgets) share a colour; in the plots over seeds,
groups of one family share a colour, and a marker tells its sizes apart."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from radial_jax.analysis.plots import save_figure  # noqa: E402


def _colours(results) -> dict[str, str]:
    groups = list(dict.fromkeys(r.group for r in results))
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    return {g: cycle[i % len(cycle)] for i, g in enumerate(groups)}


_MEAN_LOSS = "final eval loss (nats/token), mean over seeds"


def _finish(fig, ax, path: Path, xlabel: str, ylabel: str, title: str, *, legend: bool,
            title_size: int = 10) -> Path:
    """A log-scaled FLOPs axis, the labels and title, a legend where there is something to name;
    written as PNG."""
    ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=title_size)
    if legend:
        ax.legend(fontsize=7)
    return save_figure(fig, path)


def loss_vs_training_flops(results, path: Path) -> Path:
    """Each arm's eval curve against training FLOPs spent (log x); the final points of a group are
    joined, so at any budget the lower line is the better model for that compute."""
    colour = _colours(results)
    fig, ax = plt.subplots(figsize=(6.8, 4.2))
    finals: dict[str, list] = {}
    for r in results:
        if not r.curve:
            continue
        x, y = zip(*r.curve, strict=True)
        ax.plot(x, y, "-", color=colour[r.group], alpha=0.45, lw=1)
        ax.plot(x[-1], y[-1], "o", color=colour[r.group])
        finals.setdefault(r.group, []).append((x[-1], y[-1]))
    for group, pts in finals.items():
        pts.sort()
        ax.plot(*zip(*pts, strict=True), "--", color=colour[group], lw=1.5, label=group)
    return _finish(fig, ax, path, "training FLOPs (as compiled)", "eval loss (nats/token)",
                   "eval loss against training compute (dots: end of each arm)", legend=bool(finals))


_MARKERS = "osD^v<>P*X"


def _family_styles(stats) -> tuple[dict[str, str], dict[str, str]]:
    """(family -> colour, group -> marker): a family's sizes share its colour, one marker each."""
    families = list(dict.fromkeys(s.family for s in stats))
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    colour = {f: cycle[i % len(cycle)] for i, f in enumerate(families)}
    marker = {}
    for f in families:
        for i, g in enumerate(dict.fromkeys(s.group for s in stats if s.family == f)):
            marker[g] = _MARKERS[i % len(_MARKERS)]
    return colour, marker


def _spread_bars(ax, s, x: float, colour: str, marker: str, label: str | None) -> None:
    """Mean eval loss at x, with a bar from the lowest to the highest seed."""
    err = [[s.eval_loss_mean - s.eval_loss_min], [s.eval_loss_max - s.eval_loss_mean]]
    ax.errorbar(x, s.eval_loss_mean, yerr=err, fmt=marker, color=colour, capsize=3, ms=5, label=label)


def frontier(stats, points, path: Path) -> Path:
    """Mean eval loss over seeds against training FLOPs, a bar from the lowest to the highest seed;
    one colour per family (a marker per size), and a line through each family's frontier (its best
    size at each budget)."""
    colour, marker = _family_styles(stats)
    fig, ax = plt.subplots(figsize=(6.8, 4.2))
    for s in stats:
        if s.eval_loss_mean is not None:
            _spread_bars(ax, s, s.training_flops, colour[s.family], marker[s.group],
                         f"{s.group} (n={s.n})" if s.budget_label in ("", "b1") else None)
    for family in colour:
        pts = sorted((p.best.training_flops, p.best.eval_loss_mean) for p in points if p.family == family)
        if len(pts) > 1:
            ax.plot(*zip(*pts, strict=True), "--", color=colour[family], lw=1.2)
    return _finish(fig, ax, path, "training FLOPs (as compiled)", _MEAN_LOSS,
                   "isoFLOP frontier per family (bars: min-max over seeds; dashed: best size)",
                   legend=bool(stats), title_size=9)


def loss_vs_inference_flops(stats, path: Path, verdict=None) -> Path:
    """Eval loss of each arm group as it runs at inference (mean over seeds, min-max bars; routed as
    decoding routes where measured, else the training eval) against its inference FLOPs per token;
    with a verdict, a dotted line at the goal's fraction of the baseline's inference FLOPs."""
    colour, marker = _family_styles(stats)
    fig, ax = plt.subplots(figsize=(6.8, 4.2))
    for s in stats:
        loss, routed = s.deployed_loss()
        if loss is None:
            continue
        lo, hi = ((s.inference_loss_min, s.inference_loss_max) if routed
                  else (s.eval_loss_min, s.eval_loss_max))
        ax.errorbar(s.inference_flops_per_token, loss, yerr=[[loss - lo], [hi - loss]], fmt=marker[s.group],
                    color=colour[s.family], capsize=3, ms=5, mfc=None if routed else "none")
        name = "_".join(x for x in (s.group, s.budget_label) if x)
        ax.annotate(name, (s.inference_flops_per_token, loss), textcoords="offset points",
                    xytext=(4, 3), fontsize=7)
    base = [c.baseline for c in (verdict.cells if verdict else ()) if c.baseline is not None]
    if base:
        x = verdict.goal.max_fraction * base[0].inference_flops_per_token
        ax.axvline(x, ls=":", color="grey", lw=1,
                   label=f"{verdict.goal.max_fraction:.2f}x {base[0].group}'s inference FLOPs (goal)")
    ax.margins(x=0.12)  # room for the labels of the outermost points
    return _finish(fig, ax, path, "inference FLOPs per token (routed models: measured depth)",
                   "final eval loss as run at inference, mean over seeds",
                   "eval loss against inference cost (hollow: depth not measured)", legend=bool(base))


def routing_stats(results, path: Path) -> Path:
    """Per arm: mean active depth against the most it could run, and skip / drop rates (radial)."""
    names = [r.name for r in results]
    x = np.arange(len(names))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(max(7.0, 1.1 * len(names) + 3), 4.0))
    ax1.bar(x, [r.max_depth for r in results], color="lightgrey", label="max depth")
    ax1.bar(x, [r.active_depth or 0.0 for r in results], width=0.55, color="tab:blue",
            label="mean active depth")
    ax1.set_ylabel("blocks per token")
    ax1.set_title("active depth (last eval)", fontsize=10)
    ax1.legend(fontsize=7)
    w = 0.38
    ax2.bar(x - w / 2, [r.skip_rate or 0.0 for r in results], w, color="tab:orange", label="skip rate")
    ax2.bar(x + w / 2, [r.drop_rate or 0.0 for r in results], w, color="tab:red", label="drop rate")
    ax2.set_ylabel("fraction")
    ax2.set_title("routing: skip / capacity drop (radial arms)", fontsize=10)
    ax2.legend(fontsize=7)
    for ax in (ax1, ax2):
        ax.set_xticks(x, names, rotation=45, ha="right", fontsize=7)
    return save_figure(fig, path)
