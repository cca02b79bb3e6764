"""Sweeps and reports: sweep file validation, isoFLOP step arithmetic, seeds and families, resuming
an interrupted sweep, arm times over attempts, and `radial report` numbers checked against the runs'
own metrics (and, over seeds, against run dirs written here without training)."""

import contextlib
import csv
import io
import json
import re
import shlex
import shutil
import statistics
from pathlib import Path

import numpy as np
import pytest
from flax import nnx

from radial_jax.cli import main
from radial_jax.config import load_config
from radial_jax.data.pipeline import make_eval_batches
from radial_jax.io.load import load_model
from radial_jax.model.flops import flops_per_token
from radial_jax.sweep import inference
from radial_jax.sweep import run as sweep_run
from radial_jax.sweep.aggregate import aggregate, frontier
from radial_jax.sweep.arms import arm_dirs, read_arm
from radial_jax.sweep.inference import CACHE
from radial_jax.sweep.report import ReportError, write_report
from radial_jax.sweep.run import DONE, SPENT, run_sweep, train_timed, write_manifest
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
        ": arms[0]='a' must be a mapping with keys name, config, set, seeds, family")


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


def test_seeds_expand_to_named_arms(tmp_path):
    path = sweep_file(tmp_path, "seeds: [0, 1]\narms:\n  - name: dense\n  - name: radial\n"
                                "    family: routed\n    seeds: [7]\n    set: " + json.dumps(RADIAL) + "\n"
                                "budget:\n  tokens: [1280, 2560]\n")
    arms = load_sweep(path).arms
    # seed by seed: a sweep stopped after the first pass has every arm and budget once
    assert [a.name for a in arms] == ["dense_s0_b1", "dense_s0_b2", "dense_s1_b1", "dense_s1_b2",
                                      "radial_s7_b1", "radial_s7_b2"]
    for arm in arms:
        seed = int(re.search(r"_s(\d+)_", arm.name).group(1))
        assert arm.seed == seed and arm.group == arm.name.split("_s")[0]
        assert arm.family == {"dense": "dense", "radial": "routed"}[arm.group]
        assert f"run.seed={seed}" in arm.overrides and f"data.shuffle_seed={seed}" in arm.overrides
        cfg = arm.load(tmp_path / "out")
        assert cfg.run.seed == seed and cfg.data.shuffle_seed == seed
        assert cfg.model.kind == ("radial" if arm.group == "radial" else "dense")
        assert arm.steps == {"b1": 10, "b2": 20}[arm.name[-2:]]
    unseeded = load_sweep(sweep_file(tmp_path, "arms:\n  - name: a\n  - name: b\n    seeds: 3\n")).arms
    assert [(a.name, a.seed, a.group, a.family) for a in unseeded] == [("a", None, "a", "a"),
                                                                       ("b_s3", 3, "b", "b")]
    assert "run.seed" not in " ".join(unseeded[0].overrides)


def test_seed_errors(tmp_path):
    assert "run.seed cannot be set in a sweep with seeds:" in error(
        tmp_path, "seeds: [0, 1]\nset: {run.seed: 4}\n")
    assert "data.shuffle_seed cannot be set" in error(
        tmp_path, "arms:\n  - name: a\n    seeds: [1]\n    set: {data.shuffle_seed: 2}\n")
    assert error(tmp_path, "seeds: [0, -1]\n").endswith(": seeds[1]=-1 is out of range; it must be >= 0")
    assert "seeds is an empty list" in error(tmp_path, "seeds: []\n")
    assert "seeds=[1, 1] repeats a seed" in error(tmp_path, "arms:\n  - name: a\n    seeds: [1, 1]\n")
    msg = error(tmp_path, "arms:\n  - name: a\n    family: a b\n")
    assert "family='a b' must be a folder-safe name" in msg


def test_arm_time_adds_up_over_attempts(tmp_path, monkeypatch):
    clock = iter([100.0, 130.5, 200.0, 210.0])  # attempt 1: 30.5 s, then stopped; attempt 2: 10 s
    monkeypatch.setattr(sweep_run.time, "perf_counter", lambda: next(clock))
    run_dir = tmp_path / "arm"

    def stopped():
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_timed(run_dir, 5, stopped)
    assert json.loads((run_dir / SPENT).read_text()) == {"seconds": 30.5, "attempts": 1}
    assert not (run_dir / DONE).exists()
    last, seconds = train_timed(run_dir, 5, lambda: {"eval/loss": 1.0})
    done = json.loads((run_dir / DONE).read_text())
    assert seconds == 40.5 and last == {"eval/loss": 1.0}
    assert done["steps"] == 5 and done["seconds"] == 40.5 and done["attempts"] == 2
    assert done["machine"]["cpus"] >= 1 and done["machine"]["platform"]


