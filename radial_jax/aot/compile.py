"""Lower and compile the train step `radial train` runs, for a topology's devices, over abstract state
and batch (sharded ShapeDtypeStructs: nothing is allocated), and read what the compiler says about it:
memory per device, FLOPs, collectives."""

from __future__ import annotations

import dataclasses
import re
import time
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax._src import xla_bridge
from jax._src.lib import _jax

from radial_jax.aot.hlo import CollectiveSummary, parse_collectives
from radial_jax.aot.topology import Topology
from radial_jax.config import Config, ConfigError
from radial_jax.model.build import abstract_model, build_model
from radial_jax.parallel.plan import ShardingPlan
from radial_jax.train.init import train_state_init
from radial_jax.train.optimizer import lr_schedule, make_optimizer
from radial_jax.train.step import TrainState, make_train_step

BATCH_DTYPES = {"inputs": jnp.int32, "targets": jnp.int32, "positions": jnp.int32,
                "segment_ids": jnp.int32, "loss_mask": jnp.float32}


@dataclass
class Compiled:
    """What one compile gives: the plan it ran under, the compiler's analyses and timings."""

    plan: ShardingPlan
    abstract: TrainState
    n_params: int
    memory: dict[str, int]      # per device: argument, output, alias, temp, code, total
    flops: float                # per device per step, from cost_analysis (a loop body counted once)
    flops_unrolled: float | None  # scan_layers: per device, the step lowered unrolled (see below)
    bytes_accessed: float       # per device per step (HBM traffic), from cost_analysis
    collectives: CollectiveSummary
    lower_s: float
    compile_s: float
    hlo_text: str


class OutOfMemory(Exception):
    """The compiler refused the program: its temporaries need more HBM than a chip has left."""

    def __init__(self, plan: ShardingPlan, n_params: int, needed: float, available: float, message: str,
                 lower_s: float, compile_s: float):
        super().__init__(message)
        self.plan, self.n_params, self.needed, self.available = plan, n_params, needed, available
        self.lower_s, self.compile_s = lower_s, compile_s


# libtpu: "RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO temporaries
# (42.96G) exceeds available HBM (31.25G)." (G: GiB)
_OOM = re.compile(r"RESOURCE_EXHAUSTED: Ran out of memory.*?\(([\d.]+)([KMGT])\).*?\(([\d.]+)([KMGT])\)")


def parse_out_of_memory(message: str) -> tuple[float, float] | None:
    """(bytes needed, bytes available) from the TPU compiler's out-of-memory error, else None."""
    m = _OOM.search(message)
    if m is None:
        return None
    scale = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
    return float(m.group(1)) * scale[m.group(2)], float(m.group(3)) * scale[m.group(4)]


def check_divisible(plan: ShardingPlan, abstract: TrainState) -> None:
    """A parameter dimension that a rule puts on a mesh axis the dimension does not divide is left
    whole (replicated) by the rules: refuse, naming the parameter, dimension and axis."""
    bad = []
    for path, var in nnx.to_flat_state(abstract.params):
        names = tuple(var.get_metadata().get("out_sharding") or ())
        if not names:
            continue
        shape = var.value.shape
        want = plan.rules.spec(names, None, plan.mesh_shape)
        got = plan.rules.spec(names, shape, plan.mesh_shape)
        for dim, (w, g, logical) in enumerate(zip(want, got, names, strict=True)):
            w = (w,) if isinstance(w, str) else tuple(w or ())
            g = (g,) if isinstance(g, str) else tuple(g or ())
            for axis in (a for a in w if a not in g):
                bad.append(f"{'.'.join(map(str, path))} dimension {dim} ({logical}, size {shape[dim]}) "
                           f"over mesh axis {axis} (size {plan.mesh_shape[axis]})")
    if bad:
        more = f" (and {len(bad) - 5} more)" if len(bad) > 5 else ""
        raise ConfigError("the config does not divide over the mesh: " + "; ".join(bad[:5]) + more +
                          "; change the model sizes or mesh.* so each divides, or map the logical axis "
                          "elsewhere with mesh.rules_override")


