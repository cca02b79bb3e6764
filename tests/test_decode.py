"""KV cache and cached decoding: prefill + token-by-token decoding reproduce the full forward pass."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from radial_jax.model import decode
from radial_jax.model import dispatch as dsp
from radial_jax.model.build import build_model
from radial_jax.model.decode import decode_step, prefill, unstack_weights
from radial_jax.model.kv_cache import bytes_per_token, check_room, init_cache
from tests.helpers import f32_copies, tiny_config

# P = 3 and capacity_factor = P: capacity = seq_len, so training drops nothing; a random router
# init makes tokens skip, reuse and spread over layers.
RADIAL = ["model.kind=radial", "model.pool_size=3", "model.steps=3", "model.capacity_factor=3",
          "router.init=random"]
CASES = {
    "dense": [],
    "dense-gpt2-style": ["model.norm=layer", "model.mlp=gelu_tanh", "model.qkv_bias=true",
                         "model.out_bias=true", "model.mlp_bias=true", "model.positions=learned",
                         "model.max_positions=32"],
    "mask-allow-prefix0": [*RADIAL, "model.kv_skip=mask", "routing.reuse=allow", "model.prefix_layers=0"],
    "carry-forbid-prefix1": [*RADIAL, "model.kv_skip=carry", "routing.reuse=forbid",
                             "model.prefix_layers=1"],
    "mask-forbid-prefix1": [*RADIAL, "model.kv_skip=mask", "routing.reuse=forbid", "model.prefix_layers=1"],
    "carry-allow-prefix0-top2-monotonic": [*RADIAL, "model.kv_skip=carry", "routing.reuse=allow",
                                           "routing.top_k=2", "routing.order=monotonic"],
    "straight-through-noskip": [*RADIAL, "routing.gate=straight_through", "routing.skip=forbid"],
    # The learned skip predictor decides at inference; the full forward runs in inference mode.
    "learned-skip": [*RADIAL, "routing.skip=learned", "router.skip_bias=1.2"],
}
N, MAX_LEN = 20, 32
TOTAL = np.array([20, 13, 17])   # tokens per sequence (ragged)
PROMPT = np.array([6, 1, 11])    # of which the prompt


prefill_jit = jax.jit(prefill, static_argnums=0)
decode_jit = jax.jit(decode_step, static_argnums=0, static_argnames="switch")


def setup(overrides):
    cfg = tiny_config(*overrides)
    model = build_model(cfg)
    rng = np.random.default_rng(0)
    if cfg.model.kind == "radial":  # a trained load-balancing bias: routes must follow it in decoding
        model.router.select_bias[...] = jnp.asarray(rng.normal(0, 0.5, model.router.select_bias.shape))
    graphdef, params = nnx.split(model, nnx.Param)
    seg = (np.arange(N)[None] < TOTAL[:, None]).astype(np.int32)
    tokens = rng.integers(0, 256, (len(TOTAL), N)).astype(np.int32) * seg
    pos = np.broadcast_to(np.arange(N, dtype=np.int32), tokens.shape)
    kw = {} if cfg.model.kind == "dense" else {"return_trace": True} | (
        {"inference": True} if cfg.routing.skip == "learned" else {})
    forward = jax.jit(lambda p, *a: nnx.merge(graphdef, p)(*a, **kw))
    logits, aux = forward(params, tokens, pos, seg)
    return cfg, graphdef, params, tokens, np.asarray(logits), aux


def decode_rows(cfg, graphdef, params, tokens, rows, prompt=PROMPT, **kw):
    """Prefill rows' prompts, then feed their remaining tokens one at a time: logits per position."""
    cache = init_cache(cfg, len(rows), MAX_LEN)
    plen = prompt[rows]
    got = {}
    if plen.max() > 0:
        logits, cache = prefill_jit(graphdef, params, tokens[rows, :plen.max()], plen, cache)
        logits = np.asarray(logits)
        got = {(i, j): logits[i, j] for i in range(len(rows)) for j in range(plen[i])}
    for step in range((TOTAL[rows] - plen).max()):
        at = np.minimum(plen + step, N - 1)
        logits, cache = decode_jit(graphdef, params, tokens[rows, at], cache, **kw)
        logits = np.asarray(logits)
        for i, r in enumerate(rows):
            if plen[i] + step < TOTAL[r]:
                got[(i, plen[i] + step)] = logits[i]
    return got, cache


