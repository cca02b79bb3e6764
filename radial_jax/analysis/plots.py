"""PNG plots of a profile report (profile.py): ratios by layer, their distribution, oracle depth; routing."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from radial_jax.analysis.ratios import RATIO_FORMULA  # noqa: E402


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
    ax.set_ylabel(f"residual ratio {RATIO_FORMULA[report['ratio']]} (%)")
    ax.set_title(f"residual ratio ({report['ratio']}) by layer", fontsize=10)
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
    ax.set_ylabel(f"residual ratio {RATIO_FORMULA[report['ratio']]} (per token)")
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


def radial_ratio_plot(report: dict, path: Path) -> Path:
    """Median residual ratio per (routing step, pool layer) over the tokens that layer processed
    (blank: none), beside the prefix blocks' medians."""
    rs, p = report["ratios"], report["pool_size"]
    med = np.array([[x["median"] if x["tokens"] else np.nan for x in row["layers"]] for row in rs["steps"]])
    n_pre = len(rs["prefix_blocks"])
    fig, axes = plt.subplots(1, 2 if n_pre else 1, figsize=(3.0 + 0.9 * p + (2.6 if n_pre else 0),
                                                           1.6 + 0.5 * len(med)),
                             gridspec_kw={"width_ratios": [p + 1, 2]} if n_pre else None, squeeze=False)
    ax = axes[0, 0]
    im = ax.imshow(100 * med, cmap="magma", aspect="auto")
    for (t, j), v in np.ndenumerate(med):
        n = rs["steps"][t]["layers"][j]["tokens"]
        light = np.nanmax(med) > 0 and v > 0.5 * (np.nanmin(med) + np.nanmax(med))
        ax.text(j, t, f"{100 * v:.1f}%\n{n} tok" if n else "-", ha="center", va="center", fontsize=7,
                color="black" if light else "white")
    ax.set_xticks(range(p), [f"L{i}" for i in range(p)])
    ax.set_yticks(range(len(med)), [f"step {t}" for t in range(len(med))])
    ax.set_title(f"median ratio ({report['ratio']}: {RATIO_FORMULA[report['ratio']]})\n"
                 "over the tokens each layer processed", fontsize=9)
    fig.colorbar(im, ax=ax, label="%")
    if n_pre:
        bx = axes[0, 1]
        names = [b["name"].removeprefix("prefix ") for b in rs["prefix_blocks"]]
        bx.barh(range(n_pre), [100 * b["median"] for b in rs["prefix_blocks"]], color="tab:grey")
        bx.set_yticks(range(n_pre), names, fontsize=7)
        bx.invert_yaxis()
        bx.set_xlabel("median ratio (%)")
        bx.set_title("prefix blocks", fontsize=9)
    return save_figure(fig, path)


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
    paths = {"route_load": save_figure(fig, out / "route_load.png"),
             "ratio_by_step_layer": radial_ratio_plot(report, out / "ratio_by_step_layer.png")}

    d = report["depth"]
    h = np.asarray(d["hist"], float)
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    ax.bar(np.arange(len(h)), h / max(h.sum(), 1))
    ax.set_xlabel(f"layers run per token (prefix + routed; at most {d['max_possible']})")
    ax.set_ylabel("fraction of tokens")
    ax.set_title(f"dynamic depth: mean {d['mean']:.2f}", fontsize=10)
    paths["depth_hist"] = save_figure(fig, out / "depth_hist.png")
    return paths


def trend_plot(report: dict, path: Path) -> Path:
    """Median ratio per model (q25-q75 bars) against parameter count, log x; the paper's values beside
    them (filled: confirmed in its text, hollow: secondary summaries only)."""
    fig, ax = plt.subplots(figsize=(6.8, 4.0))
    pts = report["models"]
    x = np.array([p["params"] for p in pts], float)
    y = np.array([100 * p["median"] for p in pts])
    err = np.array([[100 * (p["median"] - p["q25"]) for p in pts],
                    [100 * (p["q75"] - p["median"]) for p in pts]])
    ax.errorbar(x, y, yerr=err, fmt="o-", color="tab:blue", capsize=3, label="this project (median, q25-q75)")
    for p, xi, yi in zip(pts, x, y, strict=True):
        ax.annotate(p["shape"].split(",")[0], (xi, yi), textcoords="offset points", xytext=(4, 4), fontsize=7)
    named = set()
    for v in report["paper"]:
        if v["params"] is None:
            continue
        confirmed = v["status"].startswith("confirmed")
        ax.plot(v["params"], 100 * v["median"], "s", color="tab:red", mfc="tab:red" if confirmed else "none",
                label=f"paper: {v['model']} ({'confirmed' if confirmed else 'not confirmed'})")
        if v["model"] not in named:  # one label per model, whatever its number of reported values
            named.add(v["model"])
            ax.annotate(v["model"], (v["params"], 100 * v["median"]), textcoords="offset points",
                        xytext=(-12, -12), fontsize=7, color="tab:red")
    ax.set_xscale("log")
    ax.set_yscale("log")  # the first blocks' upper quartiles exceed 100%; the medians would flatten
    ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}%"))
    ax.set_xlabel("parameters (embeddings included)")
    ax.set_ylabel("median residual ratio (%)")
    ax.set_title(f"residual ratio ({report['ratio']}: {RATIO_FORMULA[report['ratio']]}) against model size\n"
                 "paper values: normalisation not given, other models and data", fontsize=9)
    handles, labels = ax.get_legend_handles_labels()
    seen = dict(zip(labels, handles, strict=True))
    ax.legend(seen.values(), seen.keys(), fontsize=7)
    return save_figure(fig, path)
