"""Faults injected into real runs: signals, NaN steps, damaged checkpoints, changed configs, unusable
run dirs and data. Each test checks the message a user sees and that no completed work was lost."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import grain
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from radial_jax.cli import main
from radial_jax.config import ConfigError, load_config
from radial_jax.io.load import load_model
from radial_jax.model.build import build_model
from radial_jax.train import loop
from radial_jax.train.checkpoint import Checkpointer
from radial_jax.train.metrics import read_metrics
from radial_jax.train.nonfinite import NonFiniteError, all_finite
from radial_jax.train.optimizer import lr_schedule, make_optimizer
from radial_jax.train.preflight import RunDirError, prepare_run_dir
from radial_jax.train.signals import Interrupted
from radial_jax.train.step import init_state, make_train_step
from tests.helpers import TINY, packed_batch

REPO = Path(__file__).resolve().parents[1]
STEPS = 60  # long enough that a signal sent at step 3 lands mid-run


def ref_overrides(run_dir, corpus_cache, *extra) -> list[str]:
    return [*TINY, f"run.dir={run_dir}", f"data.cache_dir={corpus_cache}", f"train.steps={STEPS}",
            "train.log_every=1", "train.eval_every=1000", "train.eval_batches=1",
            "train.checkpoint_every=30", *extra]


def cfg_for(run_dir, corpus_cache, *extra):
    return load_config(None, ref_overrides(run_dir, corpus_cache, *extra))


def losses(run_dir) -> dict[int, float]:
    return {r["step"]: r["train/loss"] for r in read_metrics(run_dir) if "train/loss" in r}


def logged_steps(run_dir) -> list[int]:
    return [r["step"] for r in read_metrics(run_dir) if "train/loss" in r]


@contextlib.contextmanager
def compile_cache(path: Path | None):
    """Use a persistent XLA compilation cache at `path` (None: compile everything afresh)."""
    from jax.experimental.compilation_cache import compilation_cache as cc

    keys = ("jax_compilation_cache_dir", "jax_enable_compilation_cache",
            "jax_persistent_cache_min_compile_time_secs")
    old = {k: getattr(jax.config, k) for k in keys}
    new = dict(zip(keys, (str(path) if path else None, path is not None, 0.0), strict=True))
    cc.reset_cache()
    for k, v in new.items():
        jax.config.update(k, v)
    try:
        yield
    finally:
        cc.reset_cache()
        for k, v in old.items():
            jax.config.update(k, v)


@pytest.fixture(scope="module", autouse=True)
def _shared_compiles(tmp_path_factory):
    """Most runs here share one config, so they share compiled steps (the determinism test opts out)."""
    with compile_cache(tmp_path_factory.mktemp("xla_cache")):
        yield


@pytest.fixture(scope="module")
def reference(tmp_path_factory, corpus_cache):
    """An uninterrupted 60-step run (checkpoints at 30 and 60) that the faulty runs must match."""
    run_dir = tmp_path_factory.mktemp("reliability") / "reference"
    loop.train(cfg_for(run_dir, corpus_cache))
    return run_dir


def copy_run(reference: Path, dest: Path) -> Path:
    shutil.copytree(reference, dest)
    cfg = (dest / "config.yaml").read_text().replace(str(reference), str(dest))
    (dest / "config.yaml").write_text(cfg)
    return dest


def cli(capsys, *argv) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


class Hooked:
    """The train iterator with `hook(n, batch)` applied to the n-th batch it hands out (n from 1).
    State goes through grain's orbax handler as bytes (its path for non-dataset iterators)."""

    def __init__(self, it, hook):
        self._it, self._hook, self._n = it, hook, 0

    def __iter__(self):
        return self

    def __next__(self):
        self._n += 1
        return self._hook(self._n, next(self._it))

    def get_state(self) -> bytes:
        return json.dumps(self._it.get_state()).encode()

    def set_state(self, state: bytes) -> None:
        self._it.set_state(json.loads(state))

    def start_prefetch(self) -> None:
        pass


