"""The train and eval steps: pure functions of (state, batch), jitted by the loop.

A batch is a dict of int32 [B, S] arrays: inputs, targets, positions, segment_ids, and loss_mask.
Model auxiliary outputs whose names start with `loss/` are already weighted and are added to the
objective; every auxiliary output is reported as a metric.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx, struct

from radial_jax.train.loss import masked_sum_and_count, token_nll


@struct.dataclass
class TrainState:
    step: jax.Array
    params: Any  # nnx.State of the model's Params
    opt_state: Any


def init_state(params, tx: optax.GradientTransformation) -> TrainState:
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))


def forward(graphdef: nnx.GraphDef, params, batch: dict, inference: bool = False
            ) -> tuple[jax.Array, dict]:
    """`inference` (radial models): route as decoding does, without capacity."""
    model = nnx.merge(graphdef, params)
    kw = {"inference": True} if inference else {}
    return model(batch["inputs"], batch["positions"], batch["segment_ids"], **kw)


def make_train_step(graphdef: nnx.GraphDef, tx: optax.GradientTransformation,
                    lr_fn: Callable) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
    def loss_fn(params, batch):
        logits, aux = forward(graphdef, params, batch)
        nll_sum, count = masked_sum_and_count(token_nll(logits, batch["targets"]), batch["loss_mask"])
        ce = nll_sum / jnp.maximum(count, 1.0)
        extra = sum((v for k, v in aux.items() if k.startswith("loss/")), jnp.zeros((), jnp.float32))
        return ce + extra, {"train/ce": ce, "train/tokens": count, **aux}

    def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, batch)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        grad_norm = optax.global_norm(grads)
        # A step whose loss, gradients or update is NaN/inf changes nothing but the step count (so
        # the data moves on); the loop counts it from `train/nonfinite` (see nonfinite.py).
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & jnp.isfinite(optax.global_norm(updates))
        params, opt_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old),
                                         (params, opt_state), (state.params, state.opt_state))
        metrics = {**metrics, "train/loss": loss, "train/grad_norm": grad_norm,
                   "train/lr": lr_fn(state.step), "train/nonfinite": 1.0 - finite.astype(jnp.float32)}
        return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

    return train_step


def make_eval_step(graphdef: nnx.GraphDef, token_bytes, inference: bool = False
                   ) -> Callable[[Any, dict], dict]:
    """Sums over one batch: nll (nats), predicted tokens, and the text bytes those tokens stand for.
    `inference`: radial models route as in decoding (no capacity; a learned skip predictor decides)."""
    token_bytes = jnp.asarray(token_bytes)

    def eval_step(params, batch: dict) -> dict:
        logits, aux = forward(graphdef, params, batch, inference)
        nll_sum, count = masked_sum_and_count(token_nll(logits, batch["targets"]), batch["loss_mask"])
        nbytes = jnp.sum(token_bytes[batch["targets"]] * batch["loss_mask"].astype(jnp.float32))
        return {"nll": nll_sum, "tokens": count, "bytes": nbytes,
                **{k: v for k, v in aux.items() if not k.startswith("loss/")}}

    return eval_step


def summarize_eval(sums: list[dict]) -> dict[str, float]:
    """Combine per-batch sums into loss (nats/token), perplexity and bits per byte."""
    nll = sum(float(s["nll"]) for s in sums)
    tokens = sum(float(s["tokens"]) for s in sums)
    nbytes = sum(float(s["bytes"]) for s in sums)
    loss = nll / max(tokens, 1.0)
    out = {"eval/loss": loss, "eval/perplexity": float(jnp.exp(jnp.minimum(loss, 50.0))),
           "eval/bits_per_byte": nll / max(nbytes, 1.0) / float(jnp.log(2.0)),
           "eval/tokens": tokens}
    extra_keys = [k for k in sums[0] if k not in ("nll", "tokens", "bytes")] if sums else []
    for k in extra_keys:
        out[f"eval/{k.split('/', 1)[-1]}"] = sum(float(s[k]) for s in sums) / len(sums)
    return out
