"""Benchmark: where a radial model's decode time goes, at batch 1 or batched.

One radial model (a trained run directory, or a config with random weights) is timed as it routes
and in variants that change only what its routing touches, beside dense models of its width with
1 to prefix + P blocks, all in alternating windows (`bench.decode.DecodeTimer`) at one batch size
(batch 1: the `lax.switch` path; larger: the grouped path, each pool layer on its tokens only):

- forced routes: each routing step's router output is replaced by a constant that picks pool
  layer 0 at every step, layer t mod P at step t, or skip (where `routing.skip` lets it skip);
- shared weights: every pool branch reads pool layer 0's arrays, so the same choices run the same
  code over one layer's bytes instead of P layers'.

Reading the table: a routed variant that costs what the dense model of its depth costs has no
routing overhead; if the shared-weight variants cost what dense costs but the own-weight ones cost
more, the difference is the weights' working set (caches), not routing. Batched, a forced route
sends the whole batch to one layer per step (one group of B rows), where as routed each layer gets
its share: the gap between them is what splitting the batch over the pool's layers costs. Prints a
table and JSON. `radial bench decode-variants --checkpoint RUN_DIR [--batch-sizes B] [--out FILE]`.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from flax import nnx

from radial_jax.bench.decode import DecodeTimer, _models, _paired_ratio
from radial_jax.config import Config
from radial_jax.generate.sampling import DEFAULT_BURST
from radial_jax.model.build import build_model
from radial_jax.model.decode import StepWeights, unstack_weights

FORCE = 1e4  # router logit of the forced choice; minus this for the others


def force_routes(weights: StepWeights, choices: list[int]) -> StepWeights:
    """The router of routing step t always scores choices[t] (a pool layer, or P = skip) highest:
    its output layer becomes a constant."""
    router = []
    for t, (w_in, b_in, w_out, b_out) in enumerate(weights.router):
        b = np.full(b_out.shape, -FORCE, np.float32)
        b[choices[t]] = FORCE
        router.append((w_in, b_in, jnp.zeros_like(w_out), jnp.asarray(b, b_out.dtype)))
    return weights.replace(router=tuple(router))


def share_pool(weights: StepWeights) -> StepWeights:
    """Every pool branch reads pool layer 0's arrays."""
    return weights.replace(pool=(weights.pool[0],) * len(weights.pool))


def variants(cfg: Config, weights: StepWeights) -> list[tuple[str, StepWeights]]:
    """(name, step weights) of each variant to time, as-routed first."""
    m, p = cfg.model, cfg.model.pool_size
    # (name, weights, whether its routes reach more than one pool layer: then a shared-weight twin)
    routes = [("as routed", weights, True),
              ("layer 0 at every step", force_routes(weights, [0] * m.steps), False),
              ("layer t mod P at step t", force_routes(weights, [t % p for t in range(m.steps)]), True)]
    if cfg.routing.skip != "forbid":
        routes.append(("skip at every step", force_routes(weights, [p] * m.steps), False))
    out = []
    for name, w, several in routes:
        out.append((name, w))
        if several:
            out.append((f"{name}, shared weights", share_pool(w)))
    return out


def _model(checkpoint: str | None, config: str | None, overrides) -> tuple[str, Config, object, object]:
    """(name, cfg, graphdef, params) of the one radial model to time; refuses what it cannot force."""
    name, cfg, graphdef, params = next(_models([config] if config else None, overrides,
                                               [checkpoint] if checkpoint else None))
    if not checkpoint:
        name += " (random weights)"
    r = cfg.routing
    if cfg.model.kind != "radial":
        raise SystemExit(f"decode-variants times a radial model; {checkpoint or config} has model.kind="
                         f"{cfg.model.kind} (use `radial bench decode` for dense models)")
    if r.policy != "token_choice" or r.top_k != 1:
        raise SystemExit(f"decode-variants forces top-1 token-choice routes; {checkpoint or config} has "
                         f"routing.policy={r.policy}, routing.top_k={r.top_k}")
    return name, cfg, graphdef, params


def run(checkpoint: str | None = None, config: str | None = None, overrides=(), out: str | None = None, *,
        prompt_len: int = 64, new_tokens: int = 16, windows: int = 15, burst: int = DEFAULT_BURST,
        batch: int = 1) -> dict:
    """batch: the decode batch every model is timed at (1: radial's lax.switch path)."""
    if batch < 1:
        raise ValueError(f"the batch size must be >= 1, got {batch}")
    name, cfg, graphdef, params = _model(checkpoint, config, overrides)
    m = cfg.model

    def timer(c, g, p, step_weights=None):
        return DecodeTimer(c, g, p, batch=batch, prompt_len=prompt_len, new_tokens=new_tokens,
                           windows=windows, step_weights=step_weights, burst=burst)

    timers = []
    for n in range(1, m.prefix_layers + m.pool_size + 1):
        dense_cfg = dataclasses.replace(cfg, model=dataclasses.replace(m, kind="dense", n_layers=n))
        timers.append(({"model": f"dense, {n} block{'s' * (n > 1)}", "kind": "dense"},
                       timer(dense_cfg, *nnx.split(build_model(dense_cfg), nnx.Param))))
    dense = timers[-1][1]  # as many blocks as the radial model has: the ratios' denominator
    for variant, weights in variants(cfg, unstack_weights(graphdef, params)):
        timers.append(({"model": f"{name}: {variant}", "kind": "radial"},
                       timer(cfg, graphdef, params, step_weights=weights)))
    for i in range(windows):
        for _, t in timers:
            t.window()
        print(f"  round {i + 1}/{windows}", flush=True)
    rows = []
    for row, t in timers:
        r = t.result()
        rows.append({**row, "ms_per_token": r["ms_per_token"], "ms_min": r["ms_min"],
                     "mean_active_depth": r["mean_active_depth"], "window_ms": r["window_ms"],
                     "over_dense_paired": _paired_ratio(t.times, dense.times),
                     "over_dense": statistics.median(t.times) / statistics.median(dense.times)})
    report = {"benchmark": "decode-variants", "model": name, "batch": batch, "prompt_len": prompt_len,
              "new_tokens": new_tokens, "burst": burst, "windows": windows, "results": rows}
    print(format_table(report))
    if out:
        Path(out).write_text(json.dumps(report, indent=2))
        print(f"wrote {out}")
    return report


def format_table(report: dict) -> str:
    lines = [f"| model | batch-{report['batch']} ms / token (median) | (min) | mean active depth "
             "| / dense of all, paired |",
             "|---|---|---|---|---|"]
    for r in report["results"]:
        lines.append(f"| {r['model']} | {r['ms_per_token']:.3f} | {r['ms_min']:.3f} | "
                     f"{r['mean_active_depth']:.2f} | {r['over_dense_paired']:.3f} |")
    return "\n".join(lines)