def fake_arm(run_dir: Path, cfg, losses: list[float], seconds: float) -> None:
    """A finished arm without training: its config, one eval row per loss (the last is final),
    a step time, and a done marker with its wall seconds."""
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(cfg.to_yaml())
    steps = cfg.train.steps
    rows = [{"step": i + 1, "train/loss": 3.0, "perf/step_time_s": 0.5} for i in range(steps)]
    rows += [{"step": steps * (i + 1) // len(losses), "eval/loss": x, "eval/bits_per_byte": x / 0.69}
             for i, x in enumerate(losses)]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (run_dir / DONE).write_text(json.dumps({"steps": steps, "seconds": seconds, "machine": {
        "cpus": 2, "platform": "TestOS-1", "backend": "cpu"}}))


def test_report_over_seeds_and_families(tmp_path):
    # Two families at two sizes (width 32 and 64), two budgets, seeds 0 and 1 at the small size.
    path = sweep_file(tmp_path, "seeds: [0, 1]\narms:\n"
                                "  - {name: a_s, family: a}\n"
                                "  - {name: a_l, family: a, seeds: [0], set: {model.d_model: 64}}\n"
                                "  - {name: b_s, family: b}\n"
                                "budget:\n  train_flops: [3.0e+10, 9.0e+10]\n")
    sweep, out = load_sweep(path), tmp_path / "out"
    write_manifest(sweep, out)
    loss = {  # final eval loss per arm; earlier evals are higher
        "a_s_s0_b1": 2.0, "a_s_s1_b1": 2.2, "a_s_s0_b2": 1.8, "a_s_s1_b2": 1.9,
        "a_l_s0_b1": 2.5, "a_l_s0_b2": 1.7,
        "b_s_s0_b1": 1.95, "b_s_s1_b1": 1.97, "b_s_s0_b2": 1.85, "b_s_s1_b2": 1.87}
    for i, arm in enumerate(sweep.arms):
        fake_arm(out / arm.name, arm.load(out), [3.0, loss[arm.name]], seconds=60.0 * (i + 1))
    secs = {a.name: 60.0 * (i + 1) for i, a in enumerate(sweep.arms)}
    results = [read_arm(d, info) for d, info in arm_dirs(out).finished]
    assert [r.name for r in results] == [a.name for a in sweep.arms]
    stats = {(s.group, s.budget_label): s for s in aggregate(results)}
    assert list(stats) == [("a_s", "b1"), ("a_s", "b2"), ("a_l", "b1"), ("a_l", "b2"), ("b_s", "b1"),
                           ("b_s", "b2")]
    s = stats["a_s", "b1"]
    assert (s.n, s.seeds, s.family, s.budget) == (2, (0, 1), "a", 3.0e10)
    assert s.eval_loss_mean == pytest.approx(2.1) and (s.eval_loss_min, s.eval_loss_max) == (2.0, 2.2)
    assert s.seconds_total == secs["a_s_s0_b1"] + secs["a_s_s1_b1"]
    assert s.seconds_mean == pytest.approx(s.seconds_total / 2)
    assert stats["a_l", "b2"].n == 1 and stats["a_l", "b2"].eval_loss_mean == 1.7
    assert 2.0e10 < s.training_flops <= 3.0e10  # floor(budget / step) steps
    # the frontier: family a is best at its small size at b1 and its large one at b2
    front = {(p.family, p.budget_label): p for p in frontier(list(stats.values()))}
    assert list(front) == [("a", "b1"), ("a", "b2"), ("b", "b1"), ("b", "b2")]
    assert front["a", "b1"].best.group == "a_s" and [o.group for o in front["a", "b1"].others] == ["a_l"]
    assert front["a", "b2"].best.group == "a_l" and front["b", "b2"].best.group == "b_s"

    paths = write_report(out)
    for key in ("frontier", "inference", "isoflop"):
        assert paths[key].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = paths["md"].read_text()
    assert "Arms trained on: TestOS-1, 2 CPUs, cpu backend." in md and "Written 20" in md
    assert "## Verdict" not in md  # neither a radial nor a dense family: the goal does not apply
    assert f"10 of 10 arms timed, {sum(secs.values()) / 3600:.2f} h in all" in md
    row = next(x for x in md.splitlines() if x.startswith("| a_s_b1 |"))
    assert "| 2.1000 (2.0000-2.2000, n=2) |" in row and "| 0, 1 |" in row
    both = secs["a_s_s0_b1"] + secs["a_s_s1_b1"]
    assert f"| {both / 120:.1f} / {both / 60:.1f} |" in row  # arm time (min): mean / total
    front_md = md.split("the family's size with the lowest mean eval loss")[1]
    line = next(x for x in front_md.splitlines() if x.startswith("| a | 9e+10 |"))
    assert "| 1.7000 | a_l |" in line and "| a_s 1.8500 |" in line
    assert "- budget 9e+10: lowest mean eval loss a_l_b2 (1.7000 at 9e+10 training FLOPs" in md
    arm_line = next(x for x in md.splitlines() if x.startswith("| a_s_s1_b2 |"))
    assert f"| {secs['a_s_s1_b2'] / 60:.1f} | 2 |" in arm_line  # every run, its time and its CPUs
    rows = list(csv.DictReader(open(paths["csv"])))
    assert [(r["name"], r["seed"], r["family"]) for r in rows][:3] == [
        ("a_s_s0_b1", "0", "a"), ("a_s_s0_b2", "0", "a"), ("a_l_s0_b1", "0", "a")]


def test_report_reads_seeds_from_names_without_a_manifest(tmp_path):
    cfg = load_config(None, TINY)
    for name, x in [("m_s0_b1", 2.0), ("m_s1_b1", 2.4), ("m_s0_b2", 1.5)]:
        fake_arm(tmp_path / name, cfg, [x], seconds=30.0)
    stats = aggregate([read_arm(d, i) for d, i in arm_dirs(tmp_path).finished])
    assert [(s.group, s.budget_label, s.n, s.seeds) for s in stats] == [("m", "b1", 2, (0, 1)),
                                                                        ("m", "b2", 1, (0,))]
    assert stats[0].eval_loss_mean == pytest.approx(2.2)


def test_partial_sweep_report_lists_unfinished_arms_and_leaves_the_sweep_alone(tmp_path):
    # dense and radial at two budgets: b1 finished (radial without a checkpoint to measure),
    # dense_b2 stopped at step 2, radial_b2 not started; the page goes to OUT.md, the rest to OUT/.
    path = sweep_file(tmp_path, "arms:\n  - name: dense\n  - name: radial\n    set: " + json.dumps(RADIAL)
                      + "\nbudget:\n  train_flops: [2.0e+9, 4.0e+9]\n")
    sweep, root = load_sweep(path), tmp_path / "sweep"
    write_manifest(sweep, root)
    arms = {a.name: a for a in sweep.arms}
    fake_arm(root / "dense_b1", arms["dense_b1"].load(root), [3.0, 2.5], seconds=60.0)
    fake_arm(root / "radial_b1", arms["radial_b1"].load(root), [3.0, 2.4], seconds=90.0)
    fake_arm(root / "dense_b2", arms["dense_b2"].load(root), [3.0], seconds=0.0)
    (root / "dense_b2" / DONE).unlink()  # stopped: metrics to step 2, no done marker
    rows = [r for r in read_metrics(root / "dense_b2") if r["step"] <= 2 and "train/loss" in r]
    (root / "dense_b2" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "dense_b2" / SPENT).write_text(json.dumps({"seconds": 30.0, "attempts": 1}))
    before = sorted(p.relative_to(root) for p in root.rglob("*"))

    found = arm_dirs(root)
    assert [d.name for d, _ in found.finished] == ["dense_b1", "radial_b1"]
    assert [(u.name, u.status()) for u in found.unfinished] == [
        ("dense_b2", f"step 2 of {arms['dense_b2'].steps}"), ("radial_b2", "not started")]
    out = tmp_path / "docs" / "page"
    paths = write_report(root, out)
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before  # only read
    assert paths["md"] == tmp_path / "docs" / "page.md"
    for key in ("frontier", "inference", "isoflop", "routing", "csv"):
        assert paths[key].parent == out and paths[key].stat().st_size > 100
    md = paths["md"].read_text()
    assert md.splitlines()[0] == "# Sweep report: sweep (partial)"
    assert "**Partial: 2 of 4 arms finished.**" in md
    assert f"radial report {root} --out {out}" in md
    assert "![frontier](page/frontier.png)" in md and "![inference](page/loss_vs_inference_flops.png)" in md
    assert f"| dense_b2 | step 2 of {arms['dense_b2'].steps} | 0.5 |" in md
    assert "| radial_b2 | not started | - |" in md
    assert "**Verdict: not met.**" in md and "Provisional: 2 arm(s)" in md  # radial 2.4 < 2.5 but at 1x cost
    assert "- b2: not judged yet" in md
    assert "radial_b1 (not measured: no checkpoint at step" in md
    assert [r["name"] for r in csv.DictReader(open(paths["csv"]))] == ["dense_b1", "radial_b1"]
    comparison = md.split("## At each size and budget")[1].split("## Figures")[0]
    line = next(x for x in comparison.splitlines() if "| radial |" in x)
    assert "| 2.4000 | -0.1000 |" in line  # mean eval loss and its gap to dense at the same budget


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


def test_baselines_isoflop_sweep_sizes():
    arms = load_sweep(SWEEPS / "baselines_isoflop.yaml").arms
    families = ("dense", "radial", "mod", "mor")
    assert len(arms) == 4 * 2 * (2 + 1)  # families x budgets x (2 seeds small + 1 large)
    assert {a.family for a in arms} == set(families)
    for f in families:
        mine = [a for a in arms if a.family == f]
        assert {a.group for a in mine} == {f"{f}_s", f"{f}_l"}
        assert {a.seed for a in mine if a.group == f"{f}_s"} == {0, 1}
        assert {a.seed for a in mine if a.group == f"{f}_l"} == {0}
    assert {a.budget for a in arms} == {3.0e13, 1.2e14}
    assert [a.seed for a in arms] == sorted(a.seed for a in arms)  # every seed-0 arm first
    cfgs = {a.name: a.load("/tmp/x") for a in arms}
    small, large = cfgs["dense_s_s0_b1"], cfgs["dense_l_s0_b1"]
    assert (small.model.d_model, large.model.d_model) == (256, 512)
    assert 3.3 < flops_per_token(large).train / flops_per_token(small).train < 4.0
    assert cfgs["radial_s_s0_b1"].routing.skip == "learned"
    assert cfgs["mod_l_s0_b2"].routing.route_every == 2 and cfgs["mor_l_s0_b2"].routing.early_exit
    spent = sum(step_flops(cfgs[a.name]) * a.steps for a in arms)
    assert 1.7e15 < spent <= 1.8e15  # the file's header sizes ~6.5 h from this at ~8e10 FLOP/s
    for a in arms:
        assert cfgs[a.name].train.steps // cfgs[a.name].train.eval_every >= 3


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


def test_processes_share_a_sweep_folder_by_arm_locks(tmp_path, capsys):
    """Several `radial sweep` processes on one --out: an arm locked by a live process is passed by,
    a lock left by a dead one is taken over, and --arms picks arms by pattern (nothing trains here:
    a stand-in for the training loop records which arms it was given)."""
    import os
    import subprocess
    import sys

    path = sweep_file(tmp_path, "seeds: [0, 1]\narms:\n  - name: a\n  - name: b\n")
    sweep, out = load_sweep(path), tmp_path / "out"
    trained = []

    def fake_train(cfg, resume_command):
        trained.append(Path(cfg.run.dir).name)
        Path(cfg.run.dir).mkdir(parents=True)
        assert (out / sweep_run.LOCKS / f"{Path(cfg.run.dir).name}.lock").is_file()  # held while training
        return {"eval/loss": 1.0}

    locks = out / sweep_run.LOCKS
    locks.mkdir(parents=True)
    host = __import__("socket").gethostname()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (locks / "a_s0.lock").write_text(json.dumps({"host": host, "pid": os.getpid()}))   # alive: busy
    (locks / "b_s0.lock").write_text(json.dumps({"host": host, "pid": dead.pid}))      # dead: stale
    (locks / "a_s1.lock").write_text(json.dumps({"host": "elsewhere", "pid": 1}))      # another host

    status = run_sweep(sweep, out, train_fn=fake_train, only=["*_s0", "a_s1"])
    assert status == {"a_s0": "busy", "b_s0": "trained", "a_s1": "busy"} and trained == ["b_s0"]
    log = capsys.readouterr().out
    assert f"arm 1/3 a_s0: another process is training it ({host} pid {os.getpid()}" in log
    assert "a_s1: another process is training it (elsewhere pid 1" in log
    assert "1 arm(s) trained, 0 already done, 2 being trained by other processes (a_s0, a_s1)" in log
    assert not (locks / "b_s0.lock").exists() and (out / "b_s0" / DONE).is_file()  # released when done

    (locks / "a_s0.lock").unlink()
    assert run_sweep(sweep, out, train_fn=fake_train) == {
        "a_s0": "trained", "b_s0": "skipped", "a_s1": "busy", "b_s1": "trained"}
    with pytest.raises(SweepError, match=r"no arm matches --arms c\*; its arms: a_s0, b_s0, a_s1, b_s1"):
        run_sweep(sweep, out, train_fn=fake_train, only=["c*"])
    capsys.readouterr()
    assert main(["sweep", str(path), "--emit", "--out", str(out), "--arms", "*_s1"]) == 0
    assert [shlex.split(x)[-1] for x in capsys.readouterr().out.split("\n") if x] == [
        f"run.dir={out / 'a_s1'}", f"run.dir={out / 'b_s1'}"]


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
    for arm, attempts in (("dense", 1), ("radial", 2)):
        done = json.loads((out / arm / DONE).read_text())
        assert done["steps"] == 3 and done["attempts"] == attempts and done["seconds"] > 0


@pytest.mark.slow
def test_report_numbers_match_the_metrics(sweep_runs, tmp_path, capsys, monkeypatch):
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
    every_arm = md.split("## Every arm")[1]
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
        line = next(x for x in every_arm.splitlines() if x.startswith(f"| {name} |"))
        assert f"| {evals[-1]['eval/loss']:.4f} |" in line and f"| {params:,} |" in line
        if name == "radial":
            depth = evals[-1]["eval/active_depth"]
            assert float(row["active_depth"]) == depth and 0 < depth <= 2
            # inference FLOPs at the depth measured routed as decoding routes (prefix 0 here)
            assert row["inference_source"] == "measured at step 3"
            assert float(row["inference_flops_per_token"]) == pytest.approx(
                fpt.inference(float(row["inference_depth"]), cfg))
            assert float(row["skip_rate"]) == evals[-1]["eval/skip_rate"]
            assert line.endswith("| 1.234 |")  # batch 1, switch path
        else:
            assert float(row["active_depth"]) == cfg.model.n_layers and row["skip_rate"] == ""
            assert float(row["inference_flops_per_token"]) == fpt.forward
            assert line.endswith("| - |")  # no decode benchmark in this arm

    # Inference depth, measured on the final checkpoint and cached in the report's folder (routed
    # arms only, keyed by arm and step), checked against the pool layers each token ran in the
    # inference forward pass's routing trace over the same eval batches.
    cache = json.loads((root / CACHE).read_text())
    assert list(cache) == ["radial@3"]
    m = cache["radial@3"]
    loaded = load_model(root / "radial", step=3)
    cfg, model = loaded.cfg, nnx.merge(loaded.graphdef, loaded.params)
    depths = []
    for b in make_eval_batches(cfg.data, loaded.tokenizer, cfg.train.eval_batches):
        _, aux = model(b["inputs"], b["positions"], b["segment_ids"], return_trace=True, inference=True)
        valid = np.asarray(b["segment_ids"]) != 0
        ran = (np.asarray(aux.trace_TxBxS) < cfg.model.pool_size) & valid
        depths.append(cfg.model.prefix_layers + ran.sum() / valid.sum())
    depth = statistics.fmean(depths)
    assert 0 < depth <= cfg.model.steps and m["active_depth"] == pytest.approx(depth, rel=1e-5)
    assert m["flops_per_token"] == pytest.approx(flops_per_token(cfg).inference(depth, cfg), rel=1e-5)
    assert float(rows["radial"]["inference_flops_per_token"]) == m["flops_per_token"]
    assert float(rows["radial"]["inference_loss"]) == m["loss"]
    # again: from the cache, nothing measured; the same arm in another folder is measured anew
    monkeypatch.setattr(inference, "measure_checkpoint", lambda *a: pytest.fail("measured again"))
    arms = [(read_arm(d, i), d) for d, i in arm_dirs(root).finished]
    again = {r.name: r for r in inference.measure_arms(arms, root)}
    assert again["radial"].inference_flops_per_token == m["flops_per_token"]
    shutil.copytree(root / "radial", tmp_path / "elsewhere" / "radial")
    with pytest.raises(pytest.fail.Exception, match="measured again"):
        inference.measured(arms[1][0], tmp_path / "elsewhere" / "radial", inference.read_cache(root / CACHE))



def test_report_without_runs_says_what_it_looked_for(tmp_path, capsys):
    with pytest.raises(ReportError, match="no arm folders with config.yaml and metrics.jsonl"):
        write_report(tmp_path)
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert "no such folder" in capsys.readouterr().err
