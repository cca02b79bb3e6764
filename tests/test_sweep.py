"""Sweeps and reports: sweep file validation, isoFLOP step arithmetic, resuming an interrupted
sweep, and `radial report` numbers checked against the runs' own metrics."""

import contextlib
import csv
import io
import json
import re
import shlex
import shutil
import statistics
from pathlib import Path

import pytest

from radial_jax.cli import main
from radial_jax.config import load_config
from radial_jax.model.flops import flops_per_token
from radial_jax.sweep.report import ReportError, write_report
from radial_jax.sweep.run import DONE, run_sweep
from radial_jax.sweep.spec import SweepError, load_sweep, step_flops
from radial_jax.train.loop import train
from radial_jax.train.metrics import read_metrics
from radial_jax.train.signals import Interrupted
from tests.helpers import TINY

SWEEPS = Path(__file__).resolve().parents[1] / "configs" / "sweeps"
RADIAL = {"model.kind": "radial", "model.pool_size": 2, "model.steps": 2}


def base_yaml(folder: Path, cache: str, steps: int = 3) -> Path:
    """A tiny dense config file (TINY plus fast logging) for sweeps to start from."""
    sections: dict = {}
    for item in [*TINY, f"data.cache_dir={cache}", f"train.steps={steps}", "train.log_every=1",
                 "train.eval_every=2", "train.eval_batches=2", "train.checkpoint_every=100"]:
        key, value = item.split("=", 1)
        sec, name = key.split(".")
        sections.setdefault(sec, {})[name] = value
    path = folder / "base.yaml"
    path.write_text("\n".join(f"{s}:\n" + "".join(f"  {k}: {v}\n" for k, v in kv.items())
                              for s, kv in sections.items()))
    return path


def dense_params(cfg) -> int:
    """Parameters of a dense Llama-style model with tied embeddings, counted by hand."""
    m = cfg.model
    hd = m.d_model // m.n_heads
    attn = m.d_model * hd * (2 * m.n_heads + 2 * m.n_kv_heads)
    return m.vocab_size * m.d_model + m.n_layers * (attn + 3 * m.d_model * m.d_ff + 2 * m.d_model) + m.d_model


def sweep_file(folder: Path, body: str, cache: str = "/tmp/unused") -> Path:
    base_yaml(folder, cache)
    path = folder / "sweep.yaml"
    path.write_text("base: base.yaml\n" + body)
    return path


def error(tmp_path, body: str) -> str:
    path = sweep_file(tmp_path, body)
    with pytest.raises(SweepError) as e:
        load_sweep(path)
    msg = str(e.value)
    assert str(path) in msg, msg  # every message names the file
    return msg


# --------------------------------------------------------------------------- validation


def test_unknown_keys_suggest_the_closest(tmp_path):
    # worded as the config's own messages: file, full key path, the closest valid key
    msg = error(tmp_path, "grdi:\n  model.n_layers: [1, 2]\n")
    assert msg == f"{tmp_path / 'sweep.yaml'}: unknown key 'grdi'; did you mean 'grid'?"
    msg = error(tmp_path, "arms:\n  - nmae: a\n")
    assert msg.endswith(": unknown key 'arms[0].nmae'; did you mean 'arms[0].name'?")
    msg = error(tmp_path, "budget:\n  train_flop: 1.0e+12\n")
    assert msg.endswith(": unknown key 'budget.train_flop'; did you mean 'budget.train_flops'?")


def test_types_and_ranges_are_checked_as_in_a_config(tmp_path):
    assert error(tmp_path, "evals: 0\n").endswith(": evals=0 is out of range; it must be >= 1")
    assert error(tmp_path, "evals: many\n").endswith(": evals='many' must be an integer")
    msg = error(tmp_path, "budget:\n  train_flops: [1.0e+12, -3]\n")
    assert msg.endswith(": budget.train_flops[1]=-3 is out of range; it must be > 0.0")
    msg = error(tmp_path, "budget:\n  tokens: lots\n")
    assert msg.endswith(": budget.tokens='lots' must be a number")
    assert error(tmp_path, "arms:\n  - name: a\n    set: [1]\n").endswith(
        ": arms[0].set=[1] must be a mapping")
    assert error(tmp_path, "arms: {name: a}\n").endswith(": arms={'name': 'a'} must be a list")
    assert error(tmp_path, "arms:\n  - a\n").endswith(
        ": arms[0]='a' must be a mapping with keys name, config, set")


