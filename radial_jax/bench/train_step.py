"""Benchmark: train step time of configs side by side (default: tiny vs radial_tiny), with FLOPs.

Times the jitted train step on fixed synthetic packed batches (data loading excluded), after
compiling and warming up; reports the median of several timed windows. Prints a table and JSON;
never asserts a time. Run: `radial bench train [--configs A.yaml B.yaml] [--out FILE]`.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from radial_jax.config import load_config
from radial_jax.model.build import build_model, count_params
from radial_jax.model.flops import flops_per_token
from radial_jax.train.optimizer import lr_schedule, make_optimizer
from radial_jax.train.step import init_state, make_train_step

DEFAULT_CONFIGS = ("configs/tiny.yaml", "configs/radial_tiny.yaml")


def synthetic_batch(batch: int, seq_len: int, seed: int = 0) -> dict:
    """Rows of four packed documents each, random bytes: the shapes and masks of real batches."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, 256, (batch, seq_len + 1)).astype(np.int32)
    seg = np.repeat(np.arange(1, 5), -(-(seq_len + 1) // 4))[: seq_len + 1]
    seg = np.broadcast_to(seg, (batch, seq_len + 1)).astype(np.int32)
    pos = np.concatenate([np.arange((seg[0] == s).sum()) for s in range(1, 5)]).astype(np.int32)
    pos = np.broadcast_to(pos, (batch, seq_len + 1))
    return {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "positions": pos[:, :-1],
            "segment_ids": seg[:, :-1],
            "loss_mask": ((seg[:, :-1] == seg[:, 1:]) & (seg[:, :-1] != 0)).astype(np.float32)}


def time_train_step(cfg, *, warmup: int = 3, windows: int = 5, steps_per_window: int = 5) -> dict:
    model = build_model(cfg)
    n_params = count_params(model)
    graphdef, params = nnx.split(model, nnx.Param)
    tx = make_optimizer(cfg.train, cfg.routing.balance_rate)
    state = init_state(params, tx)
    step = jax.jit(make_train_step(graphdef, tx, lr_schedule(cfg.train)), donate_argnums=0)
    batch = jax.device_put(synthetic_batch(cfg.data.batch_size, cfg.data.seq_len))
    t0 = time.perf_counter()
    state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    compile_s = time.perf_counter() - t0
    for _ in range(warmup):
        state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    times = []
    for _ in range(windows):
        t0 = time.perf_counter()
        for _ in range(steps_per_window):
            state, metrics = step(state, batch)
        jax.block_until_ready(metrics)
        times.append((time.perf_counter() - t0) / steps_per_window)
    f = flops_per_token(cfg)
    step_s = statistics.median(times)
    tokens = cfg.data.batch_size * cfg.data.seq_len
    out = {"kind": cfg.model.kind, "params": n_params, "step_time_s": step_s,
           "step_time_spread_s": [min(times), max(times)], "tokens_per_s": tokens / step_s,
           "compile_s": compile_s, "train_flops_per_token": f.train,
           "compiled_active_fraction": f.forward / f.dense_equivalent}
    if cfg.model.kind == "radial":
        out["measured_active_fraction"] = float(metrics["route/active_fraction"])
    return out


def run(config_paths=DEFAULT_CONFIGS, overrides=(), out: str | None = None, steps: int = 25) -> dict:
    """`steps`: timed steps per config, in windows of up to 5 (after up to 3 untimed ones)."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    per_window = min(5, steps)
    results = {}
    for path in config_paths:
        cfg = load_config(path, list(overrides))
        results[Path(path).stem] = time_train_step(cfg, warmup=min(3, steps), windows=steps // per_window,
                                                   steps_per_window=per_window)
    report = {"benchmark": "train_step", "device": str(jax.devices()[0].device_kind),
              "platform": platform.processor() or platform.machine(), "cpu_count": _cpus(),
              "results": results}
    names = list(results)
    if len(names) == 2 and results[names[0]]["kind"] == "dense" and results[names[1]]["kind"] == "radial":
        d, r = results[names[0]], results[names[1]]
        ratio = r["step_time_s"] / d["step_time_s"]
        report["radial_over_dense_step_time"] = ratio
        report["target"] = 1.2 * r["compiled_active_fraction"]
    print(format_table(report))
    print(json.dumps(report, indent=2))
    if out:
        Path(out).write_text(json.dumps(report, indent=2))
    return report


def format_table(report: dict) -> str:
    rows = ["| config | kind | params | step time (ms) | tokens/s | train GFLOPs/token | active fraction |",
            "|---|---|---|---|---|---|---|"]
    for name, r in report["results"].items():
        frac = r.get("compiled_active_fraction", 1.0)
        rows.append(f"| {name} | {r['kind']} | {r['params']:,} | {1e3 * r['step_time_s']:.1f} | "
                    f"{r['tokens_per_s']:,.0f} | {r['train_flops_per_token'] / 1e9:.4f} | {frac:.2f} |")
    if "radial_over_dense_step_time" in report:
        rows.append(f"\nradial / dense step time: {report['radial_over_dense_step_time']:.2f} "
                    f"(target <= 1.2 x active fraction = {report['target']:.2f})")
    return "\n".join(rows)


def _cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
