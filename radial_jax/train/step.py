"""The train and eval steps: pure functions of (state, batch), jitted by the loop.

A batch is a dict of int32 [B, S] arrays: inputs, targets, positions, segment_ids, and loss_mask.
A model returns its logits and a ModelAux: metrics, reported as they are, and unweighted auxiliary
loss terms, which `weighted_aux_losses` weighs by the routing config (the one place that does) and
the objective adds; each weighted term is reported as `loss/<name>`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx, struct

from radial_jax.config import RoutingConfig
from radial_jax.model.outputs import AuxLosses, ModelAux
from radial_jax.train.loss import masked_sum_and_count, token_nll


@struct.dataclass
class TrainState:
    step: jax.Array
    params: Any  # nnx.State of the model's Params
    opt_state: Any


def init_state(params, tx: optax.GradientTransformation) -> TrainState:
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))


def forward(graphdef: nnx.GraphDef, params, batch: dict, inference: bool = False
            ) -> tuple[jax.Array, ModelAux]:
    """`inference` (radial models): route as decoding does, without capacity."""
    model = nnx.merge(graphdef, params)
    kw = {"inference": True} if inference else {}
    return model(batch["inputs"], batch["positions"], batch["segment_ids"], **kw)


def weighted_aux_losses(losses: AuxLosses, routing: RoutingConfig | None) -> dict[str, jax.Array]:
    """{"loss/<name>": weight * term} for each present term, weighted by `routing` (None: a model
    without routing, which has no terms). `balance_bias` has weight 1: `routing.balance_rate` sizes
    its step in the optimizer."""
    terms = losses.terms()
    if not terms:
        return {}
    weights = {"load_balance": routing.load_balance_weight, "z": routing.z_loss_weight,
               "compute": routing.compute_weight, "skip_predict": routing.skip_predict_weight,
               "balance_bias": 1.0}
    return {f"loss/{name}": weights[name] * term for name, term in terms.items()}



def train_forward(graphdef: nnx.GraphDef, params, batch: dict) -> tuple[jax.Array, dict, jax.Array]:
    """(logits, metrics, weighted aux-loss total) of a training forward pass: the model's metrics and
    each weighted term as `loss/<name>`, weighted by the routing config the model was built with (a
    dense model has neither)."""
    model = nnx.merge(graphdef, params)
    logits, aux = model(batch["inputs"], batch["positions"], batch["segment_ids"])
    weighted = weighted_aux_losses(aux.losses, getattr(model, "routing", None))
    return logits, {**aux.metrics, **weighted}, sum(weighted.values(), jnp.zeros((), jnp.float32))


def make_train_step(graphdef: nnx.GraphDef, tx: optax.GradientTransformation,
                    lr_fn: Callable) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
    def loss_fn(params, batch):
        logits, metrics, aux_loss = train_forward(graphdef, params, batch)
        nll_sum, count = masked_sum_and_count(token_nll(logits, batch["targets"]), batch["loss_mask"])
        ce = nll_sum / jnp.maximum(count, 1.0)
        return ce + aux_loss, {"train/ce": ce, "train/tokens": count, **metrics}

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
                **aux.metrics}

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
