"""MFU accounting: FLOPs per token against hand counts, and perf/mfu in a CPU run's metrics."""

import pytest

from radial_jax.config import load_config
from radial_jax.model.flops import active_train_flops, flops_per_token
from radial_jax.train.metrics import read_metrics
from radial_jax.train.perf import peak_flops, perf_metrics
from tests.helpers import TINY, run_cfg

# TINY: d=32, 2 layers, 4 query / 2 KV heads of 8, SwiGLU 64, vocab 258, seq 32, tied embeddings.
PROJ = 2 * 32 * 8 * (2 * 4 + 2 * 2)  # q, k, v, o projections
ATTN = 2 * 2 * 4 * 8 * 32            # scores and values over 32 keys
MLP = 2 * 3 * 32 * 64
BLOCK = PROJ + ATTN + MLP            # 22,528
HEAD = 2 * 32 * 258


def test_dense_flops_by_hand():
    cfg = load_config(None, TINY)
    assert BLOCK == 22_528
    assert flops_per_token(cfg).train == 3 * (2 * BLOCK + HEAD)
    assert active_train_flops(cfg, active_depth=1.0) == 3 * (2 * BLOCK + HEAD)  # dense: always all


def test_radial_flops_by_hand():
    cfg = load_config(None, [*TINY, "model.kind=radial", "model.prefix_layers=1", "model.pool_size=2",
                             "model.steps=3", "model.capacity_factor=0.5", "router.hidden=16"])
    router = 2 * (32 * 16 + 16 * 3)  # d -> hidden -> P + 1 choices
    slots = 2 * 8 / 32               # P x C slots per token, C = ceil(0.5 * 32 / 2) = 8
    assert flops_per_token(cfg).train == 3 * (BLOCK + 3 * (router + slots * BLOCK) + HEAD)
    # Routes that ran the prefix and 1.5 pool blocks per token on average:
    assert active_train_flops(cfg, active_depth=2.5) == 3 * (2.5 * BLOCK + 3 * router + HEAD)


def test_perf_metrics_and_peak():
    cfg = load_config(None, [*TINY, "train.peak_tflops=0.5"])
    assert peak_flops(cfg) == (0.5e12, "train.peak_tflops")
    m = perf_metrics(cfg, tokens_per_s=4e6, n_devices=2, peak=0.5e12)
    per_device = 3 * (2 * BLOCK + HEAD) * 2e6
    assert m["perf/model_tflops_per_device"] == pytest.approx(per_device / 1e12)
    assert m["perf/mfu"] == pytest.approx(per_device / 0.5e12)


def test_cpu_run_logs_mfu(tmp_path, corpus_cache):
    from radial_jax.train.loop import train

    cfg = run_cfg(tmp_path / "run", corpus_cache, "train.steps=2", "train.eval_every=100")
    train(cfg)
    row = [r for r in read_metrics(tmp_path / "run") if "perf/tokens_per_s" in r][-1]
    assert 0 < row["perf/mfu"] < 1  # against the CPU's probed matmul peak
    assert row["perf/model_tflops_per_device"] > 0
