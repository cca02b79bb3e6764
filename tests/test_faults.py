"""Faults of the kind pods and clusters see: damaged checkpoint bytes, a disk that refuses a save,
a signal to one process of two, a process killed mid-run. Each test checks what the user sees and
that the resumed run trains exactly as an uninterrupted one.

Two-process runs join by jax.distributed on localhost (as tests/test_sharding.py does); each is
bounded in time, and the module shares one uninterrupted two-process run.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from radial_jax.cli import main
from radial_jax.config import ConfigError, load_config
from radial_jax.parallel.distributed import heartbeat_timeout
from radial_jax.train import checkpoint as checkpoint_mod
from radial_jax.train import loop
from radial_jax.train import metrics as metrics_mod
from radial_jax.train.checkpoint import Checkpointer
from radial_jax.train.manifest import NAME, step_files, verify_manifest, write_manifest
from radial_jax.train.metrics import MetricsWriteError, MetricWriter, drop_rows_after, read_metrics
from tests.helpers import TINY, device_env

ROOT = Path(__file__).resolve().parents[1]
STEPS = 8


def overrides(run_dir, corpus_cache, *extra) -> list[str]:
    return [*TINY, f"run.dir={run_dir}", f"data.cache_dir={corpus_cache}", f"train.steps={STEPS}",
            "train.log_every=1", "train.eval_every=1000", "train.eval_batches=1",
            "train.checkpoint_every=4", *extra]


def losses(run_dir) -> dict[int, float]:
    return {r["step"]: r["train/loss"] for r in read_metrics(run_dir) if "train/loss" in r}


def cli(capsys, *argv) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def copy_run(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest)
    (dest / "config.yaml").write_text((dest / "config.yaml").read_text().replace(str(src), str(dest)))
    return dest


@pytest.fixture(scope="module")
def reference(tmp_path_factory, corpus_cache):
    """One process, 8 steps, checkpoints at 4 and 8."""
    run_dir = tmp_path_factory.mktemp("faults") / "reference"
    loop.train(load_config(None, overrides(run_dir, corpus_cache)))
    return run_dir


# --------------------------------------------------------------------------- checkpoint integrity


def test_every_file_of_every_step_is_in_its_checksum_manifest(reference):
    for step in (4, 8):
        d = reference / "checkpoints" / str(step)
        listed = [line.split("  ", 1)[1] for line in (d / NAME).read_text().splitlines()]
        assert listed == step_files(d)
        everything = {p.relative_to(d).as_posix() for p in d.rglob("*") if p.is_file()}
        assert everything - set(listed) == {NAME, "_CHECKPOINT_METADATA", "commit_success.txt"}
        assert any(p.startswith("state/") for p in listed) and any(p.startswith("data/") for p in listed)
        assert verify_manifest(d) is None


def flip_bytes(step_dir: Path) -> Path:
    """Flip bytes in the middle of the state's largest array file (params and optimizer state)."""
    files = [p for p in (step_dir / "state").rglob("*") if p.is_file() and p.parent.name == "d"]
    target = max(files, key=lambda p: p.stat().st_size)
    data = bytearray(target.read_bytes())
    for i in range(len(data) // 2, len(data) // 2 + 8):
        data[i] ^= 0xFF
    target.write_bytes(bytes(data))
    return target


def test_flipped_bytes_are_refused_by_eval_and_resume_falls_back(tmp_path, reference, capsys):
    run = copy_run(reference, tmp_path / "run")
    flipped = flip_bytes(run / "checkpoints" / "8")
    rel = flipped.relative_to(run / "checkpoints" / "8").as_posix()
    rc, out, err = cli(capsys, "eval", "--checkpoint", run, "--batches", "1")
    assert rc == 2 and "Traceback" not in err
    assert err.startswith(f"error: checkpoint {run / 'checkpoints' / '8'} (step 8) is damaged: {rel} (")
    assert "differs from what was saved (sha256 mismatch)" in err
    assert "pick another with --step (steps 4)" in err
    rc, _, err_export = cli(capsys, "export", "--checkpoint", run, "--out", tmp_path / "export")
    assert rc == 2 and "(step 8) is damaged" in err_export and "sha256 mismatch" in err_export

    rc, out, _ = cli(capsys, "train", run / "config.yaml")
    assert rc == 0
    assert f"checkpoint {run / 'checkpoints' / '8'} (step 8) is damaged: {rel}" in out
    assert "resuming from step 4, the newest intact checkpoint" in out
    assert losses(run) == losses(reference)  # steps 5-8 trained again, exactly


# --------------------------------------------------------------------------- full or unwritable disk


def test_a_save_the_disk_refuses_keeps_the_previous_checkpoint_and_says_what_to_do(
        tmp_path, reference, corpus_cache, capsys, monkeypatch):
    real = checkpoint_mod.write_manifest

    def full_at_step_8(step_dir):
        if step_dir.name.startswith("8."):  # orbax's temporary folder of step 8
            (step_dir / "filler").write_bytes(b"x" * 1000)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(step_dir / NAME))
        return real(step_dir)

    monkeypatch.setattr(checkpoint_mod, "write_manifest", full_at_step_8)
    run = tmp_path / "run"
    rc, _, err = cli(capsys, "train", ROOT / "configs/base.yaml", *overrides(run, corpus_cache))
    assert rc == 2 and "Traceback" not in err
    ckpts = run / "checkpoints"
    assert re.match(rf"error: could not write the checkpoint of step 8 to {ckpts}: No space left on "
                    rf"device: {ckpts}/8\.orbax-checkpoint-tmp\S*/{NAME}\. One checkpoint needs about "
                    rf"[\d.]+ [kM]B \([\d.,]+ [kMG]?B free there\)\. The newest complete checkpoint, "
                    rf"{ckpts / '4'}, is intact; free some space", err), err
    assert sorted(p.name for p in ckpts.iterdir()) == ["4"]  # the failed save's files are gone
    assert verify_manifest(ckpts / "4") is None
    assert (run / "metrics.jsonl").read_text().endswith("\n")

    monkeypatch.setattr(checkpoint_mod, "write_manifest", real)  # space freed: resume
    rc, out, _ = cli(capsys, "train", run / "config.yaml")
    assert rc == 0 and f"resumed from {ckpts / '4'}" in out
    assert losses(run) == losses(reference)
    assert Checkpointer(ckpts, keep=3, read_only=True).all_steps() == [4, 8]


