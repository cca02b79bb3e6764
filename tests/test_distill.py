"""`radial distill`: the student starts as the teacher, the KL term, the command end to end."""

import json
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from radial_jax.cli import main
from radial_jax.config import ConfigError
from radial_jax.distill import init_student, kl_per_token, student_config
from radial_jax.io.export import write_export
from radial_jax.io.load import load_model
from radial_jax.model.build import build_model
from tests.helpers import packed_batch, tiny_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    cfg = tiny_config("model.n_layers=3", "model.init_std=0.1")
    _, params = nnx.split(build_model(cfg), nnx.Param)
    path = tmp_path_factory.mktemp("teacher")
    write_export(cfg, params, path, step=1)
    return path


def logits(graphdef, params, batch):
    return np.asarray(nnx.merge(graphdef, params)(batch["inputs"], batch["positions"],
                                                  batch["segment_ids"])[0])


def test_student_starts_as_the_teacher(teacher_dir):
    teacher = load_model(teacher_dir)
    student = tiny_config("model.kind=radial", "model.prefix_layers=1", "routing.policy=fixed",
                          "model.capacity_factor=2.0", "model.d_model=64")  # d_model: the teacher's wins
    cfg = student_config(teacher.cfg, student)
    assert (cfg.model.kind, cfg.model.pool_size, cfg.model.steps, cfg.model.d_model) == ("radial", 2, 2, 32)
    graphdef, params = init_student(cfg, teacher)
    batch = packed_batch([[20, 12], [32]], 32)
    # the fixed schedule with room for every token runs the teacher's layers in order: same logits
    np.testing.assert_allclose(logits(graphdef, params, batch),
                               logits(teacher.graphdef, teacher.params, batch), atol=1e-5, rtol=1e-5)
    with pytest.raises(ConfigError, match="leaves no teacher layer for the pool"):
        student_config(teacher.cfg, tiny_config("model.kind=radial", "model.prefix_layers=3"))


def test_kl_per_token():
    t = jnp.asarray(np.random.default_rng(0).normal(size=(2, 5, 11)), jnp.float32)
    s = jnp.asarray(np.random.default_rng(1).normal(size=(2, 5, 11)), jnp.float32)
    np.testing.assert_allclose(np.asarray(kl_per_token(t, t, 1.0)), 0.0, atol=1e-6)
    kl = np.asarray(kl_per_token(t, s, 1.0))
    pt = np.exp(t) / np.exp(t).sum(-1, keepdims=True)
    ps = np.exp(s) / np.exp(s).sum(-1, keepdims=True)
    np.testing.assert_allclose(kl, (pt * np.log(pt / ps)).sum(-1), rtol=1e-5)
    assert (np.asarray(kl_per_token(t, s, 2.0)) > 0).all()


@pytest.mark.slow
def test_distill_command_writes_a_loadable_student(teacher_dir, tmp_path, corpus_cache, capsys):
    out = tmp_path / "student"
    assert main(["distill", "--teacher", str(teacher_dir), str(CONFIGS / "distill_tiny.yaml"),
                 f"run.dir={out}", f"data.cache_dir={corpus_cache}", "data.seq_len=32", "data.batch_size=2",
                 "train.steps=3", "train.eval_every=100", "train.eval_batches=1", "train.log_every=1"]) == 0
    printed = capsys.readouterr().out
    assert "| step | eval loss | vs teacher | active depth |" in printed
    report = json.loads((out / "distill.json").read_text())
    assert [r["step"] for r in report["evals"]] == [0, 3]
    first = report["evals"][0]
    assert 1.0 < first["active_depth"] <= 3.0 and first["drop_rate"] == 0.0
    m = load_model(out)
    assert m.cfg.model.kind == "radial" and m.cfg.model.pool_size == 2 and m.step == 3
    assert main(["eval", "--checkpoint", str(out), "--batches", "1"]) == 0
    assert json.loads(capsys.readouterr().out)["eval/loss"] == pytest.approx(report["evals"][-1]["loss"],
                                                                            rel=1e-5)
