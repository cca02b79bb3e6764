"""launch/accelerator_check.sh --dry-run: every stage of the first-minutes check (bench train, bench
decode at batch 1 and 8 (and 32 on an accelerator), compile of a dense/radial pair) on the CPU with
tiny stand-ins, summed up in one table and summary.json."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]


@pytest.mark.slow
def test_dry_run_writes_the_table_and_json(tmp_path):
    out = tmp_path / "check"
    env = dict(os.environ, PYTHON=sys.executable, PYTHONPATH=str(ROOT))
    proc = subprocess.run(["bash", "launch/accelerator_check.sh", "--dry-run", "--out", str(out)],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "radial / dense step time" in proc.stdout and "| decode batch |" in proc.stdout
    s = json.loads((out / "summary.json").read_text())
    assert {r["kind"] for r in s["train"]} == {"dense", "radial"}
    assert all(r["step_ms"] > 0 and r["mfu"] is None for r in s["train"])  # a CPU has no peak in the table
    assert [r["batch"] for r in s["decode"]] == [1, 8]
    assert all(r["ratio"] > 0 for r in s["decode"])
    assert sorted(r["kind"] for r in s["compile"]) == ["dense", "radial"]
    assert all(r["devices"] == 2 and r["compiled_tflop"] > 0 for r in s["compile"])