def test_bad_override_key_names_the_arm(tmp_path):
    msg = error(tmp_path, "arms:\n  - name: wide\n    set: {model.d_modle: 64}\n")
    assert "arm 'wide'" in msg and "model.d_modle" in msg and "did you mean 'model.d_model'" in msg
    msg = error(tmp_path, "grid:\n  model.kv_skip: [mask, sideways]\n")
    assert "'sideways' is not allowed" in msg and "kv_skip-sideways" in msg
    msg = error(tmp_path, "set: {run.dir: elsewhere}\narms:\n  - name: a\n")
    assert "run.dir cannot be set" in msg


def test_empty_grid_and_empty_lists(tmp_path):
    assert "grid is empty" in error(tmp_path, "grid: {}\n")
    msg = error(tmp_path, "grid:\n  model.n_layers: [1, 2]\n  model.d_model: []\n")
    assert "grid.model.d_model is an empty list" in msg
    assert "arms is empty" in error(tmp_path, "arms: []\n")
    assert "budget.train_flops is an empty list" in error(tmp_path, "budget:\n  train_flops: []\n")


def test_budget_too_small_says_what_one_step_needs(tmp_path):
    msg = error(tmp_path, "budget:\n  train_flops: 1.0e+6\n")
    cfg = load_config(tmp_path / "base.yaml")
    need = step_flops(cfg)
    assert need == flops_per_token(cfg).train * 4 * 32  # TINY: batch 4 x seq_len 32
    assert "too small" in msg and f"one training step needs {need:.4g} FLOPs" in msg
    assert "too small" in error(tmp_path, "budget:\n  tokens: 100\n")  # one step is 128 tokens
    assert "exactly one of" in error(tmp_path, "budget:\n  tokens: 1000\n  train_flops: 1.0e+12\n")
    assert "cannot be set" in error(tmp_path, "set: {train.steps: 9}\nbudget:\n  tokens: 1000\n")


# --------------------------------------------------------------------------- isoFLOP arithmetic