def test_metrics_never_keep_a_torn_line(tmp_path, monkeypatch):
    writer = MetricWriter(tmp_path)
    writer.scalars(1, {"train/loss": 1.5})
    real = os.write
    monkeypatch.setattr(metrics_mod.os, "write", lambda fd, data: real(fd, data[:7]))  # disk fills
    with pytest.raises(MetricsWriteError, match=f"could not append to {tmp_path / 'metrics.jsonl'}: "
                                                "No space left on device"):
        writer.scalars(2, {"train/loss": 1.25})
    monkeypatch.setattr(metrics_mod.os, "write", real)
    writer.close()
    assert (tmp_path / "metrics.jsonl").read_text() == '{"step": 1, "train/loss": 1.5}\n'
    # A line torn by a crash (no room for the cut-back either): skipped when read, dropped on resume.
    with open(tmp_path / "metrics.jsonl", "a") as fh:
        fh.write('{"step": 2, "train/lo')
    assert read_metrics(tmp_path) == [{"step": 1, "train/loss": 1.5}]
    assert drop_rows_after(tmp_path, 5) == 1
    writer = MetricWriter(tmp_path, start_step=1)
    writer.scalars(2, {"train/loss": 1.25})
    writer.close()
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2]


# --------------------------------------------------------------------------- another process count


