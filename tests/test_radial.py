"""The radial model: exactness against the dense model, causality, router learning signal, cost."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from radial_jax.config import RoutingConfig
from radial_jax.model import dispatch as dsp
from radial_jax.model.build import build_model, count_params
from radial_jax.model.policy import History
from radial_jax.model.route_stats import RouteStats
from radial_jax.model.routing import Route, decide
from radial_jax.train.optimizer import lr_schedule, make_optimizer
from radial_jax.train.step import init_state, make_train_step, train_forward
from tests.helpers import packed_batch, tiny_config

RADIAL = ["model.kind=radial", "model.pool_size=3", "model.steps=3"]


@nnx.jit(static_argnames=("return_trace", "inference"))
def _forward(model, inputs, positions, segment_ids, return_trace=False, inference=False):
    kw = {"return_trace": True} if return_trace else {}
    return model(inputs, positions, segment_ids, **kw, **({"inference": True} if inference else {}))


def logits_of(model, batch, **kw):
    return _forward(model, batch["inputs"], batch["positions"], batch["segment_ids"], **kw)


def radial_from_dense(dense, radial, prefix: int):
    """Give `radial` the dense model's weights: embedder, prefix blocks, then the rest stacked as the pool."""
    nnx.update(radial.embedder, nnx.state(dense.embedder))
    for i in range(prefix):
        nnx.update(radial.prefix[i], nnx.state(dense.blocks[i]))
    rest = [nnx.state(b) for b in list(dense.blocks)[prefix:]]
    nnx.update(radial.pool, jax.tree.map(lambda *xs: jnp.stack(xs), *rest))


@pytest.mark.parametrize("prefix, kv_skip", [(0, "mask"), (1, "carry"), (1, "mask")])
def test_fixed_schedule_equals_dense(prefix, kv_skip):
    layers = 3
    pool = layers - prefix
    dense = build_model(tiny_config(f"model.n_layers={layers}"))
    radial = build_model(tiny_config(
        "model.kind=radial", f"model.pool_size={pool}", f"model.steps={pool}",
        f"model.prefix_layers={prefix}", f"model.capacity_factor={pool}", f"model.kv_skip={kv_skip}",
        "routing.policy=fixed"))
    radial_from_dense(dense, radial, prefix)
    batch = packed_batch([[10, 22], [32], [7, 7, 7, 5], [20]], seq_len=32)
    want = logits_of(dense, batch)[0]
    got, aux = logits_of(radial, batch)
    real = np.asarray(batch["segment_ids"]) != 0  # padding skips in the radial model; never scored
    np.testing.assert_allclose(np.asarray(got)[real], np.asarray(want)[real], atol=1e-5, rtol=1e-5)
    assert float(aux.metrics["route/drop_rate"]) == 0.0
    assert float(aux.metrics["route/active_depth"]) == pytest.approx(prefix + pool)  # over real tokens


def test_pool_parameters_are_stacked_on_a_pool_axis():
    radial = build_model(tiny_config(*RADIAL))
    wq = radial.pool.attn.wq
    assert wq.shape[0] == 3
    assert wq.get_metadata()["out_sharding"][0] == "pool"


def test_parameter_count_independent_of_steps():
    a = count_params(build_model(tiny_config(*RADIAL)))
    b = count_params(build_model(tiny_config("model.kind=radial", "model.pool_size=3", "model.steps=6")))
    d, h, r = 32, 64, 4  # d_model, router hidden, P + 1 choices
    # only the 3 extra steps' router weights (+ their selection biases over the P = 3 layers)
    assert b - a == 3 * (d * h + h + h * r + r + (r - 1))


@pytest.mark.parametrize("extra", [[], ["routing.reuse=forbid"], ["routing.order=monotonic"],
                                   ["model.kv_skip=carry"], ["model.prefix_layers=1"],
                                   ["routing.top_k=2"]])