SLOW = {"dense-gpt2-style", "mask-forbid-prefix1", "carry-allow-prefix0-top2-monotonic"}


@pytest.mark.parametrize("case", [pytest.param(c, marks=pytest.mark.slow) if c in SLOW else c for c in CASES])
def test_prefill_then_decode_equals_full_forward(case):
    """A ragged batch of 3 (batched path), then one sequence alone (batch-1 lax.switch path)."""
    cfg, graphdef, params, tokens, want, aux = setup(CASES[case])
    rows = [0, 1, 2]
    got, cache = decode_rows(cfg, graphdef, params, tokens, rows)
    assert len(got) == TOTAL.sum()
    for (i, j), g in got.items():
        np.testing.assert_allclose(g, want[rows[i], j], atol=1e-4, rtol=0, err_msg=f"{case} row {i} pos {j}")
    np.testing.assert_array_equal(np.asarray(cache.length_B), PROMPT + (TOTAL - PROMPT).max())
    if cfg.model.kind == "dense":
        return
    assert float(aux.metrics["route/drop_rate"]) == 0.0
    trace = np.asarray(aux.trace_TxBxS)
    route = np.asarray(cache.route_TxBxM)
    if "routing.skip=forbid" in CASES[case]:  # every real token runs a layer at every step
        assert all((trace[:, r, :TOTAL[r]] < 3).all() for r in rows)
    else:
        assert (trace < 3).any() and (trace == 3).any()  # some tokens run layers, some skip
    for r in rows:  # the cache keeps the routing decisions training made
        np.testing.assert_array_equal(route[:, r, :TOTAL[r]], trace[:, r, :TOTAL[r]])

    # Batch 1, every token decoded from an empty cache by the lax.switch path (only the chosen
    # layer runs): the same logits, routes and cache as the batched path.
    switched, c1 = decode_rows(cfg, graphdef, params, tokens, [2], prompt=0 * PROMPT, switch=True,
                               step_weights=unstack_weights(graphdef, params))
    assert len(switched) == TOTAL[2]
    for (_, j), g in switched.items():
        np.testing.assert_allclose(g, got[(2, j)], atol=1e-5, rtol=0, err_msg=f"{case} pos {j}")
    n = TOTAL[2]
    np.testing.assert_array_equal(np.asarray(c1.route_TxBxM)[:, 0, :n], route[:, 2, :n])
    np.testing.assert_array_equal(np.asarray(c1.written_LxBxM)[:, 0, :n],
                                  np.asarray(cache.written_LxBxM)[:, 2, :n])
    np.testing.assert_allclose(np.asarray(c1.k_LxBxGxMxK)[:, 0, :, :n],
                               np.asarray(cache.k_LxBxGxMxK)[:, 2, :, :n], atol=1e-5)


@pytest.mark.parametrize("extra, slots, steps", [([], 2, 0), ([*RADIAL, "model.prefix_layers=1"], 4, 3),
                                                 ([*RADIAL, "model.dtype=bfloat16"], 3, 3)])
def test_cache_shapes_dtype_and_bytes_per_token(extra, slots, steps):
    cfg = tiny_config(*extra)
    cache = init_cache(cfg, 3, 16)
    kv_dtype = jnp.bfloat16 if "model.dtype=bfloat16" in extra else jnp.float32
    g, k = 2, 8  # n_kv_heads, d_model / n_heads
    assert cache.k_LxBxGxMxK.shape == cache.v_LxBxGxMxK.shape == (slots, 3, g, 16, k)
    assert cache.k_LxBxGxMxK.dtype == kv_dtype
    assert cache.written_LxBxM.shape == (slots, 3, 16) and cache.written_LxBxM.dtype == jnp.bool_
    assert cache.route_TxBxM.shape == (steps, 3, 16) and cache.route_TxBxM.dtype == jnp.int32
    assert cache.length_B.shape == (3,) and not cache.written_LxBxM.any()
    want = slots * 2 * g * k * jnp.dtype(kv_dtype).itemsize + slots + 4 * steps
    assert cache.bytes_per_token() == want == bytes_per_token(cfg)
    assert cache.nbytes == want * 3 * 16 + 4 * 3
    assert jax.tree.structure(cache) == jax.tree.structure(jax.tree.map(lambda x: x, cache))  # a pytree


