"""Routing metrics and unweighted auxiliary losses, accumulated over the steps of one forward pass.

Shape letters: B batch, S sequence, P pool layers, R = P + 1 router choices, T routing steps.

`step_stats` is one step's row of figures (a dict of arrays, so a scan over the steps can stack
them); `summarize` reduces the rows, stacked on a leading T axis, into (metrics, AuxLosses).
`RouteStats` collects the rows of an unrolled loop.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from radial_jax.config import RoutingConfig
from radial_jax.model.outputs import AuxLosses
from radial_jax.model.routing import Route


def step_stats(route: Route, valid_BxS: jax.Array, *, per_token_choice: bool = True,
               skip_target: bool = False) -> dict[str, jax.Array]:
    """One routing step's figures by name. per_token_choice: False for expert choice (tokens choose
    nothing; each layer takes its C tokens). skip_target: fit the learned skip predictor to
    capacity's verdict (training)."""
    p, d, probs_BxSxR = route.pool_size, route.dispatch, route.probs_BxSxR
    w = valid_BxS.astype(jnp.float32)
    n = jnp.maximum(w.sum(), 1.0)
    kept_BxS = d.kept_BxSxK.any(-1)
    processed = (kept_BxS * w).sum() / n
    dropped = ((d.dropped_BxS > 0) * w).sum()
    chose_layer = ((d.kept_BxSxK.sum(-1) + d.dropped_BxS) > 0) * w  # real tokens not skipping
    load_BxP = route.load_BxP().astype(jnp.float32)
    load_P = load_BxP.sum(0) / n
    # Switch load balance, P * sum_p f_p * mean_prob_p, per sequence (the group capacity is
    # counted over) and averaged over sequences: a batch balanced overall can still overflow
    # every sequence's capacity. f_p is the share of layer choices made *before* capacity: counted
    # after it, an overloaded layer would look no busier than a full one.
    chosen_BxP = (jax.nn.one_hot(route.choice_BxSxK, p + 1)[..., :p] * w[..., None, None]).sum((1, 2)) \
        if per_token_choice else load_BxP
    f_BxP = chosen_BxP / jnp.maximum(chosen_BxP.sum(-1, keepdims=True), 1e-9)
    n_B = w.sum(1)
    mean_prob_BxP = (probs_BxSxR[..., :p] * w[..., None]).sum(1) / jnp.maximum(n_B, 1.0)[:, None]
    lb = (p * (f_BxP * mean_prob_BxP).sum(-1) * (n_B > 0)).sum() / jnp.maximum((n_B > 0).sum(), 1)
    lse = jax.nn.logsumexp(route.logits_BxSxR, axis=-1)
    ent = -(probs_BxSxR * jnp.log(jnp.maximum(probs_BxSxR, 1e-9))).sum(-1)
    row = dict(
        processed=processed, skip=(w - chose_layer).sum() / n,
        dropped=dropped, chose=chose_layer.sum(), load_P=load_P,
        lb=lb, choice_share_P=f_BxP.mean(0), z=(lse**2 * w).sum() / n, entropy=(ent * w).sum() / n,
        expected_active=((1 - probs_BxSxR[..., p]) * w).sum() / n)
    if skip_target and route.p_skip_BxS is not None:  # the predictor against capacity's verdict
        y = (~kept_BxS).astype(jnp.float32)
        q = jnp.clip(route.p_skip_BxS, 1e-6, 1 - 1e-6)
        row["skip_ce"] = (-(y * jnp.log(q) + (1 - y) * jnp.log1p(-q)) * w).sum() / n
        row["skip_acc"] = (((q > 0.5) == (y > 0.5)) * w).sum() / n
        row["predicted"] = jnp.ones((), jnp.float32)
    return row