def test_token_choice_is_causal_when_nothing_is_dropped(extra):
    cfg = tiny_config(*RADIAL, "model.capacity_factor=3", "router.init=random", *extra)
    model = build_model(cfg)
    batch = packed_batch([[32], [16, 16]], seq_len=32)
    base, aux = logits_of(model, batch)
    assert float(aux.metrics["route/drop_rate"]) == 0.0
    j = 13
    toks = np.asarray(batch["inputs"]).copy()
    toks[:, j] = (toks[:, j] + 101) % 256
    new, _ = logits_of(model, {**batch, "inputs": jnp.asarray(toks)})
    diff = np.abs(np.asarray(new - base)).max(-1)
    assert diff[:, :j].max() == 0.0
    assert diff[0, j:].max() > 0


def test_changing_one_document_leaves_the_others_alone():
    model = build_model(tiny_config(*RADIAL, "model.capacity_factor=3", "router.init=random"))
    batch = packed_batch([[10, 12, 10]], seq_len=32)
    base, _ = logits_of(model, batch)
    seg = np.asarray(batch["segment_ids"][0])
    toks = np.asarray(batch["inputs"]).copy()
    toks[0, seg == 2] = (toks[0, seg == 2] + 5) % 256
    new, _ = logits_of(model, {**batch, "inputs": jnp.asarray(toks)})
    diff = np.abs(np.asarray(new - base)).max(-1)[0]
    assert diff[seg == 2].max() > 0 and diff[seg != 2].max() == 0.0


def test_reuse_forbid_and_monotonic_constraints_hold_in_the_trace():
    batch = packed_batch([[32], [32]], seq_len=32)
    cfg = tiny_config("model.kind=radial", "model.pool_size=3", "model.steps=5",
                      "model.capacity_factor=3", "router.init=random", "router.init_bias=0",
                      "routing.reuse=forbid", "routing.order=monotonic")
    _, aux = logits_of(build_model(cfg), batch, return_trace=True)
    trace = np.asarray(aux.trace_TxBxS)  # [T, B, S], P = skipped
    for b in range(2):
        for s in range(32):
            ran = [int(x) for x in trace[:, b, s] if x < 3]
            assert len(ran) == len(set(ran)) and ran == sorted(ran)


def test_capacity_overflow_drops_tokens_and_reports_it():
    cfg = tiny_config(*RADIAL, "model.capacity_factor=0.25")
    _, aux = logits_of(build_model(cfg), packed_batch([[32]] * 2, seq_len=32))
    assert float(aux.metrics["route/drop_rate"]) > 0.0
    assert float(aux.metrics["route/active_fraction"]) <= 0.25 * 1.01


@pytest.mark.parametrize("gate", ["prob", "straight_through"])
def test_router_gets_finite_nonzero_gradients_from_the_lm_loss_alone(gate):
    cfg = tiny_config(*RADIAL, "routing.load_balance_weight=0", "routing.z_loss_weight=0",
                      f"routing.gate={gate}")
    graphdef, params = nnx.split(build_model(cfg), nnx.Param)
    batch = packed_batch([[20, 12], [32], [16, 16], [30]], seq_len=32)

    def ce(params):
        logits, _ = nnx.merge(graphdef, params)(batch["inputs"], batch["positions"],
                                                 batch["segment_ids"])
        nll = -jnp.take_along_axis(jax.nn.log_softmax(logits), batch["targets"][..., None], -1)[..., 0]
        return (nll * batch["loss_mask"]).sum() / batch["loss_mask"].sum()

    grads = jax.jit(jax.grad(ce))(params)
    router = grads["router"]
    for name in ("w_in", "w_out", "b_out"):
        g = np.asarray(router[name][...])
        assert np.isfinite(g).all() and np.abs(g).max() > 0, name


