"""Dispatch: plans against a plain-loop queueing reference, data movement against one-hot einsums."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from radial_jax.model import dispatch as dsp

# Jitted planners: one compile per shape keeps the suite fast (eager mode compiles op by op).
plan_token_choice = jax.jit(dsp.plan_token_choice, static_argnums=(2, 3))
plan_expert_choice = jax.jit(dsp.plan_expert_choice, static_argnums=(1,))

# --------------------------------------------------------------------------- references (numpy loops)


def ref_token_choice(choice, priority, p, c):
    """One-hot dispatch [B, S, P, C] and per-token dropped counts, by the queueing rule, in loops."""
    b, s, k = choice.shape
    onehot = np.zeros((b, s, p, c), np.float32)
    dropped = np.zeros((b, s), np.int32)
    for bi in range(b):
        for layer in range(p):
            queue = [(-float(priority[bi, si, ki]), si) for si in range(s) for ki in range(k)
                     if choice[bi, si, ki] == layer]
            for rank, (_, si) in enumerate(sorted(queue)):
                if rank < c:
                    onehot[bi, si, layer, rank] = 1.0
                else:
                    dropped[bi, si] += 1
    return onehot, dropped


def ref_expert_choice(scores, c, valid=None):
    """One-hot dispatch [B, S, P, C]: each layer's top-C valid tokens, ties to the earlier token."""
    b, s, p = scores.shape
    onehot = np.zeros((b, s, p, c), np.float32)
    for bi in range(b):
        for layer in range(p):
            cands = [(-float(scores[bi, si, layer]), si) for si in range(s)
                     if valid is None or valid[bi, si]]
            for rank, (_, si) in enumerate(sorted(cands)[:c]):
                onehot[bi, si, layer, rank] = 1.0
    return onehot


def ref_gather(h, onehot):
    return jnp.einsum("bspc,bsd->bpcd", onehot, h)


def ref_combine(h, delta, onehot):
    return h + jnp.einsum("bspc,bpcd->bsd", onehot, delta)


def onehot_of(d: dsp.Dispatch, s: int):
    """The plan's forward map (idx, ok) as a one-hot [B, S, P, C]."""
    return np.asarray(jax.nn.one_hot(d.idx_BxPxC, s, axis=1) * d.ok_BxPxC[:, None])


def check_inverse_map(d: dsp.Dispatch, onehot):
    """(slot, kept) must name exactly the slots that the reference gives each token."""
    b, s, p, c = onehot.shape
    slot, kept = np.asarray(d.slot_BxSxK), np.asarray(d.kept_BxSxK)
    from_inverse = np.zeros_like(onehot)
    for bi in range(b):
        for si in range(s):
            for ki in range(slot.shape[2]):
                if kept[bi, si, ki]:
                    layer, rank = divmod(int(slot[bi, si, ki]), c)
                    from_inverse[bi, si, layer, rank] += 1.0
    np.testing.assert_array_equal(from_inverse, onehot)


def random_token_routes(rng, b, s, k, p, tie_levels=None):
    """Choices with distinct layers per token (some skips, value p) and priorities (with ties)."""
    choice = np.stack([np.stack([rng.permutation(p + 1)[:k] for _ in range(s)]) for _ in range(b)])
    choice = np.where(rng.random((b, s, k)) < 0.2, p, choice).astype(np.int32)  # more skips
    if tie_levels:
        priority = rng.integers(0, tie_levels, (b, s, k)).astype(np.float32)
    else:
        priority = rng.standard_normal((b, s, k)).astype(np.float32)
    return choice, priority


def values_and_grads(gather_fn, combine_fn, h, delta, seed):
    """Values of both ops and grads of a random scalar of both, w.r.t. h and delta."""
    rng = np.random.default_rng(seed)
    w_buf = jnp.asarray(rng.standard_normal(delta.shape), jnp.float32)
    w_out = jnp.asarray(rng.standard_normal(h.shape), jnp.float32)

    def loss(h, delta):
        return (jnp.sum(w_buf * jnp.sin(gather_fn(h))) + jnp.sum(w_out * combine_fn(h, delta) ** 2)
                + jnp.sum(jnp.cos(combine_fn(gather_fn(h)[:, :1, :1, :].sum() + h, delta))))

    run = jax.jit(lambda h, delta: (gather_fn(h), combine_fn(h, delta),
                                    jax.grad(loss, argnums=(0, 1))(h, delta)))
    return run(h, delta)


