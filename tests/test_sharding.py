"""Scale-out on CPU: meshes over 8 virtual devices, checkpoints moving between device counts, two
processes joined by jax.distributed, and the command line on a 4-device mesh.

Multi-device runs happen in subprocesses (tests/sharding_worker.py or the `radial` command) started
with XLA_FLAGS=--xla_force_host_platform_device_count=N; this pytest process stays on one device.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from radial_jax.cli import main
from radial_jax.config import ConfigError, load_config
from radial_jax.parallel.distributed import Launch, resolve_launch
from radial_jax.parallel.mesh import MeshError, mesh_shape
from radial_jax.parallel.rules import PRESETS, Rules, make_rules
from radial_jax.train.loop import train
from radial_jax.train.metrics import read_metrics
from tests.helpers import TINY, device_env

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "sharding_worker.py"
RADIAL = ["model.kind=radial", "model.pool_size=2", "model.steps=2"]
MESHES = [["mesh.data=8"], ["mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2"], ["mesh.fsdp=4", "mesh.pool=2"]]
SCANNED = ["mesh.data=2", "mesh.fsdp=2", "mesh.pool=2", "model.scan_layers=true"]


def _env(devices: int) -> dict:
    return device_env(devices, PYTHONPATH=str(ROOT))


def _start_worker(scenario: str, args: dict, devices: int = 8) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(WORKER), scenario, json.dumps(args)], cwd=ROOT,
                            env=_env(devices), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def _result(proc: subprocess.Popen, timeout: float = 600) -> dict:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, f"worker failed:\n{out[-3000:]}\n{err[-6000:]}"
    return json.loads([x for x in out.splitlines() if x.startswith("RESULT ")][-1][len("RESULT "):])


# --------------------------------------------------------------------------- pure logic, in process


def test_mesh_shape_resolves_the_rest_and_names_a_mismatch():
    cfg = load_config(None, ["mesh.data=-1", "mesh.fsdp=2", "mesh.pool=2"])
    assert mesh_shape(cfg.mesh, 8) == {"data": 2, "fsdp": 2, "pool": 2, "tensor": 1}
    with pytest.raises(MeshError, match=r"mesh.data=3 x mesh.fsdp=1 x mesh.tensor=1 x mesh.pool=1 = 3 "
                                        r"devices, but 8 are available"):
        mesh_shape(load_config(None, ["mesh.data=3"]).mesh, 8)
    with pytest.raises(MeshError, match="multiple of 3 devices, but 8"):
        mesh_shape(load_config(None, ["mesh.fsdp=3"]).mesh, 8)


@pytest.mark.parametrize("override, message", [
    (["mesh.data=0"], "mesh.data=0 must be a device count >= 1, or -1"),
    (["mesh.fsdp=-1"], "only one mesh axis may be -1"),
    ([*RADIAL, "model.pool_size=3", "mesh.pool=2"], "mesh.pool=2 must divide model.pool_size=3"),
    (["mesh.rules_override=[embed]"], "must look like logical=mesh_axis"),
    (["mesh.rules_override=[emb=fsdp]"], "unknown logical axis 'emb'"),
    (["mesh.rules_override=[embed=fsdq]"], "unknown mesh axis 'fsdq'"),
])
def test_mesh_config_errors(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, override)


def test_rules_resolve_logical_names_to_mesh_axes():
    shape = {"data": 2, "fsdp": 2, "pool": 2, "tensor": 2}
    rules = make_rules("auto", [], shape)
    assert rules.name == "pool_parallel"
    # A parameter: pool layers over `pool`, embed over `fsdp`, the MLP width over `tensor`.
    assert rules.spec(("pool", "embed", "mlp"), (4, 32, 64), shape) == P("pool", "fsdp", "tensor")
    # Activations: the batch takes every data axis, so the embedding stays whole ...
    bsd = rules.spec(("batch", "length", "embed"), (16, 8, 32), shape)
    assert bsd == P(("data", "fsdp", "pool"), None, None)
    # ... except in a dispatch buffer, where `pool` keeps its axis (its rule comes first).
    assert rules.spec(("batch", "pool", "capacity", "embed"), (16, 4, 4, 32), shape) == P(
        ("data", "fsdp"), "pool", None, None)
    # Axes of size 1 and axes that do not divide the dimension are left out.
    assert rules.spec(("vocab", "embed"), (258, 32), {**shape, "tensor": 4}) == P(None, "fsdp")
    data8 = {"data": 8, "fsdp": 1, "pool": 1, "tensor": 1}
    assert rules.spec(("embed", "mlp"), (32, 64), data8) == P(None, None)
    assert make_rules("auto", [], data8).name == "data_parallel"
    assert make_rules("auto", [], {"data": 1, "fsdp": 2, "pool": 1, "tensor": 4}).name == "fsdp_tensor"
    custom = make_rules("fsdp", ["embed=none", "mlp=fsdp+tensor"], shape)
    assert custom.spec(("embed", "mlp"), (32, 64), shape) == P(None, ("fsdp", "tensor"))
    assert Rules("fsdp", PRESETS["fsdp"]).unused_axes(shape) == ["pool", "tensor"]


def test_launch_comes_from_flags_then_environment_then_cluster():
    assert resolve_launch(env={}) is None
    assert resolve_launch("h:1", 2, 1, env={}) == Launch("flags", "h:1", 2, 1)
    env = {"RADIAL_COORDINATOR": "10.0.0.2:99", "RADIAL_NUM_PROCESSES": "4", "RADIAL_PROCESS_ID": "3"}
    assert resolve_launch(env=env) == Launch("environment", "10.0.0.2:99", 4, 3)
    assert resolve_launch(env={"SLURM_NTASKS": "8"}) == Launch("slurm")
    assert resolve_launch(env={"SLURM_NTASKS": "1"}) is None
    assert resolve_launch(env={"TPU_WORKER_HOSTNAMES": "a,b,c,d"}) == Launch("tpu")
    assert resolve_launch(env={"RADIAL_DISTRIBUTED": "1"}) == Launch("auto")
    with pytest.raises(ConfigError, match="missing --process-id"):
        resolve_launch("h:1", 2, env={})
    with pytest.raises(ConfigError, match="process id 2 must be in"):
        resolve_launch("h:1", 2, 2, env={})


@pytest.mark.parametrize("size, lo, hi", [("1b", 0.95e9, 1.1e9), ("7b", 6.8e9, 7.3e9)])
def test_pod_config_pairs_have_their_parameter_counts(size, lo, hi):
    """radial_{size}.yaml has its size, and its dense twin the same count within 1% (the routers)."""
    import jax
    from flax import nnx

    from radial_jax.model.build import build_model

    n = {}
    for kind in ("radial", "dense"):
        cfg = load_config(ROOT / "configs" / f"{kind}_{size}.yaml")
        model = nnx.eval_shape(lambda cfg=cfg: build_model(cfg))  # shapes only: nothing is allocated
        n[kind] = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
        assert cfg.model.kind == kind and cfg.model.dtype == "bfloat16"
    assert lo <= n["radial"] <= hi, n
    assert 0.99 <= n["dense"] / n["radial"] <= 1.0, n


# --------------------------------------------------------------------------- 8 virtual devices

_EQUIVALENCE: dict[str, subprocess.Popen] = {}
PROBE = {"dense": ["blocks.0.mlp.w_gate", "blocks.0.attn.wq", "embedder.embedding"],
         "radial": ["pool.mlp.w_gate", "pool.attn.wq", "embedder.embedding"]}


def equivalence(kind: str) -> dict:
    """Start both kinds' workers at once (two cores), then wait for the one asked for."""
    for k in ("dense", "radial"):
        if k not in _EQUIVALENCE:
            meshes = MESHES + ([["mesh.fsdp=8"]] if k == "dense" else [SCANNED])
            _EQUIVALENCE[k] = _start_worker("equivalence", {
                "overrides": ["data.batch_size=8", *(RADIAL if k == "radial" else [])],
                "meshes": meshes, "steps": 3, "probe": PROBE[k]})
    proc = _EQUIVALENCE[kind]
    if not isinstance(proc, dict):
        _EQUIVALENCE[kind] = _result(proc)
    return _EQUIVALENCE[kind]


