"""The dense model: packing isolation, causality, dtype handling and a learning step."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from radial_jax.model.build import build_model, count_params
from radial_jax.train.optimizer import lr_schedule, make_optimizer
from radial_jax.train.step import init_state, make_train_step
from tests.helpers import packed_batch, tiny_config


def logits_of(model, batch):
    return model(batch["inputs"], batch["positions"], batch["segment_ids"])[0]


def test_changing_one_document_changes_no_other_documents_logits():
    cfg = tiny_config()
    model = build_model(cfg)
    batch = packed_batch([[10, 12, 7]], seq_len=32)
    base = logits_of(model, batch)
    seg = np.asarray(batch["segment_ids"][0])
    changed = dict(batch)
    toks = np.asarray(batch["inputs"]).copy()
    toks[0, seg == 2] = (toks[0, seg == 2] + 17) % 256  # edit document 2 only
    changed["inputs"] = jnp.asarray(toks)
    new = logits_of(model, changed)
    diff = np.abs(np.asarray(new - base)).max(-1)[0]
    assert diff[seg == 2].max() > 1e-4              # the edited document did change
    assert diff[seg != 2].max() == 0.0              # documents before and after did not


def test_causal_within_a_document():
    model = build_model(tiny_config())
    batch = packed_batch([[32]], seq_len=32)
    base = logits_of(model, batch)
    toks = np.asarray(batch["inputs"]).copy()
    toks[0, 20] = (toks[0, 20] + 1) % 256
    new = logits_of(model, {**batch, "inputs": jnp.asarray(toks)})
    diff = np.abs(np.asarray(new - base)).max(-1)[0]
    assert diff[:20].max() == 0.0 and diff[20:].max() > 0


def test_position_ids_restart_per_document():
    # The same document gives the same logits wherever it sits in the row (RoPE on doc positions).
    model = build_model(tiny_config())
    a = packed_batch([[8, 12]], seq_len=32, seed=1)
    toks = np.asarray(a["inputs"]).copy()
    seg = np.asarray(a["segment_ids"][0])
    doc2 = toks[0, seg == 2]
    b = packed_batch([[12]], seq_len=32, seed=2)
    btoks = np.asarray(b["inputs"]).copy()
    btoks[0, :12] = doc2
    la, lb = logits_of(model, a), logits_of(model, {**b, "inputs": jnp.asarray(btoks)})
    np.testing.assert_allclose(np.asarray(la[0, seg == 2]), np.asarray(lb[0, :12]), atol=1e-5)


def test_bfloat16_compute_keeps_float32_params_and_logits():
    cfg = tiny_config("model.dtype=bfloat16")
    model = build_model(cfg)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    out = logits_of(model, packed_batch([[32]], seq_len=32))
    assert out.dtype == jnp.float32 and bool(jnp.isfinite(out).all())
    ref = logits_of(build_model(tiny_config()), packed_batch([[32]], seq_len=32))
    assert float(jnp.abs(out - ref).max()) < 0.1  # same weights, lower precision


def test_untied_head_adds_a_vocab_matrix():
    tied = count_params(build_model(tiny_config()))
    untied = count_params(build_model(tiny_config("model.tie_embeddings=false")))
    assert untied - tied == 32 * 258


def test_train_steps_lower_the_loss_on_a_fixed_batch():
    cfg = tiny_config("train.lr=1e-2", "train.steps=30")
    graphdef, params = nnx.split(build_model(cfg), nnx.Param)
    tx = make_optimizer(cfg.train)
    step = jax.jit(make_train_step(graphdef, tx, lr_schedule(cfg.train)))
    state = init_state(params, tx)
    batch = packed_batch([[20, 12], [32], [5, 5, 22], [30]], seq_len=32)
    losses = []
    for _ in range(30):
        state, m = step(state, batch)
        losses.append(float(m["train/loss"]))
    assert losses[-1] < 0.5 * losses[0]
    assert int(state.step) == 30