def test_a_data_position_saved_before_streams_were_named_resumes_exactly(tmp_path, reference,
                                                                         capsys):
    """A process's file holding its bare grain state (as saved before positions named their
    streams) is stream I of N: the run resumes and trains as the uninterrupted one."""
    run = copy_run(reference, tmp_path / "run")
    shutil.rmtree(run / "checkpoints" / "8")
    d = run / "checkpoints" / "4"
    f = d / "data" / "process_0-of-1.json"
    f.write_text(json.dumps(json.loads(f.read_text())["streams"]["0"]))
    write_manifest(d)
    rc, out, _ = cli(capsys, "train", run / "config.yaml")
    assert rc == 0 and f"resumed from {d}" in out
    assert losses(run) == losses(reference)


# --------------------------------------------------------------------------- two processes


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _env() -> dict:
    return device_env(1, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1", RADIAL_HEARTBEAT_TIMEOUT="10")


TWO = ["data.batch_size=4", "train.steps=12", "train.checkpoint_every=6"]


class Pair:
    """Two `radial train` processes joined on localhost; output of each goes to a file."""

    def __init__(self, tmp: Path, name: str, run_dir: Path, corpus_cache, *extra: str):
        port = _free_port()
        self.logs = [tmp / f"{name}.{i}.log" for i in range(2)]
        args = [str(ROOT / "configs" / "base.yaml"), *overrides(run_dir, corpus_cache, *TWO, *extra)]
        self.procs = [subprocess.Popen(
            [sys.executable, "-m", "radial_jax.cli", "train", "--coordinator", f"localhost:{port}",
             "--num-processes", "2", "--process-id", str(i), *args], cwd=ROOT, env=_env(),
            stdout=open(self.logs[i], "w"), stderr=subprocess.STDOUT) for i in range(2)]
        self.t0 = time.monotonic()

    def out(self, i: int) -> str:
        return self.logs[i].read_text()

    def wait_for(self, pattern: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if re.search(pattern, self.out(0), re.M):
                return
            if any(p.poll() is not None for p in self.procs):
                break
            time.sleep(0.1)
        self.kill()
        raise AssertionError(f"no {pattern!r} in time:\n{self.out(0)[-4000:]}\n{self.out(1)[-4000:]}")

    def wait(self, timeout: float) -> list[int]:
        try:
            return [p.wait(timeout=max(1.0, self.t0 + timeout - time.monotonic())) for p in self.procs]
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(
                f"did not end in time:\n{self.out(0)[-4000:]}\n{self.out(1)[-4000:]}") from None

    def kill(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()


def test_heartbeat_timeout_comes_from_the_environment():
    assert heartbeat_timeout({}) == 100 and heartbeat_timeout({"RADIAL_HEARTBEAT_TIMEOUT": "15"}) == 15
    with pytest.raises(ConfigError, match="RADIAL_HEARTBEAT_TIMEOUT=0 must be at least 1"):
        heartbeat_timeout({"RADIAL_HEARTBEAT_TIMEOUT": "0"})


@pytest.fixture(scope="module")
def two_reference(tmp_path_factory, corpus_cache):
    """An uninterrupted two-process run of 12 steps (checkpoints at 6 and 12)."""
    tmp = tmp_path_factory.mktemp("two")
    pair = Pair(tmp, "reference", tmp / "reference", corpus_cache)
    rcs = pair.wait(timeout=300)
    assert rcs == [0, 0], pair.out(0)[-4000:] + pair.out(1)[-4000:]
    return tmp / "reference"


@pytest.mark.slow
def test_sigterm_to_one_process_stops_both_at_the_same_step(tmp_path, two_reference, corpus_cache):
    run = tmp_path / "run"
    pair = Pair(tmp_path, "term", run, corpus_cache)
    pair.wait_for(r"^step +3/", timeout=240)
    pair.procs[1].send_signal(signal.SIGTERM)
    assert pair.wait(timeout=300) == [143, 143], pair.out(0)[-4000:] + pair.out(1)[-4000:]
    out = pair.out(0)
    m = re.search(r"interrupted by SIGTERM to process 1 at step (\d+)/12: saved checkpoint (\S+)\.", out)
    assert m, out[-4000:]
    step = int(m.group(1))
    assert 3 <= step < 12 and m.group(2) == str(run / "checkpoints" / str(step))
    # One checkpoint at the agreed step, holding the data state each process saved.
    saved = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert saved == sorted({str(s) for s in (6, step) if s <= step}), saved
    assert len(list((run / "checkpoints" / str(step) / "data").glob("process_*"))) == 2
    assert sorted(losses(run)) == list(range(1, step + 1))

    again = Pair(tmp_path, "resume", run, corpus_cache)
    assert again.wait(timeout=300) == [0, 0], again.out(0)[-4000:]
    assert f"resumed from {run / 'checkpoints' / str(step)}" in again.out(0)
    assert losses(run) == losses(two_reference)  # bit-identical


@pytest.mark.slow
def test_a_killed_process_stops_the_other_naming_it_and_the_run_resumes(tmp_path, two_reference,
                                                                         corpus_cache):
    run = tmp_path / "run"
    pair = Pair(tmp_path, "kill", run, corpus_cache)
    pair.wait_for(r"^step +7/", timeout=240)
    deadline = time.monotonic() + 60
    while not (run / "checkpoints" / "6").is_dir() and time.monotonic() < deadline:
        time.sleep(0.1)  # the save of step 6 completes in the background
    killed_at = time.monotonic()
    pair.procs[1].send_signal(signal.SIGKILL)
    rc0 = pair.procs[0].wait(timeout=150)
    assert time.monotonic() - killed_at < 120
    out = pair.out(0)
    assert rc0 == 1, out[-4000:]
    assert re.search(r"error: lost process 1 of 2 at step \d+/12: it stopped answering", out), out[-4000:]
    assert f"The newest complete checkpoint is {run / 'checkpoints' / '6'} (step 6)" in out
    command = out.split("start every process again with:\n", 1)[1].splitlines()[0].strip()
    assert command.startswith("radial train ")

    again = Pair(tmp_path, "resume", run, corpus_cache)
    assert again.wait(timeout=300) == [0, 0], again.out(0)[-4000:]
    assert f"resumed from {run / 'checkpoints' / '6'}" in again.out(0)
    assert losses(run) == losses(two_reference)


def _resume_copy(two_reference: Path, dest: Path) -> Path:
    """The two-process run as it was after its checkpoint at step 6."""
    run = copy_run(two_reference, dest)
    shutil.rmtree(run / "checkpoints" / "12")
    return run


@pytest.mark.slow
def test_saved_by_two_processes_resumes_on_one_and_on_four_devices(tmp_path, two_reference, capsys):
    """Each process saved the position of its data stream (data.streams=0: one per process that
    started the run); one process, with one device or four, takes both streams on: same batches,
    same losses (1e-5)."""
    want = losses(two_reference)
    saved = [json.loads(p.read_text()) for p in
             sorted((two_reference / "checkpoints" / "6" / "data").glob("process_*-of-2.json"))]
    assert [(s["stream_count"], list(s["streams"])) for s in saved] == [(2, ["0"]), (2, ["1"])]

    one = _resume_copy(two_reference, tmp_path / "one")
    rc, out, _ = cli(capsys, "train", one / "config.yaml")
    assert rc == 0 and f"resumed from {one / 'checkpoints' / '6'}" in out
    assert "data: 2 streams over 1 batch shard (2 each)" in out
    assert re.search(r"^mesh: .* devices, 1 process\)$", out, re.M)
    got = losses(one)
    assert sorted(got) == sorted(want) == list(range(1, 13))
    assert got == pytest.approx(want, abs=1e-5, rel=0)

    four = _resume_copy(two_reference, tmp_path / "four")
    proc = subprocess.run([sys.executable, "-m", "radial_jax.cli", "train", str(four / "config.yaml")],
                          cwd=ROOT, env=device_env(4, PYTHONPATH=str(ROOT)), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "(4 cpu devices, 1 process)" in proc.stdout
    assert f"resumed from {four / 'checkpoints' / '6'}" in proc.stdout
    assert losses(four) == pytest.approx(want, abs=1e-5, rel=0)