def assert_matches_reference(d: dsp.Dispatch, onehot, seed=0, dim=3):
    b, s, p, c = onehot.shape
    rng = np.random.default_rng(seed)
    h = jnp.asarray(rng.standard_normal((b, s, dim)), jnp.float32)
    delta = jnp.asarray(rng.standard_normal((b, p, c, dim)), jnp.float32)
    got = values_and_grads(lambda x: dsp.gather_tokens(x, d), lambda x, y: dsp.combine(x, y, d),
                           h, delta, seed)
    want = values_and_grads(lambda x: ref_gather(x, onehot), lambda x, y: ref_combine(x, y, onehot),
                            h, delta, seed)
    for name, g, w in zip(["gather", "combine", "grads"], got, want, strict=True):
        for gl, wl in zip(jax.tree.leaves(g), jax.tree.leaves(w), strict=True):
            np.testing.assert_allclose(gl, wl, rtol=1e-5, atol=1e-5, err_msg=name)


# --------------------------------------------------------------------------- capacity


@pytest.mark.parametrize("s,p,f,want", [(16, 4, 1.0, 4), (10, 4, 1.0, 3), (16, 4, 1.25, 5),
                                        (8, 4, 0.01, 1), (8, 2, 100.0, 8), (7, 7, 1.0, 1)])
def test_capacity_arithmetic(s, p, f, want):
    assert dsp.capacity(s, p, f) == want
    assert isinstance(dsp.capacity(s, p, f), int)


@pytest.mark.parametrize("args", [(0, 4, 1.0), (8, 0, 1.0), (8, 4, 0.0), (-1, 4, 1.0), (8, 4, -2.0)])
def test_capacity_rejects_non_positive(args):
    with pytest.raises(ValueError, match="positive"):
        dsp.capacity(*args)


# --------------------------------------------------------------------------- token choice


@pytest.mark.parametrize("b,s,k,p,c,ties,seed", [
    (2, 12, 1, 3, 4, 0, 0),  # roomy-ish: skips, few drops
    (3, 16, 1, 4, 2, 3, 1),  # overflow, tied priorities
    (2, 10, 2, 4, 2, 0, 2),  # top-2 over distinct layers, overflow
    (2, 9, 2, 3, 9, 2, 3),  # top-2, capacity = S: nothing dropped
    (1, 8, 3, 3, 1, 2, 4),  # K = P, capacity 1
])
def test_token_choice_matches_reference(b, s, k, p, c, ties, seed):
    rng = np.random.default_rng(seed)
    choice, priority = random_token_routes(rng, b, s, k, p, tie_levels=ties)
    d = plan_token_choice(jnp.asarray(choice), jnp.asarray(priority), p, c)
    onehot, dropped = ref_token_choice(choice, priority, p, c)
    assert d.idx_BxPxC.shape == (b, p, c) and d.slot_BxSxK.shape == (b, s, k)
    assert d.idx_BxPxC.dtype == jnp.int32 and d.slot_BxSxK.dtype == jnp.int32
    np.testing.assert_array_equal(onehot_of(d, s), onehot)
    check_inverse_map(d, onehot)
    np.testing.assert_array_equal(d.dropped_BxS, dropped)
    np.testing.assert_array_equal(d.kept_BxSxK[choice == p], False)  # skips never get a slot
    assert np.all(np.asarray(d.idx_BxPxC)[~np.asarray(d.ok_BxPxC)] == 0)  # empty slots point at 0
    load = np.asarray(dsp.load_BxP(d))
    assert load.max() <= c
    counts = np.stack([(choice == layer).sum((1, 2)) for layer in range(p)], axis=1)
    np.testing.assert_array_equal(load, np.minimum(counts, c))
    assert_matches_reference(d, onehot, seed)


def test_higher_priority_wins_the_only_slot():
    choice = jnp.zeros((1, 4, 1), jnp.int32)
    priority = jnp.array([0.1, 0.2, 0.9, 0.3]).reshape(1, 4, 1)
    d = plan_token_choice(choice, priority, pool_size=2, capacity=1)
    assert int(d.idx_BxPxC[0, 0, 0]) == 2
    np.testing.assert_array_equal(d.kept_BxSxK[0, :, 0], [False, False, True, False])
    np.testing.assert_array_equal(d.ok_BxPxC[0], [[True], [False]])


def test_equal_priority_earlier_position_wins():
    choice = jnp.array([2, 1, 1, 2, 1]).reshape(1, 5, 1)
    priority = jnp.array([0.5, 0.5, 0.5, 0.5, 0.7]).reshape(1, 5, 1)
    d = plan_token_choice(choice, priority, pool_size=3, capacity=2)
    np.testing.assert_array_equal(d.idx_BxPxC[0, 1], [4, 1])  # 0.7 first, then the earlier tie
    np.testing.assert_array_equal(d.idx_BxPxC[0, 2], [0, 3])
    np.testing.assert_array_equal(d.kept_BxSxK[0, :, 0], [True, True, False, True, True])


