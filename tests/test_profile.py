"""`radial profile`: residual ratios against a direct computation, oracle skipping, routing statistics."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from radial_jax.analysis.oracle import make_oracle_step
from radial_jax.analysis.profile import parse_thresholds, profile_dense, profile_radial, write_report
from radial_jax.analysis.ratios import residual_ratio
from radial_jax.cli import main
from radial_jax.io.export import write_export
from radial_jax.model.build import build_model
from radial_jax.model.layers import attention_mask
from radial_jax.model.policy import History
from radial_jax.model.routing import SequenceKV, StepState
from radial_jax.train.loop import train
from radial_jax.train.loss import masked_sum_and_count, token_nll
from radial_jax.train.step import forward
from tests.helpers import packed_batch, tiny_config

SEQ = 32


@pytest.fixture(scope="module")
def dense():
    cfg = tiny_config("model.n_layers=3", "model.init_std=0.2")  # larger init: ratios far from 0
    graphdef, params = nnx.split(build_model(cfg), nnx.Param)
    batches = [packed_batch([[20, 12], [32], [9, 9, 5], [17]], SEQ, seed=s) for s in (0, 1)]
    return cfg, graphdef, params, batches


def _norm(a) -> np.ndarray:
    return np.linalg.norm(np.asarray(a, np.float64), axis=-1)


def direct_ratios(graphdef, params, batch, kind="stream", blocks="blocks") -> tuple[np.ndarray, jax.Array]:
    """[2L, B, S] ratios from each Block's own output: attention delta, then the rest of the block
    (`stream`: over the block's input, `output`: over its output); and the stream after the blocks."""
    model = nnx.merge(graphdef, params)
    seg, pos = batch["segment_ids"], batch["positions"]
    idx = jnp.broadcast_to(jnp.arange(seg.shape[1]), seg.shape)
    mask = attention_mask(seg, idx, seg, idx)
    x = model.embedder.encode(batch["inputs"], pos)
    out = []
    for block in getattr(model, blocks):
        q, k, v = block.qkv(x, pos)
        mid = x + block.attn_delta(q, k, v, mask)
        y = block(x, pos, mask)  # the block's output as the dense model computes it
        if kind == "stream":
            out += [_norm(mid - x) / _norm(x), _norm(y - mid) / _norm(mid)]
        else:
            out += [_norm(mid - x) / _norm(mid), _norm(y - mid) / _norm(y)]
        x = y
    return np.stack(out), x


def test_residual_ratios_match_direct_computation(dense):
    cfg, graphdef, params, batches = dense
    step = jax.jit(make_oracle_step(graphdef))
    per_batch = []
    for batch in batches:
        got = np.asarray(step(params, batch, 0.0).ratio_NxBxS)
        want, _ = direct_ratios(graphdef, params, batch)
        valid = np.asarray(batch["segment_ids"]) != 0
        np.testing.assert_allclose(got[:, valid], want[:, valid], rtol=1e-4)
        per_batch.append(want[:, valid])
    want_all = np.concatenate(per_batch, axis=1)
    report = profile_dense(graphdef, params, batches, [], n_layers=3)
    assert [b["name"] for b in report["blocks"]] == ["L0.attn", "L0.mlp", "L1.attn", "L1.mlp",
                                                     "L2.attn", "L2.mlp"]
    n_valid = sum(int((np.asarray(b["segment_ids"]) != 0).sum()) for b in batches)
    assert n_valid < 2 * 4 * SEQ  # the batches hold padding, which must be left out
    for i, b in enumerate(report["blocks"]):
        assert b["tokens"] == n_valid
        assert b["median"] == pytest.approx(np.median(want_all[i]), rel=1e-4)
        assert b["q25"] == pytest.approx(np.quantile(want_all[i], 0.25), rel=1e-4)
        assert b["q75"] == pytest.approx(np.quantile(want_all[i], 0.75), rel=1e-4)
    assert report["overall"]["median"] == pytest.approx(np.median(want_all), rel=1e-4)


def test_oracle_at_zero_runs_every_block_and_reproduces_the_loss(dense):
    _, graphdef, params, batches = dense
    oracle = jax.jit(make_oracle_step(graphdef))

    @jax.jit
    def model_loss(params, batch):
        logits, _ = forward(graphdef, params, batch)
        return masked_sum_and_count(token_nll(logits, batch["targets"]), batch["loss_mask"])

    for batch in batches:
        out = oracle(params, batch, 0.0)
        assert bool(out.ran_NxBxS.all())
        nll, count = model_loss(params, batch)
        assert float(out.tokens) == float(count)
        assert float(out.nll) == float(nll)  # bit for bit: the same computation
    report = profile_dense(graphdef, params, batches, [0.0], n_layers=3)
    row = report["oracle"]["rows"][0]
    assert row["mean_blocks"] == 6 and row["loss"] == report["eval"]["loss"]
    assert row["depth_hist"][-1] == sum(row["depth_hist"])


def test_oracle_skips_more_as_the_threshold_rises(dense):
    _, graphdef, params, batches = dense
    report = profile_dense(graphdef, params, batches, [0.05, 0.2, 0.5, 1e9], n_layers=3)
    rows = report["oracle"]["rows"]
    depths = [r["mean_blocks"] for r in rows]
    assert all(a >= b for a, b in zip(depths, depths[1:], strict=False)), depths
    assert 0 < depths[1] < 6
    assert depths[-1] == 0 and rows[-1]["depth_hist"][0] == sum(rows[-1]["depth_hist"])
    # Every block skipped: the logits are those of the embedding alone.
    model = nnx.merge(graphdef, params)
    nll = count = 0.0
    for batch in batches:
        logits = model.embedder.decode(model.embedder.encode(batch["inputs"]))
        s, c = masked_sum_and_count(token_nll(logits, batch["targets"]), batch["loss_mask"])
        nll, count = nll + float(s), count + float(c)
    assert rows[-1]["loss"] == pytest.approx(nll / count, rel=1e-5)
    # Rates per block agree with the depth histogram.
    for r in rows:
        assert sum(r["run_rate_per_block"]) == pytest.approx(r["mean_blocks"], rel=1e-6)


def test_report_files_and_table(dense, tmp_path):
    _, graphdef, params, batches = dense
    report = profile_dense(graphdef, params, batches, [0.05, 0.2], n_layers=3)
    paths = write_report(report, tmp_path)
    for name in ("ratio_by_layer", "ratio_distribution", "oracle_depth", "oracle_tradeoff"):
        assert paths[name].read_bytes()[:4] == b"\x89PNG"
    data = json.loads(paths["json"].read_text())
    assert data["ratio"] == "stream" and "||f(x)|| / ||x||" in data["definition"]
    assert "on-the-fly" in data["oracle"]["variant"]
    assert len(data["oracle"]["rows"]) == 2 and "_ratios" not in data
    table = paths["table"].read_text()
    assert "| L2.mlp |" in table and "| 0.2 |" in table and "(stream)" in table


def test_parse_thresholds():
    assert parse_thresholds("0.05,0.01, 0.1") == [0.01, 0.05, 0.1]
    assert parse_thresholds("none") == [] and parse_thresholds("") == []
    with pytest.raises(ValueError, match="comma-separated"):
        parse_thresholds("5%")
    with pytest.raises(ValueError, match=">= 0"):
        parse_thresholds("-0.1")


def test_both_normalisations_by_hand(dense):
    delta = jnp.asarray([[[3.0, 4.0], [0.0, 0.0]]])
    x = jnp.asarray([[[6.0, 8.0], [1.0, 0.0]]])
    np.testing.assert_allclose(residual_ratio(delta, x, "stream"), [[5 / 10, 0.0]], rtol=1e-6)
    np.testing.assert_allclose(residual_ratio(delta, x, "output"), [[5 / 15, 0.0]], rtol=1e-6)
    _, graphdef, params, batches = dense
    report = profile_dense(graphdef, params, batches, [], n_layers=3, ratio="output")
    want = np.concatenate([r[:, np.asarray(b["segment_ids"]) != 0]
                           for b in batches
                           for r in [direct_ratios(graphdef, params, b, "output")[0]]], axis=1)
    assert report["ratio"] == "output" and "||f(x)|| / ||x + f(x)||" in report["definition"]
    for i, b in enumerate(report["blocks"]):
        assert b["median"] == pytest.approx(np.median(want[i]), rel=1e-4)
    with pytest.raises(ValueError, match="stream, output"):
        profile_dense(graphdef, params, batches, [], n_layers=3, ratio="delta")


@pytest.fixture(scope="module")
def radial():
    """Capacity 0.5 with a random router: every step drops tokens, so a ratio taken over tokens a layer
    did not process would show (their delta is 0)."""
    cfg = tiny_config("model.kind=radial", "model.pool_size=3", "model.steps=3", "model.prefix_layers=1",
                      "router.init=random", "model.capacity_factor=0.5", "model.init_std=0.2")
    graphdef, params = nnx.split(build_model(cfg), nnx.Param)
    batches = [packed_batch([[20, 12], [32], [9, 9, 5], [17]], SEQ, seed=s) for s in (0, 1)]
    return cfg, graphdef, params, batches


def _trajectory(graphdef, params, batch):
    """Each routing step's input and output streams [T, B, S, D] and dispatch (slots [T, B, P, C]), the
    steps run one by one through RadialLM.route_step."""
    model = nnx.merge(graphdef, params)
    seg, pos = batch["segment_ids"], batch["positions"]
    b, s = seg.shape
    idx = jnp.broadcast_to(jnp.arange(s), (b, s))
    h = model.embedder.encode(batch["inputs"], pos)
    for block in model.prefix:
        h = block(h, pos, attention_mask(seg, idx, seg, idx))
    state = StepState(h, History.empty(b, s, 3), None, SequenceKV(seg, idx))
    xs, ys, slots, oks = [], [], [], []
    for t in range(3):
        new, route = model.route_step(state, t, pos_BxS=pos, valid_BxS=seg != 0, capacity=model.capacity(s))
        xs.append(state.h_BxSxD)
        ys.append(new.h_BxSxD)
        slots.append(route.dispatch.idx_BxPxC)
        oks.append(route.dispatch.ok_BxPxC)
        state = new
    return jnp.stack(xs), jnp.stack(ys), jnp.stack(slots), jnp.stack(oks)


def direct_radial_ratios(graphdef, params, batches) -> dict:
    """{kind: {(step, layer): ratios}} slot by slot from each step's dispatch (the C slots a layer ran,
    real tokens only), in float64."""
    traj = jax.jit(lambda params, batch: _trajectory(graphdef, params, batch))
    out = {"stream": {}, "output": {}}
    for batch in batches:
        valid = np.asarray(batch["segment_ids"]) != 0
        x, y, idx, ok = (np.asarray(a) for a in traj(params, batch))
        x, y = x.astype(np.float64), y.astype(np.float64)
        for t, bi, p, c in zip(*np.nonzero(ok), strict=True):
            j = idx[t, bi, p, c]
            if valid[bi, j]:
                delta = np.linalg.norm(y[t, bi, j] - x[t, bi, j])
                out["stream"].setdefault((int(t), int(p)), []).append(delta / np.linalg.norm(x[t, bi, j]))
                out["output"].setdefault((int(t), int(p)), []).append(delta / np.linalg.norm(y[t, bi, j]))
    return out


def test_radial_ratios_per_step_and_layer_match_direct_computation(radial, tmp_path):
    _, graphdef, params, batches = radial
    n_valid = sum(int((np.asarray(b["segment_ids"]) != 0).sum()) for b in batches)
    direct = direct_radial_ratios(graphdef, params, batches)
    for kind in ("stream", "output"):
        report = profile_radial(graphdef, params, batches, pool_size=3, steps=3, prefix_layers=1,
                                ratio=kind, min_count=1)
        want = direct[kind]
        prefix = np.concatenate([direct_ratios(graphdef, params, b, kind, blocks="prefix")[0][
            :, np.asarray(b["segment_ids"]) != 0] for b in batches], axis=1)
        rs = report["ratios"]
        assert rs["matches_forward_routing"] and report["ratio"] == kind
        processed = 0
        for row, load in zip(rs["steps"], report["load_per_step"], strict=True):
            assert row["multi"] is None  # top-1: one layer per token and step
            assert load["skip"] > 0.2  # capacity drops tokens at every step
            for cell in row["layers"]:
                r = np.asarray(want[(row["step"], cell["layer"])])
                assert cell["tokens"] == r.size == round(load["layers"][cell["layer"]] * n_valid)
                assert cell["median"] == pytest.approx(np.median(r), rel=1e-4)
                assert cell["q25"] == pytest.approx(np.quantile(r, 0.25), rel=1e-4)
                assert r.min() > 0  # every processed token's stream changed
                processed += r.size
        assert rs["routed_overall"]["tokens"] == processed < 3 * n_valid
        assert [b["name"] for b in rs["prefix_blocks"]] == ["prefix L0.attn", "prefix L0.mlp"]
        for i, b in enumerate(rs["prefix_blocks"]):
            assert b["tokens"] == n_valid and b["median"] == pytest.approx(np.median(prefix[i]), rel=1e-4)
    paths = write_report(report, tmp_path)
    assert paths["ratio_by_step_layer"].read_bytes()[:4] == b"\x89PNG"
    table = paths["table"].read_text()
    assert "Residual ratio (output)" in table and "| prefix L0.mlp |" in table
    assert json.loads(paths["json"].read_text())["ratios"]["steps"][2]["layers"][1]["tokens"] > 0


def test_radial_routing_statistics(radial, tmp_path):
    _, graphdef, params, batches = radial
    report = profile_radial(graphdef, params, batches, pool_size=3, steps=3, prefix_layers=1,
                            decode=lambda ids: bytes(ids).decode("latin-1"), min_count=1)
    n_valid = sum(int((np.asarray(b["segment_ids"]) != 0).sum()) for b in batches)
    assert sum(report["depth"]["hist"]) == n_valid
    assert report["depth"]["hist"][0] == 0  # the prefix layer runs for every token
    for row in report["load_per_step"]:
        assert sum(row["layers"]) + row["skip"] == pytest.approx(1.0)
    hist = np.asarray(report["depth"]["hist"])
    assert report["depth"]["mean"] == pytest.approx((hist * np.arange(len(hist))).sum() / n_valid)
    mean_routed = sum(sum(r["layers"]) for r in report["load_per_step"])
    assert report["depth"]["mean"] == pytest.approx(1 + mean_routed)
    deep = report["deepest_tokens"]
    assert deep and deep[0]["mean_depth"] >= report["shallowest_tokens"][0]["mean_depth"]
    paths = write_report(report, tmp_path)
    assert paths["route_load"].exists() and paths["depth_hist"].exists()
    assert "| step | layer 0 | layer 1 | layer 2 | skip |" in paths["table"].read_text()


def test_profile_command_on_a_trained_run(tmp_path, corpus_cache, capsys):
    run_dir = tmp_path / "run"
    cfg = tiny_config(f"run.dir={run_dir}", f"data.cache_dir={corpus_cache}", "train.steps=2",
                      "train.eval_every=100", "train.eval_batches=1", "train.checkpoint_every=100")
    train(cfg)
    capsys.readouterr()
    out = tmp_path / "prof"
    assert main(["profile", "--checkpoint", str(run_dir), "--out", str(out), "--batches", "1",
                 "--oracle", "0.01,0.1"]) == 0
    printed = capsys.readouterr().out
    assert "| threshold | blocks run / token |" in printed and "| 0.1 |" in printed
    data = json.loads((out / "profile.json").read_text())
    assert data["step"] == 2 and data["source"] == "run"
    assert [r["threshold"] for r in data["oracle"]["rows"]] == [0.01, 0.1]
    assert (out / "oracle_depth.png").is_file()
    assert main(["profile", "--checkpoint", str(run_dir), "--oracle", "1%"]) == 2


def test_trend_command_on_two_dense_dirs(tmp_path, corpus_cache, capsys):
    dirs = []
    for d in (16, 32):  # untrained models written as export dirs: the trend reads any model directory
        cfg = tiny_config(f"model.d_model={d}", f"data.cache_dir={corpus_cache}", "model.init_std=0.2")
        write_export(cfg, nnx.split(build_model(cfg), nnx.Param)[1], tmp_path / f"d{d}")
        dirs.append(str(tmp_path / f"d{d}"))
    out = tmp_path / "trend"
    assert main(["profile", "--trend", *dirs[::-1], "--out", str(out), "--batches", "1",
                 "--ratio", "output"]) == 0
    printed = capsys.readouterr().out
    assert "Median residual ratio (output: r = ||f(x)|| / ||x + f(x)||)" in printed and "OPT-66B" in printed
    data = json.loads((out / "trend.json").read_text())
    assert data["ratio"] == "output" and [m["path"] for m in data["models"]] == dirs  # by size
    assert data["models"][0]["params"] < data["models"][1]["params"]
    assert all(0 < m["median"] < 10 and m["q25"] <= m["median"] <= m["q75"] for m in data["models"])
    assert any(v["params"] is None for v in data["paper"])  # a reported value without a model size
    assert (out / "trend.png").read_bytes()[:4] == b"\x89PNG" and (out / "trend.md").is_file()
    assert main(["profile", "--trend", dirs[0], "--checkpoint", dirs[1]]) == 2