def hook_train_batches(monkeypatch, hook) -> None:
    real = loop.make_iterator
    monkeypatch.setattr(loop, "make_iterator", lambda *a, **k: Hooked(real(*a, **k), hook))


def poison(steps):
    """A hook making the batches of `steps` produce a NaN loss (one NaN loss-mask weight)."""
    def hook(n, batch):
        if n in steps:
            batch = dict(batch, loss_mask=batch["loss_mask"].copy())
            batch["loss_mask"][0, 0] = np.nan
        return batch
    return hook


def no_compile(monkeypatch) -> None:
    """Fail the test if training gets as far as building the train step."""
    def fail(*a, **k):
        raise AssertionError("got as far as building the train step")
    monkeypatch.setattr(loop, "make_train_step", fail)


# --------------------------------------------------------------------------- signals


class Lines:
    """A subprocess's merged stdout/stderr, read on a thread so waits can time out."""

    def __init__(self, proc: subprocess.Popen):
        self.proc, self.seen, self._q = proc, [], queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self):
        for line in self.proc.stdout:
            self._q.put(line)
        self._q.put(None)

    def wait_for(self, pattern: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self._q.get(timeout=0.2)
            except queue.Empty:
                continue
            if line is None:
                break
            self.seen.append(line)
            if re.search(pattern, line):
                return line
        raise AssertionError(f"no line matching {pattern!r} in time; output:\n{''.join(self.seen)}")

    def rest(self, timeout: float) -> str:
        self.proc.wait(timeout=timeout)
        with contextlib.suppress(AssertionError):
            self.wait_for(r"(?!)", timeout=5)  # drain to EOF
        return "".join(self.seen)


def start_cli(*argv) -> Lines:
    proc = subprocess.Popen([sys.executable, "-m", "radial_jax.cli", *map(str, argv)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
    return Lines(proc)


@pytest.mark.slow
def test_sigterm_mid_run_checkpoints_exits_143_and_resumes_exactly(tmp_path, reference, capsys):
    run = tmp_path / "run"
    job = start_cli("train", reference / "config.yaml", f"run.dir={run}")
    try:
        job.wait_for(r"^step +3/", timeout=240)
        job.proc.send_signal(signal.SIGTERM)
        out = job.rest(timeout=120)
    finally:
        if job.proc.poll() is None:
            job.proc.kill()
    assert job.proc.returncode == 143, out
    m = re.search(r"interrupted by SIGTERM at step (\d+)/60: saved checkpoint (\S+)\. To resume", out)
    assert m, out
    step = int(m.group(1))
    assert 3 <= step < STEPS and "received SIGTERM: finishing this step" in out
    assert m.group(2) == str(run / "checkpoints" / str(step))
    assert Checkpointer(run / "checkpoints", keep=3).all_steps() == [step], out
    assert logged_steps(run) == list(range(1, step + 1))  # every completed step is in the checkpoint
    command = out.split("run again:\n", 1)[1].splitlines()[0].strip()
    assert shlex.split(command)[:2] == ["radial", "train"]

    assert main(shlex.split(command)[1:]) == 0  # the printed command resumes
    assert f"resumed from {run / 'checkpoints' / str(step)}" in capsys.readouterr().out
    assert logged_steps(run) == list(range(1, STEPS + 1))
    assert losses(run) == losses(reference)  # bit-identical to the run nobody interrupted


def test_second_signal_exits_at_once(tmp_path):
    script = ("import os, signal, time\n"
              "from radial_jax.train.signals import StopRequest\n"
              "with StopRequest() as stop:\n"
              "    os.kill(os.getpid(), signal.SIGTERM)\n"
              "    time.sleep(0.2)\n"
              "    assert stop.signum == signal.SIGTERM\n"
              "    print('first handled', flush=True)\n"
              "    os.kill(os.getpid(), signal.SIGTERM)\n"
              "    time.sleep(30)\n"
              "    print('still running', flush=True)\n")
    t0 = time.monotonic()
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 143, done
    assert time.monotonic() - t0 < 25
    assert "first handled" in done.stdout and "still running" not in done.stdout
    assert "received SIGTERM again: exiting now without saving" in done.stdout


def test_sigint_finishes_the_step_saves_it_and_exits_130(tmp_path, reference, corpus_cache,
                                                          monkeypatch, capsys):
    def interrupt_at_5(n, batch):
        if n == 5:
            os.kill(os.getpid(), signal.SIGINT)
        return batch
    hook_train_batches(monkeypatch, interrupt_at_5)
    handler = signal.getsignal(signal.SIGINT)
    run = tmp_path / "run"
    with pytest.raises(Interrupted) as e:
        loop.train(cfg_for(run, corpus_cache), resume_command="radial train my.yaml")
    assert e.value.code == 130 and e.value.step == 5
    out = capsys.readouterr().out
    assert "received SIGINT" in out and "run again:\n  radial train my.yaml" in out
    assert Checkpointer(run / "checkpoints", keep=3).all_steps() == [5]
    assert losses(run) == {s: v for s, v in losses(reference).items() if s <= 5}
    assert signal.getsignal(signal.SIGINT) is handler  # the loop put the old handler back


# --------------------------------------------------------------------------- non-finite steps


def test_nonfinite_step_leaves_params_and_optimizer_state_unchanged():
    cfg = load_config(None, TINY)
    graphdef, params = nnx.split(build_model(cfg), nnx.Param)
    tx = make_optimizer(cfg.train)
    step = jax.jit(make_train_step(graphdef, tx, lr_schedule(cfg.train)))
    good = packed_batch([[20, 13]] * 4, cfg.data.seq_len)
    good = dict(good, loss_mask=good["loss_mask"].astype(jnp.float32))
    bad = dict(good, loss_mask=good["loss_mask"].at[1, 3].set(jnp.nan))
    state = init_state(params, tx)
    state, metrics = step(state, good)
    assert float(metrics["train/nonfinite"]) == 0.0
    after, metrics = step(state, bad)
    assert float(metrics["train/nonfinite"]) == 1.0 and not np.isfinite(float(metrics["train/loss"]))
    for a, b in zip(jax.tree.leaves((state.params, state.opt_state)),
                    jax.tree.leaves((after.params, after.opt_state)), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert int(after.step) == int(state.step) + 1  # the data moved on
    again, _ = step(after, good)
    assert not all(np.array_equal(np.asarray(a), np.asarray(b))
                   for a, b in zip(jax.tree.leaves(again.params), jax.tree.leaves(after.params),
                                   strict=True))


def test_skip_counts_nonfinite_steps_and_training_carries_on(tmp_path, reference, corpus_cache,
                                                              monkeypatch, capsys):
    hook_train_batches(monkeypatch, poison({3}))
    run = tmp_path / "run"
    loop.train(cfg_for(run, corpus_cache, "train.checkpoint_every=1", "train.keep_checkpoints=10"),
               stop_after=6)
    out = capsys.readouterr().out
    assert "skipped 1 step(s) with non-finite loss or gradients since the last report (first at " \
           "step 3)" in out
    rows = {r["step"]: r for r in read_metrics(run) if "train/loss" in r}
    assert [rows[s]["train/nonfinite_skipped"] for s in range(1, 7)] == [0, 0, 1, 0, 0, 0]
    assert rows[3]["train/loss"] == "nan" and all(np.isfinite(rows[s]["train/loss"]) for s in (4, 5, 6))
    ref = losses(reference)
    assert rows[1]["train/loss"] == ref[1] and rows[2]["train/loss"] == ref[2]
    # the skipped step changed nothing: checkpoints 2 and 3 hold the same params and optimizer state
    ckpt = Checkpointer(run / "checkpoints", keep=10, read_only=True)
    assert ckpt.all_steps() == [1, 2, 3, 4, 5, 6]
    cfg = load_config(run / "config.yaml")
    _, params = nnx.split(build_model(cfg), nnx.Param)
    abstract = jax.eval_shape(lambda p: init_state(p, make_optimizer(cfg.train)), params)
    s2, s3 = ckpt.restore(2, abstract), ckpt.restore(3, abstract)
    for a, b in zip(jax.tree.leaves((s2.params, s2.opt_state)), jax.tree.leaves((s3.params, s3.opt_state)),
                    strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert all_finite(ckpt.restore(6, abstract))


@pytest.mark.parametrize("policy, bad, expect", [
    ("stop", {3}, "non-finite loss or gradients at step 3; stopping as train.on_nonfinite=stop asks"),
    ("skip", {3, 4}, "2 non-finite steps in a row (the latest at step 4), train.max_nonfinite=2"),
])
def test_nonfinite_stop_names_the_step_and_the_last_good_checkpoint(tmp_path, corpus_cache, monkeypatch,
                                                                    capsys, policy, bad, expect):
    hook_train_batches(monkeypatch, poison(bad))
    run = tmp_path / "run"
    rc, out, err = cli(capsys, "train", REPO / "configs/base.yaml",
                       *ref_overrides(run, corpus_cache, "train.checkpoint_every=2",
                                      f"train.on_nonfinite={policy}", "train.max_nonfinite=2"))
    assert rc == 1 and err.startswith("error: ") and expect in err, err
    assert f"Last good checkpoint: {run / 'checkpoints' / '2'}." in err
    assert "Traceback" not in err
    assert Checkpointer(run / "checkpoints", keep=3).all_steps() == [2]  # nothing after the bad step


def test_a_checkpoint_with_nonfinite_values_is_never_written(tmp_path):
    cfg = load_config(None, TINY)
    _, params = nnx.split(build_model(cfg), nnx.Param)
    state = init_state(params, optax.sgd(0.1))
    ckpt = Checkpointer(tmp_path / "checkpoints", keep=3, async_save=False)
    ckpt.save(1, state, None, cfg.to_dict())
    bad = state.replace(params=jax.tree.map(lambda x: x.at[(0,) * x.ndim].set(jnp.inf), state.params))
    with pytest.raises(NonFiniteError, match="state at step 2 holds NaN or inf values; no checkpoint "
                                             "was written. The last good checkpoint is .*checkpoints/1"):
        ckpt.save(2, bad, None, cfg.to_dict())
    ckpt.wait()
    assert ckpt.all_steps() == [1] and not list((tmp_path / "checkpoints").glob("2*"))


def test_restore_params_reads_the_parameters_without_the_optimizer_state(tmp_path):
    """What `radial eval`/`generate` load from a run dir: the target names no optimizer state at all."""
    cfg = load_config(None, TINY)
    graphdef, params = nnx.split(build_model(cfg), nnx.Param)
    ckpt = Checkpointer(tmp_path / "checkpoints", keep=3, async_save=False)
    data_iter = iter(grain.MapDataset.range(4).to_iter_dataset())
    ckpt.save(1, init_state(params, make_optimizer(cfg.train)), data_iter, cfg.to_dict())
    ckpt.close()
    one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=one), params)
    got = Checkpointer(tmp_path / "checkpoints", keep=3, read_only=True).restore_params(1, target)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(got), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_a_save_that_never_completed_is_deleted_when_training_reopens_the_checkpoints(tmp_path):
    cfg = load_config(None, TINY)
    _, params = nnx.split(build_model(cfg), nnx.Param)
    state = init_state(params, optax.sgd(0.1))
    root = tmp_path / "checkpoints"
    ckpt = Checkpointer(root, keep=3, async_save=False)
    ckpt.save(1, state, None, cfg.to_dict())
    ckpt.close()
    unfinished = root / "2.orbax-checkpoint-tmp-1234"  # what a process killed mid-save leaves
    shutil.copytree(root / "1", unfinished)
    assert Checkpointer(root, keep=3, read_only=True).all_steps() == [1] and unfinished.is_dir()
    ckpt = Checkpointer(root, keep=3, async_save=False)  # as the train loop opens them
    assert ckpt.all_steps() == [1]
    ckpt.save(2, state, None, cfg.to_dict())  # orbax finishes its cleanup before saving
    ckpt.close()
    assert ckpt.all_steps() == [1, 2] and sorted(p.name for p in root.iterdir()) == ["1", "2"]


# --------------------------------------------------------------------------- damaged checkpoints


def truncate_array_files(step: Path) -> None:
    """Halve every array data file of the state: whichever file holds the parameters is damaged
    (loading a model restores the parameters alone, so damage to optimizer bytes only is not read)."""
    for f in (step / "state").rglob("*"):
        if f.is_file() and f.parent.name == "d":
            os.truncate(f, f.stat().st_size // 2)


DAMAGE = {
    "truncated file": truncate_array_files,
    "missing item": lambda step: shutil.rmtree(step / "data"),
    "half-written": lambda step: step.rename(step.with_name(f"{step.name}.orbax-checkpoint-tmp-1234")),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_eval_refuses_a_damaged_checkpoint_naming_the_step(tmp_path, reference, capsys, damage):
    run = copy_run(reference, tmp_path / "run")
    DAMAGE[damage](run / "checkpoints" / "60")
    rc, out, err = cli(capsys, "eval", "--checkpoint", run, "--batches", "1")
    if damage == "half-written":  # never became a checkpoint: the newest complete one is used
        assert rc == 0 and json.loads(out)["step"] == 30
        return
    assert rc == 2 and "Traceback" not in err
    assert err.startswith(f"error: checkpoint {run / 'checkpoints' / '60'} (step 60) is damaged: ")
    assert "pick another with --step (steps 30)" in err
    rc, _, err_export = cli(capsys, "export", "--checkpoint", run, "--out", tmp_path / "export")
    # generate and profile load through the same function
    assert rc == 2 and err_export.split(": ", 2)[:2] == err.split(": ", 2)[:2]
    assert "pick another with --step (steps 30)" in err_export
    rc, out, _ = cli(capsys, "eval", "--checkpoint", run, "--batches", "1", "--step", "30")
    assert rc == 0 and json.loads(out)["step"] == 30


def test_train_resumes_from_the_newest_intact_checkpoint(tmp_path, reference, capsys):
    run = copy_run(reference, tmp_path / "run")
    DAMAGE["truncated file"](run / "checkpoints" / "60")
    rc, out, _ = cli(capsys, "train", run / "config.yaml")
    assert rc == 0
    assert f"checkpoint {run / 'checkpoints' / '60'} (step 60) is damaged: " in out
    assert "trying the previous checkpoint" in out
    assert (f"resuming from step 30, the newest intact checkpoint; moved the damaged checkpoint "
            f"(step 60) to {run / 'checkpoints.damaged'}") in out
    assert (run / "checkpoints.damaged" / "60" / "state").is_dir()  # kept for inspection
    assert re.search(r"dropped \d+ metrics.jsonl rows logged after step 30 by the previous attempt", out)
    assert logged_steps(run) == list(range(1, STEPS + 1))  # each step once
    tb = EventAccumulator(str(run / "tensorboard"))
    tb.Reload()
    assert [e.step for e in tb.Scalars("train/loss")] == list(range(1, STEPS + 1))  # here too
    assert losses(run) == losses(reference)  # steps 31-60 redone exactly
    assert Checkpointer(run / "checkpoints", keep=3).all_steps() == [30, 60]


def test_train_refuses_when_every_checkpoint_is_damaged(tmp_path, reference, capsys, monkeypatch):
    run = copy_run(reference, tmp_path / "run")
    for step in ("30", "60"):
        DAMAGE["missing item"](run / "checkpoints" / step)
    no_compile(monkeypatch)
    rc, _, err = cli(capsys, "train", run / "config.yaml")
    assert rc == 2 and err.startswith(f"error: no intact checkpoint in {run / 'checkpoints'}:")
    assert "(step 60) is damaged: missing data" in err and "(step 30) is damaged" in err
    assert "to start the run over" in err and (run / "checkpoints" / "60").is_dir()  # untouched


# --------------------------------------------------------------------------- changed configs


def test_resume_refuses_changes_to_shapes_and_data(tmp_path, reference, capsys, monkeypatch):
    run = copy_run(reference, tmp_path / "run")
    before = (run / "config.yaml").read_text()
    no_compile(monkeypatch)
    with pytest.raises(ConfigError) as e:
        loop.train(load_config(run / "config.yaml", ["model.d_model=64", "data.seq_len=64",
                                                     "train.steps=70"]))
    msg = str(e.value)
    assert f"cannot resume the checkpoint at step 60 in {run / 'checkpoints'}" in msg
    assert "model.d_model: 32 (checkpoint) -> 64 (now)" in msg
    assert "data.seq_len: 32 (checkpoint) -> 64 (now)" in msg
    assert "train.steps" not in msg and "new folder to start a fresh run" in msg
    assert (run / "config.yaml").read_text() == before  # the run dir is as it was
    rc, _, err = cli(capsys, "train", run / "config.yaml", "data.shuffle_rows=0", "run.seed=1",
                     "data.valid_files=[x.txt]")  # the last one alone would be allowed
    assert rc == 2 and "error: cannot resume" in err and "run.seed: 0 (checkpoint) -> 1 (now)" in err
    assert "data.shuffle_rows: 2048 (checkpoint) -> 0 (now)" in err and "valid_files" not in err


def test_resume_accepts_and_records_safe_changes(tmp_path, reference, capsys):
    run = copy_run(reference, tmp_path / "run")
    rc, out, _ = cli(capsys, "train", run / "config.yaml", "train.steps=62", "train.log_every=2",
                     "train.keep_checkpoints=2")
    assert rc == 0
    assert ("config changed since step 60 (allowed): train.steps: 60 -> 62; train.log_every: 1 -> 2; "
            "train.keep_checkpoints: 3 -> 2") in out
    rows = [json.loads(line) for line in (run / "config_changes.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and rows[0]["step"] == 60
    assert rows[0]["changes"] == {"train.steps": [60, 62], "train.log_every": [1, 2],
                                  "train.keep_checkpoints": [3, 2]}
    assert logged_steps(run)[-3:] == [59, 60, 62]
    assert load_config(run / "config.yaml").train.steps == 62


# --------------------------------------------------------------------------- run dir and data


@contextlib.contextmanager
def unprivileged():
    """Root ignores permission bits; run the block as `nobody` so they count (no-op for others)."""
    if os.geteuid() != 0:
        yield
        return
    try:
        os.setegid(65534)
        os.seteuid(65534)
    except OSError:
        pytest.skip("cannot drop root privileges to test permissions")
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(0)


@pytest.fixture
def open_dir():
    """A folder everyone may enter and write (tmp_path is private to root)."""
    d = Path(tempfile.mkdtemp(prefix="radial-reliability-"))
    d.chmod(0o777)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_unwritable_run_dir_fails_before_anything_is_built(open_dir, corpus_cache, capsys, monkeypatch):
    no_compile(monkeypatch)
    cfg_file = open_dir / "run.yaml"
    cfg_file.write_text(load_config(None, ref_overrides("x", corpus_cache)).to_yaml())
    cfg_file.chmod(0o644)
    locked = open_dir / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    with unprivileged():
        rc, _, err = cli(capsys, "train", cfg_file, f"run.dir={locked}")
    assert rc == 2 and "Traceback" not in err
    assert err.startswith(f"error: run.dir {locked}: {locked} is not writable (permissions 0o555); "
                          "choose another with run.dir=PATH, or fix its permissions")
    assert not (locked / "config.yaml").exists()
    # under a regular file nobody, root included, can create a folder
    blocker = open_dir / "a_file"
    blocker.write_text("")
    rc, _, err = cli(capsys, "train", cfg_file, f"run.dir={blocker}/run")
    assert rc == 2 and f"error: run.dir {blocker}/run cannot be created: {blocker} is a file" in err
    with pytest.raises(RunDirError, match="is a file, not a folder"):
        prepare_run_dir(blocker / "deeper" / "run")


def test_full_run_dir_fails_before_compiling(tmp_path, corpus_cache, capsys, monkeypatch):
    no_compile(monkeypatch)
    monkeypatch.setattr("radial_jax.train.preflight.shutil.disk_usage",
                        lambda p: shutil._ntuple_diskusage(10**9, 10**9 - 5000, 5000))
    rc, _, err = cli(capsys, "train", REPO / "configs/base.yaml",
                     *ref_overrides(tmp_path / "r", corpus_cache))
    assert rc == 2 and re.match(rf"error: run.dir {tmp_path / 'r'} has 5.0 kB free, but one checkpoint "
                                r"needs about [\d.,]+ [kM]B; free some space or choose another run.dir", err)


@pytest.mark.parametrize("problem", ["unreadable file", "missing file", "tfds not prepared"])
def test_data_problems_fail_before_compiling_naming_the_path(open_dir, corpus_cache, capsys,
                                                             monkeypatch, problem):
    no_compile(monkeypatch)
    doc = open_dir / "doc.txt"
    doc.write_text("some text\n" * 50)
    (open_dir / "other.txt").write_text("more text\n" * 50)
    (open_dir / "other.txt").chmod(0o644)
    data = {"unreadable file": ["data.source=text", f"data.train_files=[{open_dir}/*.txt]"],
            "missing file": ["data.source=text", f"data.train_files=[{open_dir}/gone.txt]"],
            "tfds not prepared": ["data.source=tfds", "data.tfds_name=my_corpus",
                                  f"data.tfds_data_dir={open_dir}/tfds"]}[problem]
    expect = {"unreadable file": f"data.train_files: cannot read {doc} (Permission denied)",
              "missing file": f"data.train_files: file not found: '{open_dir}/gone.txt'",
              "tfds not prepared": f"data.tfds_name='my_corpus' is not a dataset prepared as "
                                   f"ArrayRecord in data_dir '{open_dir}/tfds'"}[problem]
    doc.chmod(0o000 if problem == "unreadable file" else 0o644)
    cfg_file = open_dir / "run.yaml"
    cfg_file.write_text(load_config(None, ref_overrides(open_dir / "run", corpus_cache, *data)).to_yaml())
    cfg_file.chmod(0o644)
    with unprivileged() if problem == "unreadable file" else contextlib.nullcontext():
        rc, _, err = cli(capsys, "train", cfg_file)
    assert rc == 2 and "Traceback" not in err
    assert err.startswith("error: ") and expect in err, err
    if problem == "tfds not prepared":
        assert "tfds build my_corpus" in err


# --------------------------------------------------------------------------- determinism


def test_same_config_and_seed_give_bit_identical_losses(tmp_path, reference, corpus_cache):
    again = tmp_path / "again"
    with compile_cache(None):  # compiled afresh, as a second process would
        loop.train(cfg_for(again, corpus_cache))
    a, b = losses(reference), losses(again)
    assert sorted(a) == list(range(1, STEPS + 1)) and a == b
    pa, pb = load_model(reference).params, load_model(again).params
    for x, y in zip(jax.tree.leaves(pa), jax.tree.leaves(pb), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
