"""Training a radial model from scratch on the builtin corpus: loss falls, routing moves."""

import jax
import numpy as np
import pytest
from flax import nnx

from radial_jax.data.pipeline import make_eval_batches
from radial_jax.data.tokenizer import get_tokenizer
from radial_jax.io.load import load_model
from radial_jax.model.build import build_model
from radial_jax.train.loop import evaluate, train
from radial_jax.train.metrics import read_metrics
from radial_jax.train.step import make_eval_step
from tests.helpers import run_cfg

RADIAL = ["model.kind=radial", "model.pool_size=4", "model.steps=4", "model.capacity_factor=0.5",
          "router.init=random", "router.skip_bias=-2", "train.steps=40", "train.lr=3e-3",
          "train.eval_every=40", "data.batch_size=8", "train.log_every=5"]


def routes(graphdef, params, batch):
    fwd = jax.jit(lambda p, b: nnx.merge(graphdef, p)(b["inputs"], b["positions"], b["segment_ids"],
                                                        return_trace=True)[1].trace_TxBxS)
    return np.asarray(fwd(params, batch))


@pytest.mark.slow
def test_radial_training_lowers_eval_loss_and_moves_routing(tmp_path, corpus_cache):
    cfg = run_cfg(tmp_path / "run", corpus_cache, *RADIAL)
    tok = get_tokenizer(cfg.data.tokenizer)
    batches = make_eval_batches(cfg.data, tok, 2)
    graphdef, init_params = nnx.split(build_model(cfg), nnx.Param)  # what train() starts from
    eval_step = jax.jit(make_eval_step(graphdef, tok.token_bytes()))
    before = evaluate(eval_step, init_params, batches)["eval/loss"]
    last = train(cfg)
    params = load_model(tmp_path / "run").params
    after = evaluate(eval_step, params, batches)["eval/loss"]
    assert after == last["eval/loss"]
    assert after < before - 1.0, (before, after)
    moved = (routes(graphdef, params, batches[0]) != routes(graphdef, init_params, batches[0])).mean()
    assert moved > 0.1, moved  # the router's decisions changed for a good share of token-steps
    logged = [r for r in read_metrics(tmp_path / "run") if "route/active_depth" in r]
    assert logged and all(0 <= r["route/active_fraction"] <= 1 for r in logged)
    assert (tmp_path / "run" / "routing_heatmap.png").stat().st_size > 1000