EXPECTED = {  # mesh -> parameter -> spec
    "dense": {
        "mesh.data=8": {"blocks.0.mlp.w_gate": [None, None], "embedder.embedding": [None, None]},
        "mesh.data=2 mesh.fsdp=2 mesh.tensor=2": {"blocks.0.mlp.w_gate": ["fsdp", "tensor"],
                                                  "blocks.0.attn.wq": ["fsdp", "tensor", None],
                                                  "embedder.embedding": ["tensor", "fsdp"]},
        "mesh.fsdp=4 mesh.pool=2": {"blocks.0.mlp.w_gate": ["fsdp", None]},
    },
    "radial": {
        "mesh.data=8": {"pool.mlp.w_gate": [None, None, None]},
        "mesh.data=2 mesh.fsdp=2 mesh.tensor=2": {"pool.mlp.w_gate": [None, "fsdp", "tensor"],
                                                  "pool.attn.wq": [None, "fsdp", "tensor", None]},
        "mesh.fsdp=4 mesh.pool=2": {"pool.mlp.w_gate": ["pool", "fsdp", None],
                                    "pool.attn.wq": ["pool", "fsdp", None, None]},
    },
}


@pytest.mark.parametrize("kind", ["dense", "radial"])
def test_meshes_train_like_one_device(kind):
    runs = equivalence(kind)
    ref = runs["reference"]
    assert ref["mesh"] == {"data": 1, "fsdp": 1, "pool": 1, "tensor": 1}
    for mesh in MESHES:
        name = " ".join(mesh)
        run = runs[name]
        assert np.prod(list(run["mesh"].values())) == 8
        np.testing.assert_allclose(run["losses"], ref["losses"], rtol=1e-4, err_msg=name)
        for param, spec in EXPECTED[kind][name].items():
            assert run["specs"][param] == spec, (name, param, run["specs"][param])
    assert len(set(ref["losses"])) == 3  # the steps changed the model


