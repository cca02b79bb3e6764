"""`radial profile`: residual ratios and oracle skipping (dense models), ratios and routing statistics
(radial).

Dense: for every attention and MLP residual block, the per-token residual ratio (ratios.py: `stream`
||f(x)|| / ||x|| or `output` ||f(x)|| / ||x + f(x)||, padding excluded), summarised per block (median,
quartiles) and over all blocks; then, per oracle threshold, how many blocks each token runs and the
eval loss with the skips applied (oracle.py).
Radial: the ratios of the prefix blocks and of each pool layer at each routing step over the tokens
it processed, the router's load per step and pool layer, the dynamic-depth histogram, and which
tokens go deep. Both write `profile.json`, PNG plots and a markdown table into the output folder.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from radial_jax.analysis.oracle import VARIANT, block_names, make_oracle_step
from radial_jax.analysis.ratios import RATIO_FORMULA, check_ratio, radial_ratios, ratio_definition
from radial_jax.data.pipeline import make_eval_batches
from radial_jax.io.load import load_model
from radial_jax.train.loss import masked_sum_and_count, token_nll


def parse_thresholds(text: str) -> list[float]:
    """"0.01,0.02,0.05" -> [0.01, 0.02, 0.05]; "" or "none" -> []."""
    if not text or text.strip().lower() == "none":
        return []
    try:
        out = [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise ValueError(f"--oracle {text!r}: give comma-separated thresholds, e.g. 0.01,0.05") from None
    bad = [t for t in out if not (math.isfinite(t) and t >= 0)]
    if bad:
        raise ValueError(f"--oracle thresholds must be finite and >= 0, got {bad}")
    return sorted(set(out))


def _stats(x: np.ndarray) -> dict[str, float]:
    if x.size == 0:
        return {"median": float("nan"), "q25": float("nan"), "q75": float("nan"),
                "p10": float("nan"), "p90": float("nan"), "mean": float("nan"), "tokens": 0}
    q10, q25, q50, q75, q90 = np.quantile(x, [0.1, 0.25, 0.5, 0.75, 0.9])
    return {"median": float(q50), "q25": float(q25), "q75": float(q75), "p10": float(q10),
            "p90": float(q90), "mean": float(x.mean()), "tokens": int(x.size)}


def _loss(nll: float, tokens: float) -> dict[str, float]:
    loss = nll / max(tokens, 1.0)
    return {"loss": loss, "perplexity": float(math.exp(min(loss, 50.0)))}


# ------------------------------------------------------------------------------------------ dense


def profile_dense(graphdef: nnx.GraphDef, params, batches: Sequence[dict],
                  thresholds: Sequence[float], *, n_layers: int, ratio: str = "stream") -> dict:
    """Per-block residual-ratio statistics, the plain eval loss, and one oracle row per threshold
    (the oracle thresholds the same normalisation, `ratio`)."""
    check_ratio(ratio)
    step = jax.jit(make_oracle_step(graphdef, ratio))
    names = block_names(n_layers)
    n_blocks = len(names)

    def run(threshold: float, keep_ratios: bool):
        ratios, depth, ran_count, nll, tokens, valid_total = [], [], np.zeros(n_blocks), 0.0, 0.0, 0
        for batch in batches:
            out = jax.device_get(step(params, batch, threshold))
            valid = np.asarray(batch["segment_ids"]) != 0
            ran = np.asarray(out.ran_NxBxS)[:, valid]  # [N, tokens]
            if keep_ratios:
                ratios.append(np.asarray(out.ratio_NxBxS)[:, valid])
            depth.append(ran.sum(0))
            ran_count += ran.sum(1)
            valid_total += int(valid.sum())
            nll += float(out.nll)
            tokens += float(out.tokens)
        return ratios, np.concatenate(depth), ran_count / max(valid_total, 1), nll, tokens

    ratios, _, _, nll0, tokens0 = run(0.0, keep_ratios=True)
    all_ratios = np.concatenate(ratios, axis=1)  # [N, tokens]
    blocks = [{"name": name, "layer": i // 2, "kind": name.split(".")[1], **_stats(all_ratios[i])}
              for i, name in enumerate(names)]
    base = _loss(nll0, tokens0)
    oracle = []
    for thr in thresholds:
        _, depth, run_rate, nll, tokens = run(float(thr), keep_ratios=False)
        row = {"threshold": float(thr), "mean_blocks": float(depth.mean()),
               "mean_fraction": float(depth.mean() / n_blocks),
               "depth_quantiles": {k: float(v) for k, v in zip(
                   ("p10", "p25", "p50", "p75", "p90"),
                   np.quantile(depth, [0.1, 0.25, 0.5, 0.75, 0.9]), strict=True)},
               "depth_hist": np.bincount(depth, minlength=n_blocks + 1).tolist(),
               "run_rate_per_block": [float(x) for x in run_rate],
               **_loss(nll, tokens)}
        row["loss_increase"] = row["loss"] - base["loss"]
        oracle.append(row)
    return {
        "kind": "dense",
        "ratio": ratio,
        "definition": ratio_definition(ratio),
        "blocks": blocks,
        "overall": _stats(all_ratios.reshape(-1)),
        "median_of_block_medians": float(np.median([b["median"] for b in blocks])),
        "eval": {**base, "tokens": tokens0, "blocks_per_token": n_blocks},
        "oracle": {"variant": VARIANT, "rows": oracle},
        "_ratios": all_ratios,  # for the plots; dropped from the JSON
    }


# ------------------------------------------------------------------------------------------ radial


def _make_radial_step(graphdef: nnx.GraphDef):
    def step(params, batch):
        model = nnx.merge(graphdef, params)
        logits, aux = model(batch["inputs"], batch["positions"], batch["segment_ids"], return_trace=True)
        nll, count = masked_sum_and_count(token_nll(logits, batch["targets"]), batch["loss_mask"])
        loads = aux.metrics  # route/... metrics
        return nll, count, loads, aux.trace_TxBxS

    return step


def _make_ratio_step(graphdef: nnx.GraphDef, ratio: str):
    def step(params, batch):
        return radial_ratios(nnx.merge(graphdef, params), batch["inputs"], batch["positions"],
                             batch["segment_ids"], ratio)

    return step


def radial_ratio_stats(prefix_NxM: np.ndarray, step_TxM: np.ndarray, layer_TxM: np.ndarray,
                       kept_TxM: np.ndarray, pool_size: int) -> dict:
    """Ratio statistics over M real tokens: per prefix block, and per (step, pool layer) over the tokens
    that layer processed at that step (tokens that ran several layers at one step: `multi`)."""
    p = pool_size
    names = block_names(prefix_NxM.shape[0] // 2)
    prefix = [{"name": f"prefix {n}", "layer": i // 2, "kind": n.split(".")[1], **_stats(prefix_NxM[i])}
              for i, n in enumerate(names)]
    steps, routed = [], []
    for t in range(step_TxM.shape[0]):
        one = kept_TxM[t] == 1
        layers = []
        for j in range(p):
            r = step_TxM[t, one & (layer_TxM[t] == j)]
            layers.append({"layer": j, **_stats(r)})
            routed.append(r)
        multi = step_TxM[t, kept_TxM[t] > 1]
        routed.append(multi)
        steps.append({"step": t, "layers": layers, "multi": _stats(multi) if multi.size else None})
    routed_all = np.concatenate(routed) if routed else np.zeros(0)
    return {"prefix_blocks": prefix, "steps": steps, "routed_overall": _stats(routed_all),
            "overall": _stats(np.concatenate([prefix_NxM.reshape(-1), routed_all]))}


def profile_radial(graphdef: nnx.GraphDef, params, batches: Sequence[dict], *, pool_size: int,
                   steps: int, prefix_layers: int, decode=None, top: int = 12,
                   min_count: int = 20, ratio: str = "stream") -> dict:
    """Residual ratios per prefix block and per (routing step, pool layer); load per routing step and
    pool layer, dynamic-depth histogram, and the deepest/shallowest tokens."""
    check_ratio(ratio)
    step = jax.jit(_make_radial_step(graphdef))
    ratio_step = jax.jit(_make_ratio_step(graphdef, ratio))
    kept_ratios: dict[str, list] = {"prefix": [], "step": [], "layer": [], "kept": []}
    same_trace = True
    p, t_steps = pool_size, steps
    load_TxR = np.zeros((t_steps, p + 1))  # fraction of real tokens per (step, layer | skip)
    depth_all, token_ids, nll, tokens, route = [], [], 0.0, 0.0, {}
    for batch in batches:
        b_nll, b_count, aux, trace = jax.device_get(step(params, batch))
        valid = np.asarray(batch["segment_ids"]) != 0
        tr = np.asarray(trace)[:, valid]  # [T, tokens]: layer run at each step, P = skipped/dropped
        rr = jax.device_get(ratio_step(params, batch))
        for name, a in (("prefix", rr.prefix_NxBxS), ("step", rr.step_TxBxS), ("layer", rr.layer_TxBxS),
                        ("kept", rr.kept_TxBxS)):
            kept_ratios[name].append(np.asarray(a)[:, valid])
        same_trace &= bool(np.array_equal(kept_ratios["layer"][-1], tr))
        for t in range(t_steps):
            load_TxR[t] += np.bincount(tr[t], minlength=p + 1)[: p + 1]
        depth_all.append(prefix_layers + (tr < p).sum(0))
        token_ids.append(np.asarray(batch["inputs"])[valid])
        nll += float(b_nll)
        tokens += float(b_count)
        for k, v in aux.items():
            if "/load/" not in k:
                route.setdefault(k, []).append(float(v))
    depth = np.concatenate(depth_all)
    ids = np.concatenate(token_ids)
    load_TxR /= max(depth.size, 1)
    max_depth = prefix_layers + t_steps
    sums = np.bincount(ids, weights=depth)
    counts = np.bincount(ids)
    seen = np.flatnonzero(counts >= min_count)
    mean_depth = sums[seen] / counts[seen]
    order = np.argsort(mean_depth)

    def rows(sel):
        return [{"token_id": int(seen[i]), "text": decode([int(seen[i])]) if decode else str(seen[i]),
                 "mean_depth": float(mean_depth[i]), "count": int(counts[seen[i]])} for i in sel]

    cat = {k: np.concatenate(v, axis=1) for k, v in kept_ratios.items()}
    return {
        "kind": "radial",
        "ratio": ratio,
        "definition": ratio_definition(ratio),
        "ratios": {**radial_ratio_stats(cat["prefix"], cat["step"], cat["layer"], cat["kept"], p),
                   # the step-by-step pass routed every token as the model's forward pass did
                   "matches_forward_routing": same_trace},
        "eval": {**_loss(nll, tokens), "tokens": tokens},
        "route": {k.split("/", 1)[1]: float(np.mean(v)) for k, v in route.items()},
        "pool_size": p, "steps": t_steps, "prefix_layers": prefix_layers,
        "load_per_step": [{"step": t, "layers": [float(x) for x in load_TxR[t, :p]],
                           "skip": float(load_TxR[t, p])} for t in range(t_steps)],
        "depth": {"mean": float(depth.mean()), "max_possible": max_depth,
                  "mean_fraction": float(depth.mean() / max(prefix_layers + p, 1)),
                  "hist": np.bincount(depth, minlength=max_depth + 1).tolist()},
        "deepest_tokens": rows(order[::-1][:top]),
        "shallowest_tokens": rows(order[:top]),
        "token_min_count": min_count,
    }


# ------------------------------------------------------------------------------------------ output


def _fmt(x: float, pct: bool = False) -> str:
    return f"{100 * x:.2f}%" if pct else f"{x:.4f}"


def dense_table(report: dict) -> str:
    """Markdown: per-block ratios, then the oracle rows (threshold 0 = the model as trained)."""
    per_block = report["overall"]["tokens"] // len(report["blocks"])
    lines = [f"Residual ratio ({report['ratio']}) r = {RATIO_FORMULA[report['ratio']]} over {per_block} "
             "tokens per block (padding excluded)", "",
             "| block | median | q25 | q75 |", "|---|---|---|---|"]
    for b in report["blocks"]:
        lines.append(f"| {b['name']} | {_fmt(b['median'], True)} | {_fmt(b['q25'], True)} | "
                     f"{_fmt(b['q75'], True)} |")
    o = report["overall"]
    lines += [f"| all blocks | {_fmt(o['median'], True)} | {_fmt(o['q25'], True)} | {_fmt(o['q75'], True)} |",
              ""]
    rows = report["oracle"]["rows"]
    if rows:
        n = report["eval"]["blocks_per_token"]
        base = report["eval"]
        lines += [f"Oracle skipping (block skipped for a token when its r < threshold; {n} blocks)", "",
                  "| threshold | blocks run / token | fraction | depth p10-p50-p90 | eval loss | "
                  "perplexity | loss increase |", "|---|---|---|---|---|---|---|",
                  f"| 0 (none) | {n:.2f} | 100.0% | {n}-{n}-{n} | {base['loss']:.4f} | "
                  f"{base['perplexity']:.3f} | 0 |"]
        for r in rows:
            q = r["depth_quantiles"]
            lines.append(f"| {r['threshold']:g} | {r['mean_blocks']:.2f} | {100 * r['mean_fraction']:.1f}% | "
                         f"{q['p10']:g}-{q['p50']:g}-{q['p90']:g} | {r['loss']:.4f} | "
                         f"{r['perplexity']:.3f} | {r['loss_increase']:+.4f} |")
    return "\n".join(lines)


def radial_ratio_table(report: dict) -> str:
    """Markdown: median [q25-q75] (tokens) of each prefix block and of each (step, pool layer)."""
    rs, p = report["ratios"], report["pool_size"]

    def cell(st: dict | None) -> str:
        if not st or not st["tokens"]:
            return "-"
        q = f"{_fmt(st['q25'], True)}-{_fmt(st['q75'], True)}"
        return f"{_fmt(st['median'], True)} [{q}] ({st['tokens']})"

    multi = any(row["multi"] for row in rs["steps"])
    lines = [f"Residual ratio ({report['ratio']}) r = {RATIO_FORMULA[report['ratio']]}, median [q25-q75] "
             "(tokens), over the tokens each pool layer processed at each step (skipped and dropped "
             "tokens excluded)", "",
             "| step | " + " | ".join(f"layer {i}" for i in range(p))
             + (" | several layers |" if multi else " |"),
             "|---" * (p + 1 + multi) + "|"]
    for row in rs["steps"]:
        lines.append(f"| {row['step']} | " + " | ".join(cell(x) for x in row["layers"])
                     + (f" | {cell(row['multi'])} |" if multi else " |"))
    if rs["prefix_blocks"]:
        lines += ["", "| prefix block | ratio |", "|---|---|"]
        lines += [f"| {b['name']} | {cell(b)} |" for b in rs["prefix_blocks"]]
    lines += ["", f"all routed updates: {cell(rs['routed_overall'])}; prefix blocks and routed updates: "
              f"{cell(rs['overall'])}"]
    if not rs["matches_forward_routing"]:
        lines.append("WARNING: the step-by-step pass routed tokens differently from the model's forward pass")
    return "\n".join(lines)


def radial_table(report: dict) -> str:
    p = report["pool_size"]
    lines = [radial_ratio_table(report), "",
             "Load per routing step (fraction of tokens per pool layer; skip = skipped or dropped)", "",
             "| step | " + " | ".join(f"layer {i}" for i in range(p)) + " | skip |",
             "|---" * (p + 2) + "|"]
    for row in report["load_per_step"]:
        lines.append(f"| {row['step']} | " + " | ".join(f"{x:.3f}" for x in row["layers"])
                     + f" | {row['skip']:.3f} |")
    d, e = report["depth"], report["eval"]
    lines += ["", f"mean depth {d['mean']:.2f} of {d['max_possible']} (active fraction "
              f"{d['mean_fraction']:.3f}); eval loss {e['loss']:.4f}, perplexity {e['perplexity']:.3f}", "",
              "Deepest tokens: " + ", ".join(f"{r['text']!r} {r['mean_depth']:.2f}"
                                             for r in report["deepest_tokens"]),
              "Shallowest tokens: " + ", ".join(f"{r['text']!r} {r['mean_depth']:.2f}"
                                                for r in report["shallowest_tokens"])]
    return "\n".join(lines)


def write_report(report: dict, out_dir: str | Path) -> dict[str, Path]:
    """profile.json, profile.md and the PNG plots; returns {name: path}."""
    from radial_jax.analysis import plots  # deferred: matplotlib is heavy, and only reports draw

    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    if report["kind"] == "dense":
        paths.update(plots.dense_plots(report, out))
        table = dense_table(report)
    else:
        paths.update(plots.radial_plots(report, out))
        table = radial_table(report)
    public = {k: v for k, v in report.items() if not k.startswith("_")}
    public["plots"] = {k: str(v) for k, v in paths.items()}
    paths["json"] = out / "profile.json"
    paths["json"].write_text(json.dumps(public, indent=2) + "\n")
    paths["table"] = out / "profile.md"
    paths["table"].write_text(table + "\n")
    report["_table"] = table
    return paths


def run_profile(model_path: str, overrides: Sequence[str] = (), *, out_dir: str | None = None,
                n_batches: int = 0, thresholds: Sequence[float] = (0.05,), step: int | None = None,
                ratio: str = "stream") -> tuple[dict, dict[str, Path]]:
    """Load a run dir / export dir / Hugging Face dir, profile it on validation batches, write outputs."""
    loaded = load_model(model_path, overrides, step=step)
    cfg = loaded.cfg
    batches = make_eval_batches(cfg.data, loaded.tokenizer, n_batches or cfg.train.eval_batches)
    m = cfg.model
    if m.kind == "dense":
        report = profile_dense(loaded.graphdef, loaded.params, batches, thresholds, n_layers=m.n_layers,
                               ratio=ratio)
    else:
        report = profile_radial(loaded.graphdef, loaded.params, batches, pool_size=m.pool_size,
                                steps=m.steps, prefix_layers=m.prefix_layers,
                                decode=loaded.tokenizer.decode, ratio=ratio)
    report = {"checkpoint": str(model_path), "step": loaded.step, "source": loaded.source,
              "data": {"source": cfg.data.source, "batches": len(batches),
                       "batch_size": int(batches[0]["inputs"].shape[0]) if batches else 0,
                       "seq_len": cfg.data.seq_len},
              **report}
    target = Path(out_dir) if out_dir else _default_out(model_path)
    paths = write_report(report, target)
    return report, paths


def _default_out(model_path: str) -> Path:
    return Path(model_path).expanduser() / "profile"


__all__ = ["profile_dense", "profile_radial", "run_profile", "write_report", "dense_table",
           "radial_table", "radial_ratio_stats", "parse_thresholds"]
