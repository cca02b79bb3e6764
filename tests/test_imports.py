"""Each subpackage (and top-level module) of radial_jax imports alone in a fresh interpreter, so no
module relies on another having been imported first to dodge a cycle."""

import pkgutil
import subprocess
import sys
from pathlib import Path

import radial_jax

ROOT = Path(__file__).resolve().parents[1]
UNITS = sorted(m.name for m in pkgutil.iter_modules(radial_jax.__path__))

# Import the unit, then every module under it, in that order: a cycle shows as an ImportError.
SCRIPT = """
import importlib, pkgutil, sys
unit = importlib.import_module("radial_jax." + sys.argv[1])
for m in pkgutil.walk_packages(getattr(unit, "__path__", []), unit.__name__ + "."):
    importlib.import_module(m.name)
"""


def test_every_subpackage_imports_alone_in_a_fresh_interpreter():
    assert {"cli", "config", "io", "model", "parallel", "train"} <= set(UNITS)
    procs = {unit: subprocess.Popen([sys.executable, "-c", SCRIPT, unit], cwd=ROOT, text=True,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE) for unit in UNITS}
    failed = {}
    for unit, p in procs.items():
        _, err = p.communicate(timeout=300)
        if p.returncode:
            failed[unit] = err.strip().splitlines()[-1:]
    assert not failed, failed
