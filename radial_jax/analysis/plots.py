"""PNG plots of a profile report (profile.py): ratios by layer, their distribution, oracle depth; routing."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def save_figure(fig, path: Path) -> Path:
    """Write a figure as PNG and free it (shared by the profile and sweep plots)."""
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def ratio_by_layer(report: dict, path: Path) -> Path:
    """Median residual ratio of each layer's attention and MLP block, quartiles shaded (cf. the paper)."""
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    for kind, colour in (("attn", "tab:blue"), ("mlp", "tab:orange")):
        rows = [b for b in report["blocks"] if b["kind"] == kind]
        layers = [b["layer"] for b in rows]
        ax.plot(layers, [100 * b["median"] for b in rows], "o-", color=colour, label=f"{kind} (median)")
        ax.fill_between(layers, [100 * b["q25"] for b in rows], [100 * b["q75"] for b in rows],
                        color=colour, alpha=0.2, label=f"{kind} (q25-q75)")
    ax.axhline(100 * report["overall"]["median"], color="grey", ls="--", lw=1,
               label=f"all blocks median {100 * report['overall']['median']:.1f}%")
    ax.set_xlabel("layer")
    ax.set_ylabel("residual ratio ||f(x)|| / ||x|| (%)")
    ax.set_title("residual ratio by layer", fontsize=10)
    ax.set_xticks(sorted({b["layer"] for b in report["blocks"]}))
    ax.set_yscale("log")  # first layers often add far more than the stream holds; the rest would flatten
    ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}%"))
    ax.legend(fontsize=7)
    return save_figure(fig, path)


def ratio_distribution(report: dict, ratios_NxM: np.ndarray, path: Path) -> Path:
    """Per-block box plots (whiskers p5-p95) of the per-token ratio, log scale."""
    names = [b["name"] for b in report["blocks"]]
    fig, ax = plt.subplots(figsize=(max(6.4, 0.45 * len(names) + 2), 3.8))
    data = [np.maximum(r, 1e-6) for r in ratios_NxM]
    ax.boxplot(data, whis=(5, 95), showfliers=False, tick_labels=names)
    ax.set_yscale("log")
    ax.set_ylabel("residual ratio (per token)")
    ax.set_title("distribution of per-token residual ratios (boxes q25-q75, whiskers p5-p95)", fontsize=10)
    ax.tick_params(axis="x", rotation=60, labelsize=7)
    return save_figure(fig, path)


def oracle_depth(report: dict, path: Path) -> Path:
    """Histogram of blocks run per token under each oracle threshold."""
    n = report["eval"]["blocks_per_token"]
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    x = np.arange(n + 1)
    for row in report["oracle"]["rows"]:
        h = np.asarray(row["depth_hist"], float)
        ax.step(x, h / max(h.sum(), 1), where="mid",
                label=f"r < {row['threshold']:g}: mean {row['mean_blocks']:.1f}")
    ax.set_xlabel(f"blocks run per token (of {n})")
    ax.set_ylabel("fraction of tokens")
    ax.set_title("dynamic depth under oracle skipping", fontsize=10)
    ax.legend(fontsize=7)
    return save_figure(fig, path)


def oracle_tradeoff(report: dict, path: Path) -> Path:
    """Eval loss against mean blocks run per token, one point per threshold (0 = the trained model)."""
    n = report["eval"]["blocks_per_token"]
    rows = report["oracle"]["rows"]
    xs = [n] + [r["mean_blocks"] for r in rows]
    ys = [report["eval"]["loss"]] + [r["loss"] for r in rows]
    labels = ["0"] + [f"{r['threshold']:g}" for r in rows]
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    ax.plot(xs, ys, "o-")
    points: dict[float, tuple[float, float, list[str]]] = {}  # thresholds skipping nothing share one
    for x, y, lab in zip(xs, ys, labels, strict=True):
        points.setdefault(round(x, 2), (x, y, []))[2].append(lab)
    for i, (x, y, labs) in enumerate(points.values()):  # labels alternate above/below the line
        ax.annotate(", ".join(labs), (x, y), textcoords="offset points", xytext=(0, 6 if i % 2 else -12),
                    fontsize=7, ha="right" if x == max(xs) else "center")
    ax.set_xlabel(f"mean blocks run per token (of {n})")
    ax.set_ylabel("eval loss (nats/token)")
    ax.set_title("oracle skipping: loss against depth (labels: threshold)", fontsize=10)
    return save_figure(fig, path)


def dense_plots(report: dict, out: Path) -> dict[str, Path]:
    paths = {"ratio_by_layer": ratio_by_layer(report, out / "ratio_by_layer.png"),
             "ratio_distribution": ratio_distribution(report, report["_ratios"],
                                                      out / "ratio_distribution.png")}
    if report["oracle"]["rows"]:
        paths["oracle_depth"] = oracle_depth(report, out / "oracle_depth.png")
        paths["oracle_tradeoff"] = oracle_tradeoff(report, out / "oracle_tradeoff.png")
    return paths


def radial_plots(report: dict, out: Path) -> dict[str, Path]:
    """Load heatmap (steps x pool layers + skip) and the dynamic-depth histogram."""
    p = report["pool_size"]
    load = np.array([r["layers"] + [r["skip"]] for r in report["load_per_step"]])
    fig, ax = plt.subplots(figsize=(1.2 + 0.8 * (p + 1), 1.2 + 0.5 * len(load)))
    im = ax.imshow(load, cmap="viridis", vmin=0, vmax=max(load.max(), 1e-9), aspect="auto")
    for (t, j), v in np.ndenumerate(load):
        ax.text(j, t, f"{v:.2f}", ha="center", va="center", fontsize=7,
                color="white" if v < 0.6 * load.max() else "black")
    ax.set_xticks(range(p + 1), [f"L{i}" for i in range(p)] + ["skip"])
    ax.set_yticks(range(len(load)), [f"step {t}" for t in range(len(load))])
    ax.set_title("router load (fraction of tokens)", fontsize=10)
    fig.colorbar(im, ax=ax)
    paths = {"route_load": save_figure(fig, out / "route_load.png")}

    d = report["depth"]
    h = np.asarray(d["hist"], float)
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    ax.bar(np.arange(len(h)), h / max(h.sum(), 1))
    ax.set_xlabel(f"layers run per token (prefix + routed; at most {d['max_possible']})")
    ax.set_ylabel("fraction of tokens")
    ax.set_title(f"dynamic depth: mean {d['mean']:.2f}", fontsize=10)
    paths["depth_hist"] = save_figure(fig, out / "depth_hist.png")
    return paths