def test_straight_through_gate_runs_blocks_at_full_size():
    """Gate 1 in the forward pass. The router starts on the sequential schedule with a mild bias (so
    every token takes layer t at step t, with probability ~0.5) and capacity for all: the output
    equals the fixed schedule's, whose gates are exactly 1, and differs from the probability gate's."""
    seq = ["router.init=sequential", "router.init_bias=1", "model.capacity_factor=3"]
    batch = packed_batch([[20, 12], [32]], seq_len=32)
    st = build_model(tiny_config(*RADIAL, *seq, "routing.gate=straight_through"))
    st.router.w_out[...] = 0.0 * st.router.w_out[...]  # logits = the sequential bias, for every token
    fixed = build_model(tiny_config(*RADIAL, *seq, "routing.policy=fixed"))
    prob = build_model(tiny_config(*RADIAL, *seq, "routing.gate=prob"))
    nnx.update(fixed, nnx.state(st))
    nnx.update(prob, nnx.state(st))
    np.testing.assert_allclose(logits_of(st, batch)[0], logits_of(fixed, batch)[0], atol=1e-5)
    assert np.abs(np.asarray(logits_of(prob, batch)[0] - logits_of(fixed, batch)[0])).max() > 1e-2


def test_load_balance_counts_choices_before_capacity_per_sequence():
    """Switch's f_p is the share of tokens that *chose* layer p: an overloaded layer must look
    overloaded even though capacity lets only C of its tokens run. And balance is per sequence, the
    group capacity counts over: two sequences overloading different layers are not balanced."""
    def load_balance(choice_BxS, probs_BxSxR):
        choice = jnp.asarray(choice_BxS, jnp.int32)[..., None]
        d = dsp.plan_token_choice(choice, jnp.ones(choice.shape), 2, capacity=4)
        probs = jnp.broadcast_to(jnp.asarray(probs_BxSxR, jnp.float32), (*choice.shape[:2], 3))
        stats = RouteStats(2)
        stats.add(Route(d, d.ok_BxPxC.astype(jnp.float32), choice, jnp.log(probs + 1e-9), probs, None),
                  jnp.ones(choice.shape[:2], bool))
        metrics, losses = stats.finish(RoutingConfig(), prefix_layers=0)
        assert float(losses.load_balance) == float(metrics["route/load_balance"])  # unweighted
        return metrics

    out = load_balance([[0] * 28 + [1] * 4], [0.9, 0.1, 0.0])
    # f = (28/32, 4/32): 2 * (0.875 * 0.9 + 0.125 * 0.1) = 1.6; after capacity it would read 1.0.
    np.testing.assert_allclose(float(out["route/load_balance"]), 1.6, rtol=1e-5)
    np.testing.assert_allclose(float(out["route/load/s0_l0"]), 4 / 32, rtol=1e-6)  # kept load
    # Sequence 0 all on layer 0, sequence 1 all on layer 1, probabilities following the choices:
    # balanced over the batch (it would read 1.0), each sequence fully imbalanced (2 * 1 * 1 = 2).
    choice = np.array([[0] * 32, [1] * 32])
    out = load_balance(choice, np.where(choice[..., None] == np.arange(3), 1.0, 0.0))
    np.testing.assert_allclose(float(out["route/load_balance"]), 2.0, rtol=1e-5)


def test_aux_losses_are_unweighted_terms_that_the_train_step_weighs():
    """The model returns the terms as data; `loss/<name>` metrics and the objective carry them times
    the config's weights, and a fixed schedule has none."""
    overrides = [*RADIAL, "routing.load_balance_weight=0.5", "routing.z_loss_weight=0.25",
                 "routing.compute_weight=2", "routing.compute_target=0.3"]
    model = build_model(tiny_config(*overrides))
    batch = packed_batch([[20, 12], [32]], seq_len=32)
    _, aux = logits_of(model, batch)
    terms = aux.losses.terms()
    assert sorted(terms) == ["balance_bias", "compute", "load_balance", "z"]
    np.testing.assert_allclose(float(terms["load_balance"]), float(aux.metrics["route/load_balance"]))
    graphdef, params = nnx.split(model, nnx.Param)
    _, metrics, total = jax.jit(train_forward, static_argnums=0)(graphdef, params, batch)
    want = {"loss/load_balance": 0.5 * terms["load_balance"], "loss/z": 0.25 * terms["z"],
            "loss/compute": 2.0 * terms["compute"], "loss/balance_bias": terms["balance_bias"]}
    for k, v in want.items():
        np.testing.assert_allclose(float(metrics[k]), float(v), rtol=1e-5, err_msg=k)
    np.testing.assert_allclose(float(total), float(sum(want.values())), rtol=1e-5)
    assert float(metrics["loss/z"]) > 0 and float(metrics["loss/compute"]) > 0
    fixed = build_model(tiny_config(*overrides, "routing.policy=fixed"))
    assert logits_of(fixed, batch)[1].losses.terms() == {}