def test_isoflop_steps_follow_flops_per_token(tmp_path):
    # Wide blocks, so the output head (the same in both) is a small part of the cost per token.
    path = sweep_file(tmp_path, "set: {model.d_model: 128, model.d_ff: 512}\n"
                                "arms:\n  - name: dense\n  - name: radial\n"
                                "    set: {model.kind: radial, model.pool_size: 2, model.steps: 2, "
                                "model.capacity_factor: 0.5}\n"
                                "budget:\n  train_flops: [2.0e+11, 6.0e+11]\nevals: 3\n")
    arms = {a.name: a for a in load_sweep(path).arms}
    assert list(arms) == ["dense_b1", "dense_b2", "radial_b1", "radial_b2"]
    cfgs = {n: a.load(tmp_path / "out") for n, a in arms.items()}
    for name, arm in arms.items():
        per_step = flops_per_token(cfgs[name]).train * 4 * 32
        assert arm.steps * per_step <= arm.budget < (arm.steps + 1) * per_step  # floor(budget / step)
        assert cfgs[name].train.steps == arm.steps and cfgs[name].train.eval_every == -(-arm.steps // 3)
        assert cfgs[name].run.dir == str(tmp_path / "out" / name)
    ratio = flops_per_token(cfgs["dense_b1"]).train / flops_per_token(cfgs["radial_b1"]).train
    assert 1.5 < ratio < 2.5  # the radial arm costs about half per token ...
    for b in ("b1", "b2"):    # ... so it gets about twice the steps of the same budget
        assert arms[f"radial_{b}"].steps / arms[f"dense_{b}"].steps == pytest.approx(ratio, rel=0.02)
    assert arms["dense_b2"].steps == pytest.approx(3 * arms["dense_b1"].steps, abs=3)


def test_token_budget_and_grid_names(tmp_path):
    path = sweep_file(tmp_path, "grid:\n  model.n_layers: [1, 2]\n  model.d_model: [32, 64]\n"
                                "budget:\n  tokens: 1280\n")
    arms = load_sweep(path).arms
    assert [a.name for a in arms] == ["n_layers-1_d_model-32", "n_layers-1_d_model-64",
                                      "n_layers-2_d_model-32", "n_layers-2_d_model-64"]
    assert {a.steps for a in arms} == {10}  # 1280 tokens / (4 x 32): equal tokens, whatever the FLOPs


def test_shipped_sweeps_validate():
    iso = {a.name: a for a in load_sweep(SWEEPS / "isoflop_tiny.yaml").arms}
    assert set(iso) == {"dense_b1", "dense_b2", "radial_b1", "radial_b2"}
    for b in ("b1", "b2"):
        assert iso[f"radial_{b}"].steps > iso[f"dense_{b}"].steps  # cheaper per token: more tokens
    for arm in iso.values():
        cfg = arm.load("/tmp/x")
        assert cfg.train.steps // cfg.train.eval_every >= 3  # a few eval points on each curve
    ablations = load_sweep(SWEEPS / "routing_ablations.yaml").arms
    assert len(ablations) >= 8 and len({a.steps for a in ablations}) == 1
    cfgs = {a.name: a.load("/tmp/x") for a in ablations}
    assert cfgs["expert_choice"].routing.policy == "expert_choice"
    assert cfgs["kv_skip_carry"].model.kv_skip == "carry"
    assert cfgs["baseline"].model.capacity_factor == 0.5


def test_dry_run_and_emit(tmp_path, capsys):
    path = sweep_file(tmp_path, "arms:\n  - name: dense\n  - name: radial\n"
                                "    set: {model.kind: radial, model.pool_size: 2, model.steps: 2}\n"
                                "budget:\n  train_flops: 3.0e+10\n")
    out = tmp_path / "out"
    arms = load_sweep(path).arms
    assert main(["sweep", str(path), "--dry-run", "--out", str(out)]) == 0
    table = capsys.readouterr().out
    for arm in arms:
        row = next(line for line in table.splitlines() if line.startswith(arm.name + " "))
        assert f" {arm.steps} " in row and f" {arm.load(out).model.kind} " in row
    dense_row = next(line for line in table.splitlines() if line.startswith("dense "))
    assert f" {dense_params(arms[0].load(out)):,} " in dense_row
    assert not out.exists()  # a dry run trains nothing
    assert main(["sweep", str(path), "--emit", "--out", str(out)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == len(arms)
    for line, arm in zip(lines, arms, strict=True):
        argv = shlex.split(line)
        assert argv[:2] == ["radial", "train"] and argv[-1] == f"run.dir={out / arm.name}"
        assert load_config(argv[2], argv[3:]) == arm.load(out)  # the command trains exactly this arm


# --------------------------------------------------------------------------- running and reporting


@pytest.fixture(scope="module")
def sweep_runs(tmp_path_factory, corpus_cache):
    """A two-arm sweep (3 steps each) interrupted in its second arm, then run again twice."""
    root = tmp_path_factory.mktemp("sweep")
    base_yaml(root, corpus_cache)
    path = root / "sweep.yaml"
    path.write_text("base: base.yaml\narms:\n  - name: dense\n  - name: radial\n    set: "
                    + json.dumps(RADIAL) + "\n")
    sweep, out = load_sweep(path), root / "out"

    def interrupt_radial(cfg, resume_command):
        if cfg.model.kind == "radial":  # as SIGTERM would: a checkpoint after step 1, then exit
            train(cfg, stop_after=1)
            raise Interrupted(15, 1)
        return train(cfg, resume_command=resume_command)

    calls = []

    def record(cfg, resume_command):
        calls.append(Path(cfg.run.dir).name)
        return train(cfg, resume_command=resume_command)

    logs = []
    with pytest.raises(Interrupted):
        run_sweep(sweep, out, train_fn=interrupt_radial)
    dense_metrics = (out / "dense" / "metrics.jsonl").read_bytes()
    for _ in range(2):
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            status = run_sweep(sweep, out, train_fn=record)
        logs.append((status, list(calls), buf.getvalue()))
        calls.clear()
    return {"out": out, "dense_metrics": dense_metrics, "logs": logs}


@pytest.mark.slow
def test_interrupted_sweep_skips_finished_arms_and_resumes(sweep_runs):
    out = sweep_runs["out"]
    (status, calls, log), (status2, calls2, log2) = sweep_runs["logs"]
    assert status == {"dense": "skipped", "radial": "trained"} and calls == ["radial"]
    assert "arm 1/2 dense: done (3 steps), skipped" in log
    assert "arm 2/2 radial: resuming 3 steps" in log and "resumed from" in log and "(step 1 of 3)" in log
    assert (out / "dense" / "metrics.jsonl").read_bytes() == sweep_runs["dense_metrics"]  # untouched
    steps = [r["step"] for r in read_metrics(out / "radial") if "train/loss" in r]
    assert steps == [1, 2, 3]  # step 1 from the first attempt, 2-3 after the resume, none twice
    assert status2 == {"dense": "skipped", "radial": "skipped"} and calls2 == []
    for arm in ("dense", "radial"):
        assert json.loads((out / arm / DONE).read_text())["steps"] == 3


@pytest.mark.slow
def test_report_numbers_match_the_metrics(sweep_runs, tmp_path, capsys):
    root = tmp_path / "sweep"
    shutil.copytree(sweep_runs["out"], root)
    decode = {"benchmark": "decode", "results": [
        {"model": "radial@3", "kind": "radial", "path": "switch", "batch": 1, "ms_per_token": 1.234},
        {"model": "radial@3", "kind": "radial", "path": "batched", "batch": 1, "ms_per_token": 9.0}]}
    (root / "radial" / "decode.json").write_text(json.dumps(decode))
    assert main(["report", str(root)]) == 0
    printed = capsys.readouterr().out
    for name in ("report.md", "report.csv", "isoflop.png", "loss_vs_inference_flops.png", "routing.png"):
        assert (root / name).stat().st_size > 200, name
        assert str(root / name) in printed
        if name.endswith(".png"):
            assert (root / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    log = sweep_runs["logs"][0][2]  # the run that trained the radial arm
    rows = {r["name"]: r for r in csv.DictReader(open(root / "report.csv"))}
    md = (root / "report.md").read_text()
    assert list(rows) == ["dense", "radial"]  # the sweep's order
    for name, row in rows.items():
        metrics = read_metrics(root / name)
        evals = [m for m in metrics if "eval/loss" in m]
        cfg = load_config(root / name / "config.yaml")
        fpt = flops_per_token(cfg)
        assert float(row["eval_loss"]) == evals[-1]["eval/loss"]
        assert float(row["bits_per_byte"]) == evals[-1]["eval/bits_per_byte"]
        assert int(row["tokens"]) == 3 * 4 * 32 and int(row["steps"]) == 3
        assert float(row["training_flops"]) == pytest.approx(fpt.train * 3 * 4 * 32)
        assert float(row["step_time_s"]) == pytest.approx(
            statistics.median([m["perf/step_time_s"] for m in metrics if "perf/step_time_s" in m][1:]))
        # dense: counted by hand; radial: as the training loop logged it
        params = dense_params(cfg) if name == "dense" else int(re.search(
            r"model: radial, ([\d,]+) parameters", log).group(1).replace(",", ""))
        assert int(row["params"]) == params
        line = next(x for x in md.splitlines() if x.startswith(f"| {name} |"))
        assert f"| {evals[-1]['eval/loss']:.4f} |" in line and f"| {params:,} |" in line
        if name == "radial":
            depth = evals[-1]["eval/active_depth"]
            assert float(row["active_depth"]) == depth and 0 < depth <= 2
            assert float(row["inference_flops_per_token"]) == pytest.approx(fpt.inference(depth, cfg))
            assert float(row["skip_rate"]) == evals[-1]["eval/skip_rate"]
            assert line.endswith("| 1.234 |")  # batch 1, switch path
        else:
            assert float(row["active_depth"]) == cfg.model.n_layers and row["skip_rate"] == ""
            assert float(row["inference_flops_per_token"]) == fpt.forward
            assert line.endswith("| - |")  # no decode benchmark in this arm


def test_report_without_runs_says_what_it_looked_for(tmp_path, capsys):
    with pytest.raises(ReportError, match="no arm folders with config.yaml and metrics.jsonl"):
        write_report(tmp_path)
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert "no such folder" in capsys.readouterr().err
