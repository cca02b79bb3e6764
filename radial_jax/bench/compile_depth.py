"""Benchmark: the train step's compile time and compiled program size against routing depth, with
`model.scan_layers` off and on.

Each point is one `radial compile` (the very train step `radial train` runs, over abstract state) in a
fresh process, so no point is warmed up by an earlier compile; program size is the number of
instructions in the compiled HLO. Prints one JSON line per point and a table; never asserts a time.
Run: `python -m radial_jax.bench.compile_depth CONFIG [--topology cpu:1] [--steps 4 16 32] [--out FILE]
[section.key=value ...]` (any `radial compile` topology, e.g. v5p:2x2x1 with libtpu installed).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

_INSTRUCTION = re.compile(r"^\s*(ROOT\s+)?%?[\w.\-]+ = ", re.MULTILINE)


def count_instructions(hlo_text: str) -> int:
    """HLO instructions in a compiled module's text (every computation: fusions and loop bodies too)."""
    return len(_INSTRUCTION.findall(hlo_text))


def compile_point(config: str, topology: str, steps: int, scan: bool, overrides: list[str]) -> dict:
    """One `radial compile` of `config` at `steps` routing steps: its timings, memory and program size."""
    with tempfile.TemporaryDirectory() as tmp:
        out, hlo = Path(tmp, "report.json"), Path(tmp, "step.hlo")
        cmd = [sys.executable, "-m", "radial_jax.cli", "compile", config, "--topology", topology,
               "--out", str(out), "--hlo", str(hlo), *overrides, f"model.steps={steps}",
               f"model.scan_layers={str(scan).lower()}"]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"`{' '.join(cmd)}` failed:\n{done.stderr[-4000:]}")
        report, text = json.loads(out.read_text()), hlo.read_text()
    return {"steps": steps, "scan_layers": scan, "hlo_instructions": count_instructions(text),
            "lower_s": report["lower_s"],
            "compile_s": report["compile_s"], "temp_bytes": report["memory_per_device"]["temp"]}


def table(points: list[dict]) -> str:
    """Markdown table, each row's compile time also as a multiple of the shallowest depth's."""
    first = {p["scan_layers"]: p for p in sorted(points, key=lambda p: p["steps"], reverse=True)}
    lines = ["| T | scan_layers | HLO instructions | lower s | compile s | compile / shallowest | "
             "temp MiB |", "|---|---|---|---|---|---|---|"]
    for p in sorted(points, key=lambda p: (p["scan_layers"], p["steps"])):
        ratio = p["compile_s"] / first[p["scan_layers"]]["compile_s"]
        lines.append(f"| {p['steps']} | {str(p['scan_layers']).lower()} | {p['hlo_instructions']} | "
                     f"{p['lower_s']:.1f} | {p['compile_s']:.1f} | {ratio:.2f} | "
                     f"{p['temp_bytes'] / 2**20:.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("config")
    ap.add_argument("--topology", default="cpu:1", help="as `radial compile --topology`")
    ap.add_argument("--steps", type=int, nargs="+", default=[4, 16, 32], help="routing depths T")
    ap.add_argument("--out", default=None, help="write the points as JSON here")
    ap.add_argument("overrides", nargs="*", help="section.key=value applied at every point")
    args = ap.parse_intermixed_args(argv)
    points = []
    for scan in (True, False):
        for steps in args.steps:
            points.append(compile_point(args.config, args.topology, steps, scan, args.overrides))
            print(json.dumps(points[-1]), flush=True)
    print(table(points))
    if args.out:
        Path(args.out).write_text(json.dumps({"config": args.config, "topology": args.topology,
                                              "overrides": args.overrides, "points": points}, indent=1))


if __name__ == "__main__":
    main()
