"""`radial compile`: the train step compiled ahead of time for a TPU slice that is not here (v5p:2x2x1,
4 chips) with libtpu's compiler, and the report's figures checked against what the layout implies."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from radial_jax.aot.compile import parse_out_of_memory
from radial_jax.aot.hlo import parse_collectives
from radial_jax.aot.topology import TopologyError, get_topology, have_libtpu, parse_topology
from radial_jax.config import ConfigError, load_config
from radial_jax.parallel.chips import CHIPS, chip_for_device_kind
from radial_jax.parallel.mesh import MeshError
from radial_jax.parallel.plan import state_bytes
from tests.helpers import TINY

ROOT = Path(__file__).resolve().parents[1]
needs_tpu = pytest.mark.skipif(not have_libtpu(), reason="libtpu not installed (pip install '.[tpu]')")
TOPO = "v5p:2x2x1"
# TPU layouts pad an array's two minor dimensions to tiles of 8 x 128: widths of 128 per shard keep the
# per-device bytes what the sharding says.
SIZES = [*TINY, "model.d_model=512", "model.n_heads=8", "model.n_kv_heads=8", "model.head_dim=128",
         "model.d_ff=512", "data.batch_size=8"]
RADIAL = ["model.kind=radial", "model.prefix_layers=1", "model.pool_size=2", "model.steps=2",
          "model.capacity_factor=0.5", "router.hidden=128"]
LAYOUTS = {"data": ["mesh.data=-1"], "fsdp": ["mesh.data=1", "mesh.fsdp=-1"],
           "pool": ["mesh.data=1", "mesh.fsdp=2", "mesh.pool=2", "mesh.rules=pool_parallel"]}

_cache: dict = {}


def compiled(kind: str, layout: str, *extra: str):
    """(config, Compiled, report) for a tiny dense or radial model, compiled once per session."""
    from radial_jax.aot.compile import compile_train_step
    from radial_jax.aot.report import build_report

    key = (kind, layout, *extra)
    if key not in _cache:
        cfg = load_config(None, [*SIZES, *(RADIAL if kind == "radial" else []),
                                 *LAYOUTS[layout], *extra])
        topo = get_topology(TOPO)
        c = compile_train_step(cfg, topo)
        _cache[key] = (cfg, c, build_report(cfg, "tiny", topo, c))
    return _cache[key]


@needs_tpu
def test_fsdp_arguments_are_split_evenly():
    _, c, report = compiled("dense", "fsdp")
    total, _ = state_bytes(c.abstract)
    total += 8 * 32 * 4 * 5  # the batch: five [8, 32] arrays of 4-byte numbers
    assert c.plan.mesh_shape["fsdp"] == 4
    assert report["memory_per_device"]["argument"] == pytest.approx(total / 4, rel=0.10)
    assert report["fits"] and report["chip"] == "v5p"


@needs_tpu
def test_data_parallel_replicates_the_state():
    _, c, report = compiled("dense", "data")
    total, _ = state_bytes(c.abstract)
    assert report["memory_per_device"]["argument"] >= total  # every device holds the whole state
    assert report["collectives"]["by_kind"]["all-reduce"]["count"] > 0  # gradients are summed


@needs_tpu
def test_dense_compiled_flops_match_the_analytic_count():
    _, _, report = compiled("dense", "fsdp")
    flops = report["flops_per_device"]
    assert flops["compiled"] == pytest.approx(flops["analytic"], rel=0.10)
    assert report["roofline"]["step_s"] > 0 and 0 < report["roofline"]["mfu"] <= 1


@needs_tpu
def test_radial_fsdp_report():
    _, _, report = compiled("radial", "fsdp")
    flops = report["flops_per_device"]
    assert 0 < flops["compiled_active_fraction"] < 1
    # Dispatch adds gathers, scatters and the router; the blocks' matmuls still dominate.
    assert flops["analytic"] * 0.8 < flops["compiled"] < flops["analytic"] * 2.0
    assert report["collectives"]["by_kind"]["all-gather"]["count"] > 0  # FSDP gathers weights


@needs_tpu
def test_radial_fsdp_gathers_the_pool_once_per_step():
    """Per byte of parameters, FSDP gathers no more for the radial step than for the dense one (with
    the pool gathered at every routing step it was 1.8x at T=2, growing with T), and gradients are
    reduce-scattered, never all-reduced whole."""
    def per_param_byte(kind):
        _, c, report = compiled(kind, "fsdp")
        return report["collectives"]["by_kind"], state_bytes(c.abstract.params)[0]

    (dense, dense_bytes), (radial, radial_bytes) = per_param_byte("dense"), per_param_byte("radial")
    assert radial["all-gather"]["bytes"] / radial_bytes <= 1.3 * dense["all-gather"]["bytes"] / dense_bytes
    assert radial["all-reduce"]["bytes"] < 0.01 * radial_bytes


@needs_tpu
@pytest.mark.slow  # one more tiny compile (about 2 minutes on a shared core)
def test_scanned_step_reports_the_unrolled_steps_flops_and_collectives():
    """With scan_layers the compiled cost analysis counts the routing scan's body once; the report's
    per-step FLOPs (the step lowered unrolled) are the unrolled step's, and its collectives count
    loop bodies per run (libtpu states no trip count: read from the loop's condition). Counted so,
    the scanned step moves what the unrolled one moves: the pool's weight gradient stays with each
    batch shard through the steps and is reduced once after them (model/radial.py PoolWeights; a
    scan's transpose reduced it at every step, 1.38x the unrolled bytes here at T = 2)."""
    _, _, unrolled = compiled("radial", "fsdp")
    _, _, scanned = compiled("radial", "fsdp", "model.scan_layers=true")
    flops, want = scanned["flops_per_device"], unrolled["flops_per_device"]["compiled"]
    assert flops["compiled"] < 0.9 * want
    assert flops["per_step"] == pytest.approx(want, rel=0.05)
    assert scanned["collectives"]["bytes"] == pytest.approx(unrolled["collectives"]["bytes"], rel=0.02)


@needs_tpu
def test_a_step_the_compiler_refuses_is_reported_as_not_fitting(tmp_path, capsys):
    """libtpu refuses a program whose temporaries exceed a chip's HBM (here ~105 GiB on a v5e's 16):
    `radial compile` reports DOES NOT FIT with what the compiler asked for, writes the JSON, and
    has no HLO to write."""
    from radial_jax.aot.command import run

    out, hlo = tmp_path / "r.json", tmp_path / "r.hlo"
    big = ["data.batch_size=512", "data.seq_len=2048", "model.d_model=512", "model.n_heads=8",
           "model.n_kv_heads=8", "model.head_dim=128", "model.d_ff=2048", "mesh.data=1", "mesh.fsdp=-1"]
    report = run(str(ROOT / "configs" / "tiny.yaml"), "v5e:2x2", out=str(out), overrides=big, hlo=str(hlo))
    assert report["fits"] is False and report["chip"] == "v5e"
    assert report["temp_needed_bytes"] > report["temp_available_bytes"] > 15 * 2**30
    assert json.loads(out.read_text())["compile_error"].startswith("RESOURCE_EXHAUSTED")
    assert not hlo.exists()
    assert "DOES NOT FIT" in capsys.readouterr().out
    assert parse_out_of_memory("INVALID_ARGUMENT: something else") is None


@needs_tpu
def test_pool_parallel_moves_tokens_by_all_to_all():
    _, c, report = compiled("radial", "pool")
    assert c.plan.mesh_shape["pool"] == 2 and c.plan.rules.name == "pool_parallel"
    assert report["collectives"]["by_kind"]["all-to-all"]["count"] > 0


def test_cli_writes_the_report(tmp_path):
    """cpu:N: the command re-runs itself with N virtual CPU devices (no libtpu needed)."""
    out = tmp_path / "report.json"
    proc = subprocess.run([sys.executable, "-m", "radial_jax.cli", "compile", "configs/tiny.yaml",
                           "--topology", "cpu:4", "--out", str(out), *TINY, *LAYOUTS["fsdp"]],
                          capture_output=True, text=True, cwd=Path(__file__).parents[1],
                          env=dict(os.environ, PYTHONPATH=str(Path(__file__).parents[1])))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "all-gather" in proc.stdout and "compiled (cost analysis)" in proc.stdout
    report = json.loads(out.read_text())
    assert report["devices"] == 4 and report["mesh"]["fsdp"] == 4 and report["chip"] == "cpu"
    assert report["collectives"]["by_kind"]["all-gather"]["count"] > 0


# ---------------------------------------------------------------------------- bad input, before compiling

def test_unknown_topology_lists_known_ones():
    with pytest.raises(TopologyError, match="v5p:4x4x4.*cpu:N"):
        parse_topology("v9x:4x4")
    assert parse_topology("v5e:16x16").dims == (16, 16)
    assert parse_topology("cpu:8").chips_per_slice == 8
    assert parse_topology("local").chip == "local"


def test_cpu_topology_without_the_flag_says_what_to_set():
    with pytest.raises(TopologyError, match="xla_force_host_platform_device_count=64"):
        get_topology("cpu:64")


def test_without_libtpu_says_what_to_install(monkeypatch):
    import radial_jax.aot.topology as topology

    monkeypatch.setattr(topology, "have_libtpu", lambda: False)
    with pytest.raises(TopologyError, match=r"pip install '\.\[tpu\]'"):
        topology.get_topology("v5p:4x4x4")


@needs_tpu
def test_mesh_product_must_be_the_chip_count():
    from radial_jax.aot.compile import compile_train_step

    cfg = load_config(None, [*TINY, "mesh.data=1", "mesh.fsdp=8"])
    with pytest.raises(MeshError, match="8 devices, but 4 are available"):
        compile_train_step(cfg, get_topology(TOPO))


@needs_tpu
def test_dimension_that_does_not_divide_names_it_and_the_axis():
    from radial_jax.aot.compile import compile_train_step

    cfg = load_config(None, [*TINY, "model.d_model=54", "model.n_heads=3", "model.n_kv_heads=3",
                             "mesh.data=1", "mesh.fsdp=-1"])
    with pytest.raises(ConfigError, match=r"embed, size 54\) over mesh axis fsdp \(size 4\)"):
        compile_train_step(cfg, get_topology(TOPO))


# ---------------------------------------------------------------------------- pure parts

def test_collectives_parsed_from_hlo_text():
    hlo = """
%all-reduce-scatter (input: f32[64,16]) -> f32[16,16] {
  %all-reduce.1 = f32[64,16]{1,0} all-reduce(%input), channel_id=3, replica_groups={{0,1,2,3}}, to_apply=%add
  ROOT %ds = f32[16,16]{1,0} dynamic-slice(%all-reduce.1, %i, %j), dynamic_slice_sizes={16,16}
}
ENTRY %main (p: bf16[8,128]) -> bf16[32,128] {
  %all-gather = bf16[32,128]{1,0} all-gather(%p), replica_groups=mesh['axis_0'=4,'axis_1'=1] {'axis_0'}
  %ags = (bf16[8,128]{1,0}, bf16[32,128]{1,0}) all-gather-start(%p), replica_groups=[1,4]<=[4], dimensions={0}
  %agd = bf16[32,128]{1,0} all-gather-done(%ags)
  %ar = f32[10]{0} all-reduce(%x), replica_groups={{0,1},{2,3}}, to_apply=%add
  %a2a = bf16[4,8,128]{2,1,0} all-to-all(%y), replica_groups={{0,1,2,3}}, dimensions={0}
}
"""
    kinds = parse_collectives(hlo, 4).by_kind()
    assert kinds["reduce-scatter"] == {"count": 1, "bytes": 64 * 16 * 4, "wire_bytes": 0.75 * 64 * 16 * 4}
    assert kinds["all-gather"]["count"] == 2 and kinds["all-gather"]["bytes"] == 2 * 32 * 128 * 2
    assert kinds["all-reduce"] == {"count": 1, "bytes": 40, "wire_bytes": 40.0}  # 2 x (1/2) x 40
    assert kinds["all-to-all"]["count"] == 1 and kinds["all-to-all"]["bytes"] == 4 * 8 * 128 * 2


def test_collectives_in_a_loop_count_its_trip_count():
    """A scan's body (model.scan_layers) runs trip-count times per step, and so do its collectives,
    also inside a fusion the body calls; a loop of unknown trip count counts once, and libtpu's
    loops (no stated count) count the bound of their scan-shaped condition."""
    hlo = """
%fused (a: bf16[8,128]) -> bf16[32,128] {
  ROOT %ag.2 = bf16[32,128]{1,0} all-gather(%a), replica_groups={{0,1,2,3}}, dimensions={0}
}
%body (c: (s32[], f32[10])) -> (s32[], f32[10]) {
  %ar = f32[10]{0} all-reduce(%x), replica_groups={{0,1,2,3}}, to_apply=%add
  %f = bf16[32,128]{1,0} fusion(%a), kind=kCustom, calls=%fused
}
%cond (c: (s32[], f32[10])) -> pred[] {
  ROOT %lt = pred[] compare(%i, %n), direction=LT
}
%body2 (c: (s32[], f32[10])) -> (s32[], f32[10]) {
  %ar2 = f32[10]{0} all-reduce(%x), replica_groups={{0,1,2,3}}, to_apply=%add
}
%scan_cond (c: (s32[], f32[10])) -> pred[] {
  %c = (s32[], f32[10]) parameter(0)
  %n.7 = s32[]{:T(128)} constant(24)
  %i.3 = s32[]{:T(128)} get-tuple-element(%c), index=0
  ROOT %lt.1 = pred[]{:T(512)} compare(%i.3, %n.7), direction=LT, metadata={op_name="while/cond/lt"}
}
%other_cond (c: (s32[], f32[10])) -> pred[] {
  %c = (s32[], f32[10]) parameter(0)
  %n.8 = s32[] constant(99)
  %j = s32[] get-tuple-element(%c), index=1
  ROOT %lt.2 = pred[] compare(%j, %n.8), direction=LT
}
%body3 (c: (s32[], f32[10])) -> (s32[], f32[10]) {
  %ar4 = f32[10]{0} all-reduce(%x), replica_groups={{0,1,2,3}}, to_apply=%add
}
%body4 (c: (s32[], f32[10])) -> (s32[], f32[10]) {
  %ar5 = f32[10]{0} all-reduce(%x), replica_groups={{0,1,2,3}}, to_apply=%add
}
ENTRY %main (p: f32[10]) -> f32[10] {
  %w = (s32[], f32[10]) while(%t), condition=%cond, body=%body, backend_config={"known_trip_count":{"n":"16"}}
  %w2 = (s32[], f32[10]) while(%t), condition=%cond, body=%body2
  %w3 = (s32[], f32[10]) while(%t), condition=%scan_cond, body=%body3
  %w4 = (s32[], f32[10]) while(%t), condition=%other_cond, body=%body4
  %ar3 = f32[10]{0} all-reduce(%p), replica_groups={{0,1,2,3}}, to_apply=%add
}
"""
    kinds = parse_collectives(hlo, 4).by_kind()
    # stated 16; unknown bound once; a scan-shaped condition (element 0 < constant 24) 24 times; a
    # condition on another element of the state once
    assert kinds["all-reduce"]["count"] == 16 + 1 + 24 + 1 + 1 and kinds["all-reduce"]["bytes"] == 43 * 40
    assert kinds["all-gather"]["count"] == 16 and kinds["all-gather"]["bytes"] == 16 * 32 * 128 * 2


def test_chips_table():
    assert chip_for_device_kind("TPU v5 lite") is CHIPS["v5e"]
    assert chip_for_device_kind("TPU v5") is CHIPS["v5p"]
    assert chip_for_device_kind("NVIDIA H100 80GB HBM3") is CHIPS["h100"]
    assert chip_for_device_kind("cpu") is None
    for chip in CHIPS.values():
        assert chip.source.startswith("https://") and chip.peak_bf16_flops > 1e14