def abstract_batch(plan: ShardingPlan, batch_shape: tuple[int, int]) -> dict:
    sharding = plan.batch_sharding(batch_shape)
    return {k: jax.ShapeDtypeStruct(batch_shape, d, sharding=sharding) for k, d in BATCH_DTYPES.items()}


def _memory(compiled) -> dict[str, int]:
    m = compiled.memory_analysis()
    out = {"argument": m.argument_size_in_bytes, "output": m.output_size_in_bytes,
           "alias": m.alias_size_in_bytes, "temp": m.temp_size_in_bytes,
           "code": m.generated_code_size_in_bytes}
    # Donated state: outputs alias their arguments and take no memory of their own.
    out["total"] = out["argument"] + out["output"] - out["alias"] + out["temp"] + out["code"]
    return {k: int(v) for k, v in out.items()}


def _cost(compiled) -> dict[str, Any]:
    cost = compiled.cost_analysis()
    return (cost[0] if isinstance(cost, list | tuple) else cost) or {}


def _lower(cfg: Config, topology: Topology):
    """(plan, abstract state, lowered train step): the step `radial train` runs, over abstract
    state and batch."""
    plan = ShardingPlan.from_config(cfg, topology.devices)
    tx = make_optimizer(cfg.train, cfg.routing.balance_rate)
    graphdef, _ = abstract_model(cfg)
    abstract = plan.abstract_state(train_state_init(lambda: build_model(cfg), tx))
    check_divisible(plan, abstract)
    batch_shape = (cfg.data.batch_size, cfg.data.seq_len)
    step = plan.jit_train_step(make_train_step(graphdef, tx, lr_schedule(cfg.train)), abstract,
                               batch_shape)
    return plan, abstract, step.lower(abstract, abstract_batch(plan, batch_shape))


def unrolled_flops(cfg: Config, topology: Topology) -> float:
    """FLOPs per device per step of the train step lowered with scan_layers=false: XLA's cost
    analysis of the unoptimised global program (run on the CPU client, since a topology's client
    offers none before compiling), divided by the device count. `cost_analysis()` of a compiled
    scan counts its body once; the unrolled program has every step, with remat's recomputation
    (within 2% of the compiled unrolled count on the tiny layouts of tests/test_compile.py)."""
    unrolled = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, scan_layers=False))
    _, _, lowered = _lower(unrolled, topology)
    module = lowered._lowering.hlo().as_hlo_module()
    cost = _jax.hlo_module_cost_analysis(xla_bridge.get_backend("cpu"), module)
    return float(cost["flops"]) / topology.n_devices


def _n_params(abstract: TrainState) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(abstract.params)))


def compile_train_step(cfg: Config, topology: Topology) -> Compiled:
    """Raises ConfigError (mesh, batch, divisibility) before anything is traced, OutOfMemory where
    the compiler refuses the program for the chip's HBM."""
    t0 = time.perf_counter()
    plan, abstract, lowered = _lower(cfg, topology)
    t1 = time.perf_counter()
    # An executable for devices that are not here cannot be read back from the persistent cache.
    cache = jax.config.jax_enable_compilation_cache
    jax.config.update("jax_enable_compilation_cache", topology.chip is None and cache)
    try:
        compiled = lowered.compile()
    except jax.errors.JaxRuntimeError as e:
        sizes = parse_out_of_memory(str(e))
        if sizes is None:
            raise
        raise OutOfMemory(plan, _n_params(abstract), *sizes, str(e).splitlines()[0], t1 - t0,
                          time.perf_counter() - t1) from None
    finally:
        jax.config.update("jax_enable_compilation_cache", cache)
    t2 = time.perf_counter()
    cost = _cost(compiled)
    text = compiled.as_text()
    return Compiled(plan=plan, abstract=abstract,
                    n_params=_n_params(abstract),
                    memory=_memory(compiled), flops=float(cost.get("flops", 0.0)),
                    flops_unrolled=unrolled_flops(cfg, topology) if cfg.model.scan_layers else None,
                    bytes_accessed=float(cost.get("bytes accessed", 0.0)),
                    collectives=parse_collectives(text, topology.n_devices),
                    lower_s=t1 - t0, compile_s=t2 - t1, hlo_text=text)