@pytest.mark.parametrize("rate", [0.0, 0.1])
def test_balance_bias_moves_against_load_and_leaves_gates_alone(rate):
    """Aux-loss-free balancing: every token starts on layer t at step t; the selection bias of that
    overloaded layer goes down by `rate` per step and the idle layers' go up, until tokens spread."""
    cfg = tiny_config(*RADIAL, "router.init=sequential", "router.init_bias=2", "routing.skip=forbid",
                      f"routing.balance_rate={rate}", "routing.load_balance_weight=0", "train.lr=1e-9")
    graphdef, params = nnx.split(build_model(cfg), nnx.Param)
    tx = make_optimizer(cfg.train, cfg.routing.balance_rate)
    step = jax.jit(make_train_step(graphdef, tx, lr_schedule(cfg.train)))
    state = init_state(params, tx)
    batch = packed_batch([[20, 12], [32], [16, 16], [30]], seq_len=32)
    drops, biases = [], []
    for _ in range(12):
        state, m = step(state, batch)
        drops.append(float(m["route/drop_rate"]))  # overflow of the crowded layers
        biases.append(np.asarray(state.params["router"]["select_bias"][...]))
    if rate == 0:
        np.testing.assert_array_equal(biases[-1], 0.0)
        assert drops[-1] == drops[0]
        return
    # First update: layer t (overloaded at step t) down by `rate`, the idle layers up by `rate`.
    np.testing.assert_allclose(biases[0], np.where(np.eye(3), -rate, rate), atol=1e-7)
    assert drops[-1] < 0.5 * drops[0]  # tokens moved from the crowded layer t to the others
    assert (np.diag(biases[-1]) < 0).all()
    # Gates stay the router's probabilities: shifting the bias changes choices, not gate values.
    model = nnx.merge(graphdef, state.params)
    h = jax.random.normal(jax.random.key(0), (2, 32, cfg.model.d_model))
    valid = jnp.ones((2, 32), bool)
    route = decide(model.router, model.routing, h, 0, History.empty(2, 32, 3), valid, 32)
    gate = np.asarray(route.gate_BxPxC)
    got = np.sort(gate[gate > 0])
    probs, choice = np.asarray(route.probs_BxSxR), np.asarray(route.choice_BxSxK)
    want = np.sort(np.take_along_axis(probs, choice, -1).ravel())
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_learned_skip_predicts_capacity_and_decides_at_inference():
    """`skip: learned`: training is capacity-limited (half the tokens run per step) and P(skip)
    learns to tell which; in inference mode (no capacity) the predictor's skips set the depth."""
    cfg = tiny_config(*RADIAL, "routing.skip=learned", "routing.skip_predict_weight=1",
                      "model.capacity_factor=0.5", "train.lr=1e-2", "train.steps=40")
    graphdef, params = nnx.split(build_model(cfg), nnx.Param)
    tx = make_optimizer(cfg.train)
    step = jax.jit(make_train_step(graphdef, tx, lr_schedule(cfg.train)))
    state = init_state(params, tx)
    batch = packed_batch([[20, 12], [32], [16, 16], [30]], seq_len=32)
    first = None
    for _ in range(40):
        state, m = step(state, batch)
        first = first or (float(m["loss/skip_predict"]), float(m["route/skip_predict_accuracy"]))
    assert float(m["route/skip_rate"]) == 0.0 and float(m["route/drop_rate"]) > 0.3  # capacity decides
    assert float(m["loss/skip_predict"]) < 0.7 * first[0]
    assert float(m["route/skip_predict_accuracy"]) > max(first[1], 0.75)
    model = nnx.merge(graphdef, state.params)
    _, aux = logits_of(model, batch, inference=True)
    assert float(aux.metrics["route/drop_rate"]) == 0.0
    assert 0.0 < float(aux.metrics["route/skip_rate"]) < 1.0  # the predictor skips some token-steps


