"""`radial compile CONFIG --topology NAME [--slices N] [--out FILE] [section.key=value ...]`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from radial_jax.aot.compile import OutOfMemory, compile_train_step
from radial_jax.aot.report import build_oom_report, build_report, format_report
from radial_jax.aot.topology import cpu_flag, get_topology, parse_topology, tpu_environment
from radial_jax.config import load_config


def needs_cpu_reexec(topology: str) -> int | None:
    """cpu:N with JAX not started with N host devices: the N to re-run ourselves with, else None."""
    parsed = parse_topology(topology)
    if parsed.chip != "cpu":
        return None
    n = parsed.dims[0]
    return None if cpu_flag(n) in os.environ.get("XLA_FLAGS", "") else n


def reexec_with_cpu_devices(n: int, argv: list[str]) -> int:
    """XLA reads the host device count once, when JAX starts: run `radial compile` again with it."""
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS=(os.environ.get("XLA_FLAGS", "") + " " + cpu_flag(n)).strip())
    return subprocess.call([sys.executable, "-m", "radial_jax.cli", *argv], env=env)


def run(config: str, topology: str, slices: int = 1, out: str | None = None,
        overrides: list[str] | tuple = (), hlo: str | None = None) -> dict:
    tpu_environment()  # before JAX initialises its backends (importing jax does not)
    cfg = load_config(config, list(overrides))
    topo = get_topology(topology, slices)
    try:
        compiled = compile_train_step(cfg, topo)
    except OutOfMemory as e:  # an answer, not a failure: the report says so
        compiled, report = None, build_oom_report(cfg, config, topo, e)
    else:
        report = build_report(cfg, config, topo, compiled)
    print(format_report(report))
    for path, text in ((out, json.dumps(report, indent=2)), (hlo, compiled and compiled.hlo_text)):
        if path and text is not None:  # no program, no HLO
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_text(text)
            print(f"wrote {path}")
    return report