def balance_surrogate(choice_share_TxP: jax.Array, select_bias_TxP: jax.Array) -> jax.Array:
    """A term whose gradient in the selection bias is each layer's load error (share of layer
    choices minus 1/P), per step; its value is ~0 and it reaches nothing else. The optimizer
    turns that gradient into a fixed-size step (`routing.balance_rate`): overloaded layers'
    bias goes down, idle layers' up."""
    err_TxP = choice_share_TxP - 1.0 / choice_share_TxP.shape[-1]
    return jnp.sum(select_bias_TxP * jax.lax.stop_gradient(err_TxP))


def summarize(rows: dict[str, jax.Array], routing: RoutingConfig, prefix_layers: int,
              select_bias_TxP: jax.Array | None = None) -> tuple[dict, AuxLosses]:
    """Metrics by name and the unweighted loss terms that `routing` asks for, from `step_stats`
    rows stacked on a leading T axis. select_bias_TxP: the router's selection bias, for the
    balance surrogate (token choice)."""
    steps, p = rows["load_P"].shape
    mean = lambda key: rows[key].sum(0) / steps
    depth = rows["processed"].sum(0)
    metrics = {
        "route/active_depth": prefix_layers + depth,
        "route/active_fraction": (prefix_layers + depth) / (prefix_layers + p),
        "route/skip_rate": mean("skip"),
        "route/drop_rate": rows["dropped"].sum(0) / jnp.maximum(rows["chose"].sum(0), 1.0),
        "route/router_entropy": mean("entropy"),
        "route/load_balance": mean("lb"),
        "route/z_loss": mean("z"),
    }
    for t in range(steps):
        for layer in range(p):
            metrics[f"route/load/s{t}_l{layer}"] = rows["load_P"][t, layer]
    losses = {}
    if "skip_ce" in rows:  # averaged over the steps the learned predictor decides (routed steps)
        n_predicted = rows["predicted"].sum(0)
        metrics["route/skip_predict_accuracy"] = (rows["skip_acc"] * rows["predicted"]).sum(0) / n_predicted
        losses["skip_predict"] = (rows["skip_ce"] * rows["predicted"]).sum(0) / n_predicted
    if routing.policy != "fixed":
        losses["load_balance"] = metrics["route/load_balance"]
        losses["z"] = metrics["route/z_loss"]
        if routing.compute_weight > 0:  # 0 turns the compute target off
            losses["compute"] = (mean("expected_active") - routing.compute_target) ** 2
    if routing.policy == "token_choice" and select_bias_TxP is not None:
        losses["balance_bias"] = balance_surrogate(rows["choice_share_P"], select_bias_TxP)
    return metrics, AuxLosses(**losses)


def stack_rows(rows: list[dict[str, jax.Array]]) -> dict[str, jax.Array]:
    """`step_stats` rows of an unrolled loop stacked on a leading T axis. Steps the learned skip
    predictor does not decide (unrouted steps, `routing.route_every`) get its figures as zeros and
    `predicted` 0, so every row has the same keys."""
    if any("predicted" in r for r in rows):
        zero = jnp.zeros((), jnp.float32)
        rows = [r if "predicted" in r else {**r, "skip_ce": zero, "skip_acc": zero, "predicted": zero}
                for r in rows]
    return jax.tree.map(lambda *x: jnp.stack(x), *rows)


class RouteStats:
    """Per-step rows from `add`, reduced by `finish` into (metrics, AuxLosses)."""

    def __init__(self, pool_size: int):
        self.p = pool_size
        self.rows: list[dict] = []

    def add(self, route: Route, valid_BxS: jax.Array, *, per_token_choice: bool = True,
            skip_target: bool = False) -> None:
        """See `step_stats`."""
        self.rows.append(step_stats(route, valid_BxS, per_token_choice=per_token_choice,
                                    skip_target=skip_target))

    def finish(self, routing: RoutingConfig, prefix_layers: int,
               select_bias_TxP: jax.Array | None = None) -> tuple[dict, AuxLosses]:
        """See `summarize`."""
        return summarize(stack_rows(self.rows), routing, prefix_layers, select_bias_TxP)
