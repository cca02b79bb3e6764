"""Inference cost of a sweep's routed arms, measured rather than read off training.

Training routes under capacity (radial, Mixture-of-Depths' top-C), so the depth its evals log is
not the depth decoding runs. Here each finished routed arm's final checkpoint is evaluated on the
eval split routed as decoding routes (`RadialLM(inference=True)`: no capacity, so nothing is
dropped; a learned skip predictor, MoD's causal predictor or MoR's recursion router decides), and
its mean active depth becomes FLOPs per token through model/flops.py. Dense arms run every layer.

Measurements are cached in the report's output folder (`inference_depth.json`), keyed by arm and
checkpoint step, so a report run again over a growing sweep measures only the new arms.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import jax

from radial_jax.data.pipeline import make_eval_batches
from radial_jax.io.load import load_model
from radial_jax.model.flops import flops_per_token
from radial_jax.sweep.arms import ArmResult
from radial_jax.train.loop import evaluate
from radial_jax.train.step import make_eval_step

CACHE = "inference_depth.json"


@dataclass(frozen=True)
class InferenceDepth:
    """One checkpoint evaluated as it decodes."""

    run_dir: str
    step: int
    active_depth: float       # prefix + routed blocks a token runs, mean over the eval tokens
    loss: float               # eval loss (nats/token) routed so
    flops_per_token: float    # inference FLOPs per token at that depth
    eval_tokens: float


def measure_checkpoint(run_dir: Path, step: int) -> InferenceDepth:
    """Evaluate `run_dir`'s checkpoint at `step` on its config's eval batches, routed as decoding
    routes; a radial-kind model only (MoD and MoR are radial configs)."""
    loaded = load_model(run_dir, step=step)
    cfg = loaded.cfg
    batches = make_eval_batches(cfg.data, loaded.tokenizer, cfg.train.eval_batches)
    eval_step = jax.jit(make_eval_step(loaded.graphdef, loaded.tokenizer.token_bytes(), inference=True))
    out = evaluate(eval_step, loaded.params, batches)
    depth = out["eval/active_depth"]
    routed = depth - cfg.model.prefix_layers
    return InferenceDepth(str(run_dir.resolve()), loaded.step, depth, out["eval/loss"],
                          flops_per_token(cfg).inference(routed, cfg), out["eval/tokens"])


def read_cache(path: Path) -> dict[str, InferenceDepth]:
    """The cache's entries by key ({} when there is none or it cannot be read)."""
    try:
        doc = json.loads(path.read_text())
        return {k: InferenceDepth(**v) for k, v in doc.items()}
    except (OSError, ValueError, TypeError):
        return {}


def cache_key(name: str, step: int) -> str:
    return f"{name}@{step}"


def measured(arm: ArmResult, run_dir: Path, cache: dict[str, InferenceDepth]) -> InferenceDepth | None:
    """The arm's final checkpoint measured (from `cache` when it holds this arm, step and folder;
    a new measurement is added to it); None when the arm has no checkpoint to measure."""
    key = cache_key(arm.name, arm.steps)
    hit = cache.get(key)
    if hit is not None and hit.run_dir == str(run_dir.resolve()):
        return hit
    if not (run_dir / "checkpoints" / str(arm.steps)).is_dir():
        return None
    cache[key] = measure_checkpoint(run_dir, arm.steps)
    return cache[key]


def with_inference(arm: ArmResult, m: InferenceDepth | None) -> ArmResult:
    """The arm with its inference depth, loss and FLOPs per token from the measurement (dense arms
    and unmeasured ones as they are, the source saying why)."""
    if arm.kind == "dense":
        return arm
    if m is None:
        return dataclasses.replace(arm, inference_source=f"not measured: no checkpoint at step {arm.steps}; "
                                   "FLOPs at the training eval's depth")
    return dataclasses.replace(arm, inference_depth=m.active_depth, inference_loss=m.loss,
                               inference_flops_per_token=m.flops_per_token,
                               inference_source=f"measured at step {m.step}")


def measure_arms(arms: list[tuple[ArmResult, Path]], out: Path) -> list[ArmResult]:
    """Every arm with measured inference figures; new measurements are written to `out`/CACHE."""
    path = out / CACHE
    cache = read_cache(path)
    before = dict(cache)
    results = [with_inference(a, measured(a, d, cache) if a.kind != "dense" else None) for a, d in arms]
    if cache != before:
        out.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({k: dataclasses.asdict(v) for k, v in sorted(cache.items())}, indent=1)
                        + "\n")
    return results