def test_signed_zero_priorities_tie():
    choice = jnp.zeros((1, 2, 1), jnp.int32)
    priority = jnp.array([-0.0, 0.0]).reshape(1, 2, 1)  # equal values: position decides
    d = plan_token_choice(choice, priority, pool_size=1, capacity=1)
    assert int(d.idx_BxPxC[0, 0, 0]) == 0


def test_dropped_counts_overflow_not_skips():
    choice = jnp.array([[[0, 1], [0, 2], [0, 1], [2, 1], [2, 0]]])  # P = 2: value 2 is skip
    priority = jnp.zeros((1, 5, 2))
    d = plan_token_choice(choice, priority, pool_size=2, capacity=2)
    # Layer 0 queue: tokens 0, 1, 2, 4 -> 2 and 4 dropped; layer 1 queue: 0, 2, 3 -> 3 dropped.
    np.testing.assert_array_equal(d.dropped_BxS[0], [0, 0, 1, 1, 1])
    np.testing.assert_array_equal(dsp.load_BxP(d)[0], [2, 2])
    assert d.dropped_BxS.dtype == jnp.int32


def test_token_choice_jits_with_static_sizes():
    rng = np.random.default_rng(7)
    choice, priority = random_token_routes(rng, 2, 16, 2, 4, tie_levels=3)
    plan = jax.jit(dsp.plan_token_choice, static_argnums=(2, 3))
    d_jit = plan(jnp.asarray(choice), jnp.asarray(priority), 4, 3)
    d_eager = dsp.plan_token_choice(jnp.asarray(choice), jnp.asarray(priority), 4, 3)
    for a, e in zip(jax.tree.leaves(d_jit), jax.tree.leaves(d_eager), strict=True):
        np.testing.assert_array_equal(a, e)
    h = jnp.asarray(rng.standard_normal((2, 16, 5)), jnp.float32)
    step = jax.jit(lambda h, d: dsp.combine(h, 2.0 * dsp.gather_tokens(h, d), d))
    np.testing.assert_allclose(step(h, d_jit), dsp.combine(h, 2.0 * dsp.gather_tokens(h, d_eager), d_eager))


# --------------------------------------------------------------------------- expert choice


@pytest.mark.parametrize("with_valid", [False, True])
@pytest.mark.parametrize("b,s,p,c,ties,seed", [(2, 10, 3, 4, 0, 0), (2, 12, 4, 3, 3, 1), (1, 6, 2, 6, 2, 2)])
def test_expert_choice_matches_reference(b, s, p, c, ties, seed, with_valid):
    rng = np.random.default_rng(seed)
    if ties:
        scores = rng.integers(0, ties, (b, s, p)).astype(np.float32)
    else:
        scores = rng.standard_normal((b, s, p)).astype(np.float32)
    valid = (rng.random((b, s)) < 0.6) if with_valid else None
    d = plan_expert_choice(jnp.asarray(scores), c, None if valid is None else jnp.asarray(valid))
    onehot = ref_expert_choice(scores, c, valid)
    assert d.slot_BxSxK.shape == (b, s, p)
    np.testing.assert_array_equal(onehot_of(d, s), onehot)
    check_inverse_map(d, onehot)
    np.testing.assert_array_equal(d.dropped_BxS, 0)
    if valid is not None:
        assert not np.asarray(d.kept_BxSxK)[~valid].any()
        np.testing.assert_array_equal(dsp.load_BxP(d), np.minimum(valid.sum(1), c)[:, None].repeat(p, 1))
    assert_matches_reference(d, onehot, seed)


def test_expert_choice_ties_go_to_earlier_position_and_jit():
    scores = jnp.array([[1.0, 0.0], [3.0, 0.0], [3.0, 0.0], [2.0, 0.0]]).reshape(1, 4, 2)
    d = jax.jit(dsp.plan_expert_choice, static_argnums=1)(scores, 2)
    np.testing.assert_array_equal(d.idx_BxPxC[0], [[1, 2], [0, 1]])
    np.testing.assert_array_equal(d.kept_BxSxK[0], [[False, True], [True, True], [True, False],
                                                    [False, False]])


def test_expert_choice_rejects_capacity_above_seq_len():
    with pytest.raises(ValueError, match="capacity"):
        dsp.plan_expert_choice(jnp.zeros((1, 4, 2)), 5)


# --------------------------------------------------------------------------- data movement


