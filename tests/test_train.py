"""The training loop end to end on the builtin corpus: resumption, outputs, eval command."""

import io
import json

import jax
import numpy as np
import pytest
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from radial_jax.cli import main
from radial_jax.config import load_config
from radial_jax.io.load import load_model
from radial_jax.train.loop import train
from radial_jax.train.metrics import MetricWriter, read_metrics
from tests.helpers import run_cfg


def losses(run_dir):
    return {r["step"]: r["train/loss"] for r in read_metrics(run_dir) if "train/loss" in r}


def test_a_resumed_run_rewrites_its_metrics_without_duplicates(tmp_path):
    first = MetricWriter(tmp_path)
    for step in (1, 2, 3, 4):
        first.scalars(step, {"train/loss": 10.0 - step})
    first.close()  # it stopped after step 4; its last checkpoint was step 2
    again = MetricWriter(tmp_path, start_step=2)
    assert again.dropped == 2
    for step in (3, 4, 5):
        again.scalars(step, {"train/loss": float(step)})
    png = io.BytesIO()
    Image.new("RGB", (5, 3), (255, 0, 0)).save(png, format="PNG")
    again.image(5, "route/heatmap", png.getvalue())
    again.close()
    expect = [(1, 9.0), (2, 8.0), (3, 3.0), (4, 4.0), (5, 5.0)]
    assert [(r["step"], r["train/loss"]) for r in read_metrics(tmp_path)] == expect
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    assert [(e.step, e.value) for e in acc.Scalars("train/loss")] == expect
    [image] = acc.Images("route/heatmap")
    assert (image.step, image.width, image.height) == (5, 5, 3)


@pytest.mark.parametrize("kind", ["dense", "radial"])
def test_resume_is_exact(tmp_path, corpus_cache, kind):
    extra = ["train.steps=8"] + (["model.kind=radial", "model.pool_size=2", "model.steps=2"]
                                 if kind == "radial" else [])
    straight = tmp_path / "straight"
    train(run_cfg(straight, corpus_cache, *extra))
    halves = tmp_path / "halves"
    train(run_cfg(halves, corpus_cache, *extra), stop_after=4)
    assert sorted(losses(halves)) == [1, 2, 3, 4]
    train(run_cfg(halves, corpus_cache, *extra))  # resumes from step 4
    a, b = losses(straight), losses(halves)
    assert sorted(a) == sorted(b) == list(range(1, 9))
    assert all(a[s] == b[s] for s in a), (a, b)  # bit-identical, data order included
    pa, pb = load_model(straight).params, load_model(halves).params
    for x, y in zip(jax.tree.leaves(pa), jax.tree.leaves(pb), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_run_dir_outputs_and_eval_command(tmp_path, corpus_cache, capsys):
    run_dir = tmp_path / "run"
    cfg = run_cfg(run_dir, corpus_cache, "train.steps=4")
    last = train(cfg)
    assert load_config(run_dir / "config.yaml") == cfg
    rows = read_metrics(run_dir)
    assert [r["step"] for r in rows if "train/loss" in r] == [1, 2, 3, 4]
    for key in ("train/loss", "perf/step_time_s", "perf/tokens_per_s", "train/lr", "train/grad_norm"):
        assert key in rows[0]
    evals = [r for r in rows if "eval/loss" in r]
    assert evals and {"eval/perplexity", "eval/bits_per_byte"} <= set(evals[-1])
    acc = EventAccumulator(str(run_dir / "tensorboard"))
    acc.Reload()
    assert {"train/loss", "eval/loss"} <= set(acc.Tags()["scalars"])
    assert [e.step for e in acc.Scalars("train/loss")] == [1, 2, 3, 4]
    out = capsys.readouterr().out
    assert "tensorboard --logdir" in out and str(run_dir) in out

    assert main(["eval", "--checkpoint", str(run_dir), "--batches", "2"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["step"] == 4
    assert report["eval/loss"] == pytest.approx(last["eval/loss"], rel=1e-6)
    assert report["eval/bits_per_byte"] == pytest.approx(report["eval/loss"] / np.log(2), rel=0.2)


def test_eval_of_a_missing_run_dir_is_a_clear_error(tmp_path, capsys):
    assert main(["eval", "--checkpoint", str(tmp_path / "nothing")]) == 2
    assert "is not a run directory" in capsys.readouterr().err


def test_train_cli_reports_config_errors_without_a_traceback(tmp_path, capsys):
    assert main(["train", str(tmp_path / "missing.yaml")]) == 2
    assert "config file not found" in capsys.readouterr().err