def test_decoding_past_max_len_is_a_clear_error():
    cfg = tiny_config(*RADIAL)
    graphdef, params = nnx.split(build_model(cfg), nnx.Param)
    cache = init_cache(cfg, 2, 8)
    with pytest.raises(ValueError, match=r"max_len=8.*sequence 1 holds 0 positions and 9 more"):
        prefill(graphdef, params, jnp.zeros((2, 9), jnp.int32), jnp.array([3, 9]), cache)
    full = cache.replace(length_B=jnp.array([5, 8], jnp.int32))
    with pytest.raises(ValueError, match=r"max_len=8.*sequence 1 holds 8 positions and 1 more.*9 in all"):
        decode_step(graphdef, params, jnp.zeros((2,), jnp.int32), full)
    check_room(full, np.array([3, 0]))  # exactly full is fine
    with pytest.raises(ValueError, match="max_len=8"):
        check_room(full, 1, length=np.array([7, 8]))
    learned = tiny_config("model.positions=learned", "model.max_positions=32")
    with pytest.raises(ValueError, match="max_len=33 exceeds model.max_positions=32"):
        init_cache(learned, 1, 33)


def test_expert_choice_cannot_decode():
    cfg = tiny_config(*RADIAL, "routing.policy=expert_choice")
    graphdef, params = nnx.split(build_model(cfg), nnx.Param)
    with pytest.raises(ValueError, match="expert_choice is not causal"):
        decode_step(graphdef, params, jnp.zeros((1,), jnp.int32), init_cache(cfg, 1, 4))


def test_grouped_attention_matches_jax_attention_on_the_cache_layout():
    """The cache's heads-first attention equals jax.nn.dot_product_attention (GQA, masked keys)."""
    from radial_jax.model.layers import grouped_attention

    kq, kk, kv, km = jax.random.split(jax.random.PRNGKey(3), 4)
    b, s, t, h, g, k = 2, 3, 7, 4, 2, 8
    q = jax.random.normal(kq, (b, s, h, k))
    keys, values = jax.random.normal(kk, (b, t, g, k)), jax.random.normal(kv, (b, t, g, k))
    mask = jax.random.bernoulli(km, 0.6, (b, 1, s, t)).at[..., 0].set(True)
    want = jax.nn.dot_product_attention(q, keys, values, mask=mask)
    got = grouped_attention(q, keys.transpose(0, 2, 3, 1), jnp.swapaxes(values, 1, 2), mask)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("extra, batch", [([], 1), ([], 8), ([*RADIAL, "model.prefix_layers=1"], 1),
                                          ([*RADIAL, "model.prefix_layers=1"], 4)])
def test_decode_step_reads_and_writes_the_cache_in_place(extra, batch):
    """The compiled decode step copies no cache slot (the layout's reason to be: with [L, B, M, G, K]
    arrays, or a unit batch dimension in front, XLA copied every slot at every layer and token), nor
    the tied embedding table (contracted as `.T`, XLA copied the transposed table at every token)."""
    cfg = tiny_config(*extra)
    graphdef, params = nnx.split(build_model(cfg), nnx.Param)
    max_len = 37  # a length no other array has
    cache = init_cache(cfg, batch, max_len)
    kw = {"step_weights": unstack_weights(graphdef, params)} if cfg.model.kind == "radial" else {}
    step = jax.jit(lambda p, t, c: decode_step(graphdef, p, t, c, **kw), donate_argnums=2)
    hlo = step.lower(params, jnp.zeros((batch,), jnp.int32), cache).compile().as_text()
    slot_shapes = {tuple(x.shape) for x in (*cache.k, *cache.v)}
    copies = f32_copies(hlo)
    assert not [c for c in copies if c in slot_shapes], f"slot copies in the compiled step: {copies}"
    table = (cfg.model.vocab_size, cfg.model.d_model)
    assert table not in copies and table[::-1] not in copies, f"embedding table copied: {copies}"
    assert any(str(max_len) in line and "scatter" in line for line in hlo.splitlines())  # it does write


@pytest.mark.parametrize("layers", [[0, 2, 1, 3, 2, 0, 0, 1], [1] * 8, [3] * 8, [2],
                                    [0, 3, 0, 3, 1, 1, 1, 2, 2, 2, 0]])