def test_skipped_and_dropped_tokens_pass_through_and_empty_slots_are_zero():
    choice = jnp.array([0, 0, 0, 1]).reshape(1, 4, 1)  # P = 1: token 3 skips, token 2 overflows
    d = plan_token_choice(choice, jnp.zeros((1, 4, 1)), pool_size=1, capacity=3)
    h = jnp.arange(1.0, 9.0).reshape(1, 4, 2)
    buf = dsp.gather_tokens(h, d)
    np.testing.assert_array_equal(buf[0, 0], [[1, 2], [3, 4], [5, 6]])
    d2 = plan_token_choice(choice, jnp.zeros((1, 4, 1)), pool_size=1, capacity=2)
    out = dsp.combine(h, jnp.full((1, 1, 2, 2), 10.0), d2)
    np.testing.assert_array_equal(out[0], [[11, 12], [13, 14], [5, 6], [7, 8]])
    d3 = plan_token_choice(jnp.array([1, 0, 1, 1]).reshape(1, 4, 1), jnp.zeros((1, 4, 1)), 1, 3)
    np.testing.assert_array_equal(dsp.gather_tokens(h, d3)[0, 0], [[3, 4], [0, 0], [0, 0]])


def test_combine_keeps_h_dtype_and_grads_keep_their_dtypes():
    choice = jnp.array([0, 1, 0, 1]).reshape(1, 4, 1)
    d = plan_token_choice(choice, jnp.zeros((1, 4, 1)), pool_size=2, capacity=2)
    h = jnp.ones((1, 4, 3), jnp.float32)
    delta = jnp.ones((1, 2, 2, 3), jnp.bfloat16)
    assert dsp.combine(h, delta, d).dtype == jnp.float32
    g_h, g_delta = jax.grad(lambda h, x: dsp.combine(h, x, d).sum(), argnums=(0, 1))(h, delta)
    assert g_h.dtype == jnp.float32 and g_delta.dtype == jnp.bfloat16
    g_hb = jax.grad(lambda h: dsp.gather_tokens(h, d).astype(jnp.float32).sum())(h.astype(jnp.bfloat16))
    assert g_hb.dtype == jnp.bfloat16


def _naive_gather(h_BxSxD, d):
    """Autodiff through take_along_axis: its transpose is a scatter-add (what the custom VJP avoids)."""
    b, p, c = d.idx_BxPxC.shape
    rows = jnp.take_along_axis(h_BxSxD, d.idx_BxPxC.reshape(b, p * c, 1), axis=1).reshape(b, p, c, -1)
    return rows * d.ok_BxPxC[..., None]


@pytest.mark.parametrize("expert", [False, True])
def test_backward_passes_have_no_scatter(expert):
    rng = np.random.default_rng(0)
    if expert:
        d = plan_expert_choice(jnp.asarray(rng.standard_normal((2, 8, 3)), jnp.float32), 3)
    else:
        choice, priority = random_token_routes(rng, 2, 8, 2, 3)
        d = plan_token_choice(jnp.asarray(choice), jnp.asarray(priority), 3, 3)
    h = jnp.asarray(rng.standard_normal((2, 8, 4)), jnp.float32)
    delta = jnp.asarray(rng.standard_normal((2, 3, 3, 4)), jnp.float32)

    def hlo(f, *args):
        return jax.jit(jax.grad(f, argnums=tuple(range(len(args))))).lower(*args, d).as_text()

    loss_gather = lambda h, d: jnp.sum(jnp.sin(dsp.gather_tokens(h, d)))
    loss_combine = lambda h, x, d: jnp.sum(jnp.sin(dsp.combine(h, x, d)))
    loss_naive = lambda h, d: jnp.sum(jnp.sin(_naive_gather(h, d)))
    assert "gather" in hlo(loss_gather, h)
    assert "scatter" not in hlo(loss_gather, h)
    assert "scatter" not in hlo(loss_combine, h, delta)
    assert "scatter" in hlo(loss_naive, h)  # the check can see a scatter when one is there


def test_gather_then_combine_roundtrip_under_vmap_and_scan():
    """Dispatch is a pytree: it goes through scan carries/xs and vmap like arrays."""
    rng = np.random.default_rng(3)
    t, b, s, p, c = 3, 2, 8, 3, 3
    choice = jnp.asarray(rng.integers(0, p + 1, (t, b, s, 1)), jnp.int32)
    priority = jnp.asarray(rng.standard_normal((t, b, s, 1)), jnp.float32)
    plans = jax.vmap(functools.partial(dsp.plan_token_choice, pool_size=p, capacity=c))(choice, priority)
    h0 = jnp.asarray(rng.standard_normal((b, s, 4)), jnp.float32)

    def step(h, d):
        return dsp.combine(h, jnp.tanh(dsp.gather_tokens(h, d)), d), None

    h_scan, _ = jax.lax.scan(step, h0, plans)
    h_loop = h0
    for i in range(t):
        d = jax.tree.map(lambda x, i=i: x[i], plans)
        onehot = ref_token_choice(np.asarray(choice[i]), np.asarray(priority[i]), p, c)[0]
        h_loop = ref_combine(h_loop, jnp.tanh(ref_gather(h_loop, onehot)), onehot)
        np.testing.assert_array_equal(onehot_of(d, s), onehot)
    np.testing.assert_allclose(h_scan, h_loop, rtol=1e-5, atol=1e-5)
