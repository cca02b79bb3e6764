"""The README's quickstart, verbatim: `bash launch/quickstart.sh` trains the default model to a loss
far below the byte-unigram level. Slow (several minutes on 2 cores); CI runs it."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from radial_jax.train.metrics import read_metrics

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_quickstart_trains_the_default_model_below_2_5_nats(tmp_path, corpus_cache):
    readme = (ROOT / "README.md").read_text()
    assert "bash launch/quickstart.sh" in readme and "bash launch/test.sh" in readme
    run_dir = tmp_path / "tiny"
    env = {**os.environ, "PYTHON": sys.executable}
    proc = subprocess.run(["bash", "launch/quickstart.sh", f"run.dir={run_dir}",
                           f"data.cache_dir={corpus_cache}"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "tensorboard --logdir" in proc.stdout
    evals = [r for r in read_metrics(run_dir) if "eval/loss" in r]
    assert evals[-1]["step"] == 600  # the default steps of configs/tiny.yaml
    # A byte-unigram model scores 3.25 nats/byte on this corpus; the default run must be far below.
    assert evals[-1]["eval/loss"] < 2.5, evals
