"""The compile report: memory against the chip's HBM, compiled vs analytic FLOPs, collectives, and a
roofline estimate of step time and MFU. Pure functions of a `Compiled` and the config."""

from __future__ import annotations

from radial_jax.aot.compile import Compiled, OutOfMemory
from radial_jax.aot.hlo import KINDS
from radial_jax.aot.topology import Topology
from radial_jax.config import Config
from radial_jax.model.flops import flops_per_token
from radial_jax.parallel.plan import ShardingPlan

GiB = 2**30


def roofline(flops: float, model_flops: float, hbm_bytes: float, wire_bytes: float, chip) -> dict:
    """Per device: each resource's time at its peak, the step at the slowest of them (perfect overlap,
    so a lower bound), and the MFU that step gives the model's FLOPs."""
    compute_s = flops / chip.peak_bf16_flops
    memory_s = hbm_bytes / chip.hbm_bytes_per_s
    comm_s = wire_bytes / chip.ici_bytes_per_s
    step_s = max(compute_s, memory_s, comm_s)
    bound = {compute_s: "compute", memory_s: "HBM bandwidth", comm_s: "interconnect"}[step_s]
    return {"compute_s": compute_s, "hbm_s": memory_s, "interconnect_s": comm_s, "step_s": step_s,
            "bound_by": bound, "mfu": model_flops / (step_s * chip.peak_bf16_flops) if step_s else 0.0}


def _what(cfg: Config, config_path: str, topology: Topology, plan: ShardingPlan, n_params: int) -> dict:
    """What was compiled, for what: the head of every report."""
    return {"config": config_path, "topology": topology.name, "slices": topology.slices,
            "devices": topology.n_devices,
            "chip": topology.chip.name if topology.chip else str(topology.devices[0].device_kind).lower(),
            "mesh": plan.mesh_shape, "rules": plan.rules.name, "kind": cfg.model.kind,
            "params": n_params, "batch": [cfg.data.batch_size, cfg.data.seq_len]}


def build_report(cfg: Config, config_path: str, topology: Topology, c: Compiled) -> dict:
    n = topology.n_devices
    tokens = cfg.data.batch_size * cfg.data.seq_len
    f = flops_per_token(cfg)
    analytic = f.train * tokens / n
    # With scan_layers the compiled cost analysis counts each loop body once: the step's FLOPs are
    # then those of the same step lowered unrolled (aot/compile.unrolled_flops).
    per_step = c.flops if c.flops_unrolled is None else c.flops_unrolled
    report = {
        **_what(cfg, config_path, topology, c.plan, c.n_params),
        "memory_per_device": c.memory,
        "flops_per_device": {
            "compiled": c.flops, "analytic": analytic, "per_step": per_step,
            "per_step_source": ("compiled cost analysis" if c.flops_unrolled is None else
                                "cost analysis of the step lowered with scan_layers=false, unoptimised, "
                                "global / devices (the compiled scan counts its loop body once)"),
            "compiled_over_analytic": per_step / analytic if analytic else None},
        "hbm_bytes_accessed_per_device": c.bytes_accessed,
        "hbm_bytes_count_loop_bodies_once": cfg.model.scan_layers,
        "collectives": {"by_kind": c.collectives.by_kind(), "bytes": c.collectives.total_bytes,
                        "wire_bytes": c.collectives.wire_bytes, "largest": c.collectives.largest()},
        "lower_s": c.lower_s, "compile_s": c.compile_s,
    }
    if cfg.model.kind == "radial":
        # Static shapes: every capacity slot of every step runs (flops_per_token.train); routes that
        # fill fewer slots do less useful work. Dense equivalent: the same blocks run by every token.
        report["flops_per_device"]["analytic_dense_equivalent"] = 3 * f.dense_equivalent * tokens / n
        report["flops_per_device"]["compiled_active_fraction"] = f.forward / f.dense_equivalent
    if topology.chip is not None:
        chip = topology.chip
        total = c.memory["total"]
        report["hbm_per_device"] = chip.hbm_bytes
        report["fits"] = total <= chip.hbm_bytes
        report["headroom_fraction"] = 1 - total / chip.hbm_bytes
        report["roofline"] = roofline(per_step, analytic, c.bytes_accessed, c.collectives.wire_bytes, chip)
        report["chip_source"] = chip.source
    return report