def test_scanned_radial_steps_train_like_one_device():
    """A scan gives every batch shard its own copy of the pool's weights (model/radial.py
    PoolWeights): 4 copies here (data x fsdp), the pool split over `pool`. Same training."""
    runs = equivalence("radial")
    np.testing.assert_allclose(runs[" ".join(SCANNED)]["losses"], runs["reference"]["losses"], rtol=1e-4)


def test_fsdp8_keeps_an_eighth_of_params_and_optimizer_state_per_device():
    run = equivalence("dense")["mesh.fsdp=8"]
    np.testing.assert_allclose(run["losses"], equivalence("dense")["reference"]["losses"], rtol=1e-4)
    assert run["max_device_bytes"] == run["planned_max_device_bytes"]
    assert run["max_device_bytes"] <= run["total_bytes"] / 8 * 1.05, run


# --------------------------------------------------------------------------- checkpoints across meshes


def _loop_cfg(run_dir, corpus_cache, *extra) -> list[str]:
    return [*TINY, "data.batch_size=8", "train.steps=6", f"run.dir={run_dir}",
            f"data.cache_dir={corpus_cache}", "train.log_every=1", "train.eval_every=100",
            "train.eval_batches=1", "train.checkpoint_every=100", *extra]


def _losses(run_dir) -> dict[int, float]:
    return {r["step"]: r["train/loss"] for r in read_metrics(run_dir) if "train/loss" in r}


