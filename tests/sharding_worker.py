"""Runs one multi-device scenario for tests/test_sharding.py in a fresh process.

The parent sets XLA_FLAGS=--xla_force_host_platform_device_count=N before this process starts JAX.
Usage: python tests/sharding_worker.py SCENARIO JSON_ARGS; the last stdout line is `RESULT <json>`.
  equivalence  a few train steps on fixed batches on one device and on each mesh: losses, the
               sharding specs of some parameters, and bytes of params + optimizer state
  train        the training loop (`train(cfg, stop_after=...)`) on all devices
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from radial_jax.config import load_config  # noqa: E402
from radial_jax.model.build import abstract_model, build_model  # noqa: E402
from radial_jax.parallel.plan import ShardingPlan, state_bytes  # noqa: E402
from radial_jax.train.init import train_state_init  # noqa: E402
from radial_jax.train.optimizer import lr_schedule, make_optimizer  # noqa: E402
from radial_jax.train.step import make_train_step  # noqa: E402
from tests.helpers import TINY, packed_batch  # noqa: E402


def batches(n: int, batch: int, seq_len: int) -> list[dict]:
    """Fixed packed batches with a mix of document lengths (padding included)."""
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        rows = []
        for _ in range(batch):
            a = int(rng.integers(4, seq_len - 4))
            rows.append([a, int(rng.integers(2, seq_len - a + 1))])
        out.append({k: np.asarray(v) for k, v in packed_batch(rows, seq_len, seed=i).items()})
    return out


def run_steps(overrides: list[str], mesh: list[str], steps: int, probe: list[str], devices) -> dict:
    cfg = load_config(None, [*TINY, *overrides, *mesh])
    plan = ShardingPlan.from_config(cfg, devices)
    tx = make_optimizer(cfg.train)
    graphdef, _ = abstract_model(cfg)
    init = train_state_init(lambda: build_model(cfg), tx)
    abstract = plan.abstract_state(init)
    state = plan.init_state(init, abstract)
    shape = (cfg.data.batch_size, cfg.data.seq_len)
    step = plan.jit_train_step(make_train_step(graphdef, tx, lr_schedule(cfg.train)), abstract, shape)
    losses = []
    for b in batches(steps, *shape):
        state, metrics = step(state, plan.global_batch(b, shape))
        losses.append(float(metrics["train/loss"]))
    specs = {".".join(map(str, path)): [list(p) if isinstance(p, tuple) else p
                                        for p in var.value.sharding.spec]
             for path, var in nnx.to_flat_state(state.params)}
    total, per_device = state_bytes(state)
    measured = {}
    for leaf in jax.tree.leaves(state):
        for shard in leaf.addressable_shards:
            measured[shard.device] = measured.get(shard.device, 0) + shard.data.nbytes
    return {"mesh": dict(plan.mesh.shape), "rules": plan.rules.name, "losses": losses,
            "specs": {k: specs[k] for k in probe}, "total_bytes": total,
            "max_device_bytes": max(measured.values()),
            "planned_max_device_bytes": max(per_device.values())}


def equivalence(args: dict) -> dict:
    out = {"reference": run_steps(args["overrides"], [], args["steps"], args["probe"],
                                  jax.devices()[:1])}
    for mesh in args["meshes"]:
        out[" ".join(mesh)] = run_steps(args["overrides"], mesh, args["steps"], args["probe"], None)
    return out


def train_loop(args: dict) -> dict:
    from radial_jax.train.loop import train

    cfg = load_config(None, args["overrides"])
    last = train(cfg, stop_after=args.get("stop_after"))
    return {"devices": jax.device_count(), "last_loss": last.get("train/loss")}


if __name__ == "__main__":
    scenario, raw = sys.argv[1], sys.argv[2]
    result = {"equivalence": equivalence, "train": train_loop}[scenario](json.loads(raw))
    print("RESULT " + json.dumps(result), flush=True)