def test_map_groups_runs_every_entry_on_its_own_layer_and_drops_none(layers):
    """Batched decoding's grouping: entry n's row comes from fns[layer n] (a wrong layer leaves the
    wrong tag), every grouped entry is written (a dropped one keeps -1), skips (layer 3) are not,
    including a layer holding every entry (the largest bucket), buckets larger than groups (whose
    spare rows run the next groups' entries) and small groups run one entry at a time."""
    p, n = 3, len(layers)
    layer_N = np.array(layers)
    fns = [lambda x_C, i=i: (x_C * 10 + i, -x_C) for i in range(p)]
    x_N = jnp.arange(1, n + 1, dtype=jnp.float32)
    init = (jnp.full((n,), -1.0), jnp.full((n,), -1.0))
    for classes, rows_max in ((1, 0), (4, 0), (4, 2)):
        sizes = dsp.bucket_sizes(n, classes)
        grouped = jax.jit(lambda layer_N, x_N, sizes=sizes, r=rows_max: dsp.map_groups(
            fns, dsp.group_by_layer(layer_N, p), (x_N,), init, sizes, r))
        tagged, negated = grouped(jnp.asarray(layer_N), x_N)
        run = layer_N < p
        np.testing.assert_array_equal(tagged, np.where(run, np.arange(1, n + 1) * 10 + layer_N, -1))
        np.testing.assert_array_equal(negated, np.where(run, -np.arange(1, n + 1), -1))


def test_bucket_sizes():
    assert dsp.bucket_sizes(8) == tuple(range(9))
    assert dsp.bucket_sizes(32) == (0, 4, 8, 12, 16, 20, 24, 28, 32)
    assert dsp.bucket_sizes(10, 4) == (0, 3, 5, 8, 10)
    assert dsp.bucket_sizes(3, 1) == (0, 3)
    with pytest.raises(ValueError, match="n >= 1"):
        dsp.bucket_sizes(0)


@pytest.mark.parametrize("rows_max", [0, 2])
def test_grouped_decode_step_equals_the_all_layers_step_under_skewed_routes(rows_max, monkeypatch):
    """A batch of 4 whose routes crowd one layer (a bias sends most tokens to layer 0) or spread
    out: the grouped step (each layer runs its own tokens, in buckets, or with rows_max = 2 small
    groups one token at a time) gives the logits, routes and cache of RadialLM.route_step's step,
    where every layer runs every token (a one-token prefill)."""
    monkeypatch.setattr(decode, "ROWS_MAX_CPU", rows_max)
    decode_jit = jax.jit(lambda *a: decode_step(*a), static_argnums=0)  # traced with this rows_max
    cfg = tiny_config(*RADIAL, "model.prefix_layers=1", "model.steps=2")
    model = build_model(cfg)
    rng = np.random.default_rng(1)
    tokens = jnp.asarray(rng.integers(0, 256, (4, 5)), jnp.int32)
    lengths = jnp.array([5, 2, 4, 1], jnp.int32)
    for bias in ([0.0, 0.0, 0.0], [8.0, 0.0, 0.0]):
        model.router.select_bias[...] = jnp.broadcast_to(jnp.asarray(bias), model.router.select_bias.shape)
        graphdef, params = nnx.split(model, nnx.Param)
        _, cache = prefill_jit(graphdef, params, tokens, lengths, init_cache(cfg, 4, 8))
        nxt = tokens[:, 0]
        got, c1 = decode_jit(graphdef, params, nxt, cache)
        want, c2 = prefill_jit(graphdef, params, nxt[:, None], jnp.ones(4, jnp.int32), cache)
        np.testing.assert_allclose(got, want[:, 0], atol=1e-5, rtol=0)
        route = np.asarray(c1.route_TxBxM)[:, np.arange(4), np.asarray(lengths)]
        np.testing.assert_array_equal(route, np.asarray(c2.route_TxBxM)[:, np.arange(4), np.asarray(lengths)])
        if bias[0]:
            assert (route == 0).sum() >= 5  # a crowded layer
        for a, b in zip(jax.tree.leaves(c1), jax.tree.leaves(c2), strict=True):
            np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32), atol=1e-5)