@pytest.mark.slow
def test_checkpoint_moves_between_8_devices_and_1(tmp_path, corpus_cache):
    eight = ["mesh.fsdp=4", "mesh.tensor=2"]
    down, up, straight = tmp_path / "down", tmp_path / "up", tmp_path / "straight"
    train(load_config(None, _loop_cfg(up, corpus_cache)), stop_after=3)       # 1 device: steps 1-3
    workers = [  # 8 devices: steps 1-3 of `down`, and 4-6 of `up` from the 1-device checkpoint
        _start_worker("train", {"overrides": _loop_cfg(down, corpus_cache, *eight), "stop_after": 3}),
        _start_worker("train", {"overrides": _loop_cfg(up, corpus_cache, *eight)})]
    train(load_config(None, _loop_cfg(straight, corpus_cache)))                # 1 device: 1-6
    for w in workers:
        assert _result(w)["devices"] == 8
    train(load_config(None, _loop_cfg(down, corpus_cache)))                    # 1 device: 4-6
    ref = _losses(straight)
    assert sorted(ref) == list(range(1, 7))
    for run in (down, up):
        got = _losses(run)
        assert sorted(got) == list(range(1, 7)), got
        np.testing.assert_allclose([got[s] for s in ref], [ref[s] for s in ref], rtol=1e-4,
                                   err_msg=str(run))
    # `radial eval` (one device) reads the checkpoint the 8 devices wrote.
    assert main(["eval", "--checkpoint", str(up), "--batches", "1"]) == 0


