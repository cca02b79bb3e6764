"""The one table of launch/accelerator_check.sh: the JSON reports of `radial bench train`, `radial bench
decode` and `radial compile` that the script wrote into one directory, summed up as train MFU and
radial/dense step-time ratios per model size, radial/dense decode latency per batch size, and the
compile reports' fit, FLOPs and roofline.

`python -m radial_jax.bench.accelerator DIR` prints the table and writes DIR/summary.json.
File names the script writes: train_SIZE.json, decode.json, compile_NAME.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from radial_jax import markdown
from radial_jax.parallel.chips import chip_for_device_kind

GiB = 2**30


def train_rows(report: dict, size: str) -> list[dict]:
    """One row per config of a `bench train` report: step time, tokens/s, MFU at the chip's peak
    (None where the device is not in parallel/chips.py, e.g. a CPU); FLOPs are the analytic count of
    what the static shapes compute (radial: every capacity slot)."""
    chip = chip_for_device_kind(report["device"])
    rows = []
    for name, r in report["results"].items():
        achieved = r["tokens_per_s"] * r["train_flops_per_token"]
        rows.append({"size": size, "config": name, "kind": r["kind"], "params": r["params"],
                     "step_ms": 1e3 * r["step_time_s"], "tokens_per_s": r["tokens_per_s"],
                     "model_tflops_per_s": achieved / 1e12,
                     "mfu": achieved / chip.peak_bf16_flops if chip else None,
                     "active_fraction": r.get("compiled_active_fraction", 1.0)})
    return rows


def decode_ratios(report: dict) -> list[dict]:
    """Per batch size: dense and radial ms per token and radial / dense (batch 1: radial's lax.switch
    path, where only the chosen layer runs; larger batches: the batched path)."""
    rows = report["results"]
    out = []
    for b in sorted({r["batch"] for r in rows}):
        dense = [r for r in rows if r["kind"] == "dense" and r["path"] == "all layers" and r["batch"] == b]
        radial = [r for r in rows if r["kind"] == "radial" and r["batch"] == b
                  and r["path"] == ("switch" if b == 1 else "batched")]
        if dense and radial:
            d, r = dense[0], radial[0]
            out.append({"batch": b, "dense_ms": d["ms_per_token"], "radial_ms": r["ms_per_token"],
                        "ratio": r["ms_per_token"] / d["ms_per_token"],
                        "radial_active_fraction": r.get("active_fraction")})
    return out


def compile_row(report: dict, name: str) -> dict:
    mem, fl = report["memory_per_device"], report["flops_per_device"]
    return {"name": name, "kind": report["kind"], "devices": report["devices"], "chip": report["chip"],
            "total_gib": mem["total"] / GiB, "fits": report.get("fits"),
            "compiled_tflop": fl["per_step"] / 1e12, "analytic_tflop": fl["analytic"] / 1e12,
            "collective_gib": report["collectives"]["bytes"] / GiB, "compile_s": report["compile_s"],
            "roofline_mfu": report.get("roofline", {}).get("mfu")}


def summarize(directory: Path) -> dict:
    """Everything the check wrote in `directory` (missing stages are left out: a failed stage is
    reported by the script, not hidden here)."""
    summary: dict = {"train": [], "train_ratios": [], "decode": [], "compile": []}
    for path in sorted(directory.glob("train_*.json")):
        report = json.loads(path.read_text())
        size = path.stem.removeprefix("train_")
        rows = train_rows(report, size)
        summary["train"] += rows
        summary.setdefault("device", report["device"])
        by_kind = {r["kind"]: r for r in rows}
        if {"dense", "radial"} <= set(by_kind):
            d, r = by_kind["dense"], by_kind["radial"]
            summary["train_ratios"].append({"size": size, "ratio": r["step_ms"] / d["step_ms"],
                                            "target": 1.2 * r["active_fraction"]})
    if (directory / "decode.json").exists():
        summary["decode"] = decode_ratios(json.loads((directory / "decode.json").read_text()))
    for path in sorted(directory.glob("compile_*.json")):
        name = path.stem.removeprefix("compile_")
        summary["compile"].append(compile_row(json.loads(path.read_text()), name))
    return summary


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def format_summary(s: dict) -> str:
    header = ("size", "config", "kind", "params", "step ms", "tokens/s", "model TFLOP/s", "MFU")
    lines = [f"accelerator check on {s.get('device', '?')}", "", *markdown.table(header, [
        (r["size"], r["config"], r["kind"], f"{r['params'] / 1e6:.1f}M", f"{r['step_ms']:.1f}",
         f"{r['tokens_per_s']:,.0f}", f"{r['model_tflops_per_s']:.2f}", _pct(r["mfu"])) for r in s["train"]])]
    for r in s["train_ratios"]:
        lines.append(f"train {r['size']}: radial / dense step time {r['ratio']:.2f} "
                     f"(target <= 1.2 x active fraction = {r['target']:.2f})")
    if s["decode"]:
        lines += ["", "| decode batch | dense ms/token | radial ms/token | radial / dense |",
                  "|---|---|---|---|"]
        lines += [f"| {r['batch']} | {r['dense_ms']:.3f} | {r['radial_ms']:.3f} | {r['ratio']:.2f} |"
                  for r in s["decode"]]
    if s["compile"]:
        lines += ["", "| compile | devices | GiB per device | fits | compiled TFLOP | analytic TFLOP | "
                      "collective GiB | compile s | roofline MFU |", "|---|---|---|---|---|---|---|---|---|"]
        for r in s["compile"]:
            fits = "n/a" if r["fits"] is None else ("yes" if r["fits"] else "NO")
            lines.append(f"| {r['name']} | {r['devices']} x {r['chip']} | {r['total_gib']:.2f} | {fits} | "
                         f"{r['compiled_tflop']:.3f} | {r['analytic_tflop']:.3f} | "
                         f"{r['collective_gib']:.3f} | {r['compile_s']:.1f} | {_pct(r['roofline_mfu'])} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dir", help="the directory launch/accelerator_check.sh wrote its reports into")
    args = ap.parse_args(argv)
    directory = Path(args.dir)
    s = summarize(directory)
    print(format_summary(s))
    (directory / "summary.json").write_text(json.dumps(s, indent=2))
    print(f"wrote {directory / 'summary.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
