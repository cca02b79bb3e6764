"""The README's quickstart, `bash launch/quickstart.sh`, end to end: it trains configs/radial_tiny.yaml
and ends with the summary a newcomer reads (eval loss, mean active depth, routing heatmap, TensorBoard,
the `radial generate` command). The default test shrinks the model and the schedule; the slow one
trains the quickstart's own model on a short schedule and holds it to a loss bar."""

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from radial_jax.cli import build_parser
from radial_jax.train.metrics import read_metrics

ROOT = Path(__file__).resolve().parents[1]
SHRUNK = ("train.steps=4", "train.eval_every=4", "train.eval_batches=1", "train.log_every=2",
          "train.checkpoint_every=4", "data.batch_size=2", "data.seq_len=64", "data.shuffle_rows=16",
          "model.d_model=32", "model.n_heads=2", "model.n_kv_heads=1", "router.hidden=8")


def _quickstart(run_dir: Path, corpus_cache: str, *overrides: str, optimised: bool = False) -> str:
    """Run the script with this interpreter's environment as its venv (INSTALL=0: nothing installed).
    `optimised`: XLA's default optimisation (conftest lowers it for compile-bound tests), for runs
    long enough that step time outweighs compile time."""
    venv = Path(sys.prefix)
    if not (venv / "bin" / "radial").exists():
        pytest.skip(f"no `radial` command in {venv}/bin: install radial_jax there (pip install -e .)")
    env = {**os.environ, "VENV": str(venv), "INSTALL": "0",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    if optimised:
        env["XLA_FLAGS"] = " ".join(f for f in env.get("XLA_FLAGS", "").split()
                                    if not f.startswith("--xla_backend_optimization_level"))
    proc = subprocess.run(["bash", "launch/quickstart.sh", f"run.dir={run_dir}",
                           f"data.cache_dir={corpus_cache}", *overrides],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def _last_eval(run_dir: Path) -> dict:
    return [r for r in read_metrics(run_dir) if "eval/loss" in r][-1]


def test_quickstart_ends_with_loss_depth_heatmap_tensorboard_and_generate(tmp_path, corpus_cache):
    readme = (ROOT / "README.md").read_text()
    assert "bash launch/quickstart.sh" in readme and "bash launch/test.sh" in readme
    run_dir = tmp_path / "radial_tiny"
    out = _quickstart(run_dir, corpus_cache, *SHRUNK)
    assert "training configs/radial_tiny.yaml" in out
    last = _last_eval(run_dir)
    assert last["step"] == 4

    assert f"eval loss:    {last['eval/loss']:.4f} nats/token" in out, out[-2000:]
    depth = float(re.search(r"active depth: (\d+\.\d+) blocks per token", out).group(1))
    assert depth == pytest.approx(last["eval/active_depth"], abs=0.006)
    assert 1.0 <= depth <= 3.0  # radial_tiny: the prefix block + up to 2 routing steps

    heatmap = Path(re.search(r"routing: +(\S+)", out).group(1))
    assert heatmap == run_dir / "routing_heatmap.png"
    assert heatmap.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    assert f"tensorboard --logdir {run_dir / 'tensorboard'}" in out
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))

    line = re.search(r"try: +(radial generate .*)", out).group(1)
    words = shlex.split(line)
    args = build_parser().parse_args(words[1:])  # the command the newcomer copies parses
    assert (args.command, Path(args.checkpoint), args.show_depth) == ("generate", run_dir, True)
    assert args.prompt


@pytest.mark.slow
def test_quickstart_model_learns_on_a_short_schedule(tmp_path, corpus_cache):
    """The quickstart's own model and batch for 60 steps instead of 600. A byte-unigram model scores
    3.25 nats/byte on this corpus; this run reaches about 2.47 (100 steps: 2.23, 600: 1.41)."""
    run_dir = tmp_path / "radial_tiny"
    _quickstart(run_dir, corpus_cache, "train.steps=60", "train.eval_every=60",
                "train.checkpoint_every=60", "train.eval_batches=4", optimised=True)
    last = _last_eval(run_dir)
    assert last["step"] == 60
    assert last["eval/loss"] < 2.75, last