# --------------------------------------------------------------------------- two processes


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_train_like_one_with_the_same_global_batch(tmp_path, corpus_cache):
    import jax

    from radial_jax.data.pipeline import make_iterator
    from radial_jax.data.tokenizer import get_tokenizer
    from radial_jax.model.build import abstract_model, build_model
    from radial_jax.parallel.plan import ShardingPlan
    from radial_jax.train.init import train_state_init
    from radial_jax.train.optimizer import lr_schedule, make_optimizer
    from radial_jax.train.step import make_train_step

    steps, run_dir = 3, tmp_path / "two"
    overrides = _loop_cfg(run_dir, corpus_cache, *RADIAL, f"train.steps={steps}", "mesh.fsdp=2")
    port = _free_port()
    procs = [subprocess.Popen(
        [sys.executable, "-m", "radial_jax.cli", "train", "--coordinator", f"localhost:{port}",
         "--num-processes", "2", "--process-id", str(i), str(ROOT / "configs" / "base.yaml"),
         *overrides], cwd=ROOT, env=_env(2), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True) for i in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, f"{out[-3000:]}\n{err[-6000:]}"
    assert "mesh: data=2 fsdp=2 pool=1 tensor=1 (4 cpu devices, 2 processes)" in outs[0][0]
    assert "mesh:" not in outs[1][0]  # only process 0 logs
    got = _losses(run_dir)
    assert sorted(got) == list(range(1, steps + 1))
    assert (run_dir / "checkpoints" / str(steps)).is_dir()

    # One process, one device, fed the same global batches: process 0's rows, then process 1's.
    cfg = load_config(None, [*overrides, "mesh.fsdp=1"])
    plan = ShardingPlan.from_config(cfg, jax.devices()[:1])
    tok = get_tokenizer(cfg.data.tokenizer)
    iters = [make_iterator(cfg.data, "train", tokenizer=tok, seed=cfg.data.shuffle_seed,
                           process_index=i, process_count=2) for i in range(2)]
    tx = make_optimizer(cfg.train)
    graphdef, _ = abstract_model(cfg)
    init = train_state_init(lambda: build_model(cfg), tx)
    abstract = plan.abstract_state(init)
    state = plan.init_state(init, abstract)
    shape = (cfg.data.batch_size, cfg.data.seq_len)
    step = plan.jit_train_step(make_train_step(graphdef, tx, lr_schedule(cfg.train)), abstract, shape)
    for s in range(1, steps + 1):
        parts = [next(it) for it in iters]
        batch = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        state, metrics = step(state, plan.global_batch(batch, shape))
        np.testing.assert_allclose(got[s], float(metrics["train/loss"]), rtol=1e-4, err_msg=f"step {s}")


# --------------------------------------------------------------------------- the command line


def test_cli_trains_on_a_4_device_mesh_and_prints_it(tmp_path, corpus_cache):
    overrides = _loop_cfg(tmp_path / "cli", corpus_cache, *RADIAL, "train.steps=2", "mesh.data=2",
                          "mesh.pool=2")
    proc = subprocess.run([sys.executable, "-m", "radial_jax.cli", "train",
                           str(ROOT / "configs" / "base.yaml"), *overrides],
                          cwd=ROOT, env=_env(4), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-6000:]
    out = proc.stdout
    assert "mesh: data=2 fsdp=1 pool=2 tensor=1 (4 cpu devices, 1 process)" in out
    assert "sharding rules: pool_parallel" in out
    assert out.count("pool.mlp.w_gate") == 1  # printed once, at start
    line = next(x for x in out.splitlines() if "pool.mlp.w_gate" in x)
    assert line.split()[1:] == ["2x32x64", "(pool,", "embed,", "mlp)", "->", "(pool,", "None,", "None)"]
    assert "step 2/2" in out


# --------------------------------------------------------------------------- launchers


def _stub(path: Path, body: str) -> None:
    path.write_text("#!/usr/bin/env bash\n" + body)
    path.chmod(0o755)


def test_slurm_launcher_gives_each_task_its_gpu_rank_and_the_coordinator(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _stub(bin_dir / "scontrol", 'printf "gpu-node-7\\ngpu-node-8\\n"\n')
    # srun: run the task command once per task, as SLURM would on 2 nodes x 2 GPUs.
    _stub(bin_dir / "srun",
          'shift\nfor i in 0 1 2 3; do SLURM_PROCID=$i SLURM_LOCALID=$((i % 2)) "$@"; done\n')
    _stub(bin_dir / "radial", 'echo "task $RADIAL_PROCESS_ID/$RADIAL_NUM_PROCESSES gpu $CUDA_VISIBLE_DEVICES '
                              'at $RADIAL_COORDINATOR: $*"\n')
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "RADIAL": str(bin_dir / "radial"),
           "SLURM_JOB_NODELIST": "gpu-node-[7-8]", "SLURM_NTASKS": "4", "SLURM_JOB_ID": "1234",
           "SLURM_SUBMIT_DIR": str(ROOT)}
    out = subprocess.run(["bash", str(ROOT / "launch" / "gpu_slurm.sbatch"), "configs/radial_1b.yaml",
                          "run.dir=/shared/r 1"], env=env, capture_output=True, text=True, check=True).stdout
    tasks = [x for x in out.splitlines() if x.startswith("task")]
    assert tasks == [f"task {i}/4 gpu {i % 2} at gpu-node-7:21234: train configs/radial_1b.yaml "
                     "run.dir=/shared/r 1" for i in range(4)]


def test_tpu_launcher_runs_one_command_on_every_worker(tmp_path):
    env = {**os.environ, "TPU_NAME": "pod", "ZONE": "us-east5-a", "DRY_RUN": "1"}
    out = subprocess.run(["bash", str(ROOT / "launch" / "tpu_pod.sh"), "configs/radial_1b.yaml",
                          "mesh.pool=4"], env=env, capture_output=True, text=True, check=True).stdout
    assert out.startswith("gcloud compute tpus tpu-vm ssh pod --zone us-east5-a --worker=all --command")
    assert "RADIAL_DISTRIBUTED=1" in out and "radial\\ train\\ configs/radial_1b.yaml\\ mesh.pool=4" in out