def build_oom_report(cfg: Config, config_path: str, topology: Topology, e: OutOfMemory) -> dict:
    """The report of a program the compiler refused for the chip's HBM: what it needed, no more."""
    return {**_what(cfg, config_path, topology, e.plan, e.n_params), "fits": False,
            "hbm_per_device": topology.chip.hbm_bytes if topology.chip else None,
            "temp_needed_bytes": e.needed, "temp_available_bytes": e.available,
            "compile_error": str(e), "lower_s": e.lower_s, "compile_s": e.compile_s,
            "to_fit": [*(["model.remat=block"] if cfg.model.remat == "none" else []),
                       "a larger slice", "a smaller data.batch_size",
                       *(["model.pool_gather=per_step"] if cfg.model.kind == "radial"
                         and cfg.model.pool_gather == "once" else [])]}


def _format_oom(r: dict, head: str) -> str:
    return "\n".join([
        head, "",
        f"**DOES NOT FIT**: the compiler needs {r['temp_needed_bytes'] / GiB:.2f} GiB of temporaries per chip"
        f" where {r['temp_available_bytes'] / GiB:.2f} GiB are left (it refused the program, so "
        f"there are no FLOPs or collectives to report). To make it fit: {', '.join(r['to_fit'])}.",
        f"compiler: {r['compile_error']}",
        f"\ncompile: lower {r['lower_s']:.1f} s, compile {r['compile_s']:.1f} s"])


def format_report(r: dict) -> str:
    mesh = " ".join(f"{k}={v}" for k, v in r["mesh"].items())
    head = (f"{r['config']} ({r['kind']}, {r['params']:,} parameters, batch {r['batch'][0]} x "
            f"{r['batch'][1]}) on {r['topology']}" + (f" x {r['slices']} slices" if r["slices"] > 1 else "")
            + f": {r['devices']} {r['chip']} devices, mesh {mesh}, rules {r['rules']}")
    if "compile_error" in r:
        return _format_oom(r, head)
    mem, fl, col = r["memory_per_device"], r["flops_per_device"], r["collectives"]
    lines = [head, "", "| memory per device | GiB |", "|---|---|"]
    for k in ("argument", "output", "alias", "temp", "code", "total"):
        lines.append(f"| {k} | {mem[k] / GiB:.3f} |")
    if "fits" in r:
        hbm = r["hbm_per_device"] / GiB
        verdict = (f"FITS ({100 * r['headroom_fraction']:.0f}% headroom)" if r["fits"] else
                   f"DOES NOT FIT BY {(mem['total'] - r['hbm_per_device']) / GiB:.2f} GiB")
        lines.append(f"| HBM of a {r['chip']} | {hbm:.1f} |\n\n**{verdict}**")
    once = ", loop bodies once" if r["hbm_bytes_count_loop_bodies_once"] else ""
    lines += ["", "| FLOPs per device per step | TFLOP |", "|---|---|",
              f"| compiled (cost analysis{once}) | {fl['compiled'] / 1e12:.4f} |",
              *([f"| per step (lowered unrolled) | {fl['per_step'] / 1e12:.4f} |"]
                if fl["per_step"] != fl["compiled"] else []),
              f"| analytic (model/flops.py) | {fl['analytic'] / 1e12:.4f} |"]
    if "analytic_dense_equivalent" in fl:
        lines.append(f"| dense model of the same blocks | {fl['analytic_dense_equivalent'] / 1e12:.4f} |")
        lines.append(f"| compiled active fraction | {fl['compiled_active_fraction']:.2f} |")
    if fl["compiled_over_analytic"]:
        lines.append(f"| per step / analytic | {fl['compiled_over_analytic']:.3f} |")
    lines += ["", "| collective | count | GiB per device | wire GiB (ring estimate) |", "|---|---|---|---|"]
    for k in KINDS:
        row = col["by_kind"][k]
        lines.append(f"| {k} | {row['count']} | {row['bytes'] / GiB:.3f} | {row['wire_bytes'] / GiB:.3f} |")
    lines.append(f"| all | {sum(v['count'] for v in col['by_kind'].values())} | {col['bytes'] / GiB:.3f} | "
                 f"{col['wire_bytes'] / GiB:.3f} |")
    if col["largest"]:
        lines += ["", "largest collectives: " + "; ".join(
            f"{x['count']} x {x['kind']} {x['operand']} ({x['bytes'] / GiB:.2f} GiB)"
            for x in col["largest"][:5])]
    lines.append(f"\ncompile: lower {r['lower_s']:.1f} s, compile {r['compile_s']:.1f} s")
    if "roofline" in r:
        rf = r["roofline"]
        lines.append(f"roofline per step: compute {rf['compute_s'] * 1e3:.1f} ms, "
                     f"HBM {rf['hbm_s'] * 1e3:.1f} ms, interconnect {rf['interconnect_s'] * 1e3:.1f} ms "
                     f"-> {rf['step_s'] * 1e3:.1f} ms "
                     f"({rf['bound_by']}-bound), MFU at most {100 * rf['mfu']:.1f}%")
    return "\n".join(lines)