@pytest.mark.parametrize("policy", ["expert_choice", "token_choice"])
def test_training_steps_reduce_loss(policy):
    cfg = tiny_config(*RADIAL, f"routing.policy={policy}", "train.lr=1e-2", "train.steps=25")
    graphdef, params = nnx.split(build_model(cfg), nnx.Param)
    tx = make_optimizer(cfg.train)
    step = jax.jit(make_train_step(graphdef, tx, lr_schedule(cfg.train)))
    state = init_state(params, tx)
    batch = packed_batch([[20, 12], [32], [16, 16], [30]], seq_len=32)
    losses = []
    for _ in range(25):
        state, m = step(state, batch)
        losses.append(float(m["train/ce"]))
        assert np.isfinite(losses[-1])
    assert losses[-1] < 0.7 * losses[0]
    assert "route/load/s0_l0" in m and "loss/load_balance" in m


def _train_step_flops(*overrides):
    cfg = tiny_config(*overrides, "data.seq_len=64", "data.batch_size=2", "model.d_model=64",
                      "model.d_ff=128")
    graphdef, params = nnx.split(build_model(cfg), nnx.Param)
    tx = make_optimizer(cfg.train)
    state = init_state(params, tx)
    batch = packed_batch([[64], [64]], seq_len=64)
    compiled = jax.jit(make_train_step(graphdef, tx, lr_schedule(cfg.train))).lower(state, batch).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return float(cost["flops"])


@pytest.mark.slow
def test_compiled_cost_scales_with_steps_and_capacity_not_pool_size():
    base = _train_step_flops("model.kind=radial", "model.pool_size=4", "model.steps=2")
    bigger_pool = _train_step_flops("model.kind=radial", "model.pool_size=8", "model.steps=2")
    more_steps = _train_step_flops("model.kind=radial", "model.pool_size=4", "model.steps=4")
    more_capacity = _train_step_flops("model.kind=radial", "model.pool_size=4", "model.steps=2",
                                      "model.capacity_factor=2")
    assert bigger_pool / base == pytest.approx(1.0, abs=0.15)
    assert more_steps / base > 1.6
    assert more_capacity / base > 1.6


@pytest.mark.parametrize("skip", ["allow", "forbid", "learned"])
def test_top1_choice_decides_as_the_generic_policy(skip):
    """The fused batch-1 decision equals choice_logits + token_choice(top_k=1), with ties, masked
    layers, no layer left, and skip-dominated tokens among the cases."""
    from radial_jax.model.policy import choice_logits, token_choice, top1_choice

    n, p = 512, 3
    k1, k2 = jax.random.split(jax.random.PRNGKey(0))
    logits_NxR = jax.random.normal(k1, (n, p + 1)) * 2.0
    logits_NxR = logits_NxR.at[:32, 1].set(logits_NxR[:32, 0])  # ties between layers
    allowed_NxP = jax.random.bernoulli(k2, 0.7, (n, p)).at[:16].set(False)  # 16 with no layer left
    bias_P = jnp.array([0.05, 0.05, -0.1])  # layers 0 and 1 tie where their logits do
    masked, p_skip = choice_logits(logits_NxR[None], allowed_NxP[None], jnp.ones((1, n), bool), skip)
    want = token_choice(masked, 1, bias_P, p_skip)
    decide = jax.jit(jax.vmap(lambda x, a: top1_choice(x, a, bias_P, skip=skip)))
    choice, gate = decide(logits_NxR, allowed_NxP)
    want_choice = np.asarray(want.choice_BxSxK[0, :, 0])
    np.testing.assert_array_equal(np.asarray(choice), want_choice)
    assert 0 < (want_choice == p).sum() < n  # both kinds of decision are exercised
    ran = want_choice < p
    np.testing.assert_allclose(np.asarray(gate)[ran], np.asarray(want.gate_BxSxK[0, :, 0])[ran], rtol=1e-6)
