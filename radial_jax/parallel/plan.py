"""How a run lies on its mesh: shardings of the train state and of batches, initialisation straight
into those shardings, steps jitted with explicit in/out shardings, and global batches assembled from
each process's share of the data.

The train loop only calls these; nothing here knows what the model computes or what a train state
holds: states come from an `init` function the caller passes.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from radial_jax.config import Config
from radial_jax.parallel.constrain import active
from radial_jax.parallel.mesh import MeshError, describe_mesh, make_mesh
from radial_jax.parallel.rules import Rules, make_rules

BATCH_AXES = ("batch", "length")


def _spec_text(spec: PartitionSpec) -> str:
    parts = ["+".join(p) if isinstance(p, tuple) else str(p) for p in spec]
    return "(" + ", ".join(parts) + ")" if parts else "replicated"


@dataclass(frozen=True)
class ShardingPlan:
    mesh: Mesh
    rules: Rules

    @classmethod
    def from_config(cls, cfg: Config, devices: list | None = None) -> ShardingPlan:
        """The mesh and rules of `cfg.mesh` over `devices` (default: all); checks the batch splits."""
        mesh = make_mesh(cfg.mesh, devices)
        plan = cls(mesh, make_rules(cfg.mesh.rules, cfg.mesh.rules_override, dict(mesh.shape)))
        want = plan.rules.spec(("batch",), None, plan.mesh_shape)[0] or ()
        want = (want,) if isinstance(want, str) else want
        split = int(np.prod([plan.mesh_shape[a] for a in want]))
        if cfg.data.batch_size % split:
            raise MeshError(f"data.batch_size={cfg.data.batch_size} cannot be split over the "
                            f"{split} batch shards of the mesh ({' x '.join(want)}); make it a "
                            f"multiple of {split}, or (to resume a run, which keeps its batch) "
                            "use devices, processes or mesh.* sizes whose batch shards divide it")
        return plan

    @property
    def mesh_shape(self) -> dict[str, int]:
        return dict(self.mesh.shape)

    @property
    def replicated(self) -> NamedSharding:
        return NamedSharding(self.mesh, PartitionSpec())

    def sharding(self, names: tuple[str | None, ...], shape: tuple[int, ...]) -> NamedSharding:
        return NamedSharding(self.mesh, self.rules.spec(tuple(names), tuple(shape), self.mesh_shape))

    def shardings(self, tree: Any) -> Any:
        """A NamedSharding for every array of `tree` (arrays or ShapeDtypeStructs) from the logical
        names in NNX `out_sharding` metadata; arrays without names are replicated."""
        specs = nnx.get_partition_spec(tree)
        return jax.tree.map(lambda spec, a: self.sharding(tuple(spec), a.shape), specs, tree,
                            is_leaf=lambda x: isinstance(x, PartitionSpec))

    # ------------------------------------------------------------------ state

    def abstract_state(self, init: Callable[[], Any]) -> Any:
        """What `init` returns (any pytree of arrays, e.g. a train state) as ShapeDtypeStructs with
        target shardings; nothing is allocated. Also the restore target of a checkpoint on this mesh."""
        abstract = jax.eval_shape(init)
        return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                            abstract, self.shardings(abstract))

    def init_state(self, init: Callable[[], Any], abstract: Any) -> Any:
        """`init()` computed directly in `abstract`'s shards (never whole on a device)."""
        return jax.jit(init, out_shardings=_shardings_of(abstract))()

    # ------------------------------------------------------------------ steps

    def jit(self, fn: Callable, in_shardings: Any, out_shardings: Any,
            donate_argnums: tuple[int, ...] = ()) -> Callable:
        """`jax.jit` with explicit shardings; traced with this plan's activation constraints active.
        `.lower(*args)` lowers it the same way (`radial compile`)."""
        jitted = jax.jit(fn, in_shardings=in_shardings, out_shardings=out_shardings,
                         donate_argnums=donate_argnums)

        def call(*args):
            with active(self.mesh, self.rules):
                return jitted(*args)

        def lower(*args):  # ahead-of-time: args may be sharded ShapeDtypeStructs
            with active(self.mesh, self.rules):
                return jitted.lower(*args)

        call.lower = lower
        return call

    def jit_train_step(self, step: Callable, abstract: Any, batch_shape: tuple[int, int]):
        """(state, batch) -> (state, metrics); the state is donated, metrics come back replicated."""
        state_sh = _shardings_of(abstract)
        return self.jit(step, (state_sh, self.batch_sharding(batch_shape)),
                        (state_sh, self.replicated), donate_argnums=(0,))

    def jit_eval_step(self, step: Callable, abstract_params: Any, batch_shape: tuple[int, int]):
        """(params, batch) -> replicated sums."""
        return self.jit(step, (_shardings_of(abstract_params), self.batch_sharding(batch_shape)),
                        self.replicated)

    # ------------------------------------------------------------------ batches

    def batch_sharding(self, batch_shape: tuple[int, int]) -> NamedSharding:
        return self.sharding(BATCH_AXES, batch_shape)

    def data_shard(self, batch_shape: tuple[int, int]) -> tuple[int, int]:
        """(index, count): this process loads slice `index` of `count` equal slices of the global
        batch's rows (processes whose devices hold the same rows load the same slice)."""
        rows: dict[int, set] = {}
        for device, index in self.batch_sharding(batch_shape).devices_indices_map(batch_shape).items():
            start, stop, _ = index[0].indices(batch_shape[0])
            rows.setdefault(device.process_index, set()).update(range(start, stop))
        spans = {p: (min(r), max(r) + 1) for p, r in rows.items()}
        distinct = sorted(set(spans.values()))
        n = batch_shape[0] // len(distinct)
        if any(len(rows[p]) != hi - lo for p, (lo, hi) in spans.items()) or distinct != [
                (i * n, (i + 1) * n) for i in range(len(distinct))]:
            raise MeshError(f"the batch rows of each process are not one contiguous equal block "
                            f"({spans}); reorder the mesh axes or change mesh.* sizes")
        return distinct.index(spans[jax.process_index()]), len(distinct)

    def global_batch(self, local: dict[str, np.ndarray], batch_shape: tuple[int, int]) -> dict:
        """One global batch from this process's slice of rows (see `data_shard`)."""
        sharding = self.batch_sharding(batch_shape)
        return {k: jax.make_array_from_process_local_data(sharding, v, (batch_shape[0], *v.shape[1:]))
                for k, v in local.items()}

    def batch_from_full(self, full: dict[str, np.ndarray]) -> dict:
        """A global batch from host data that every process holds whole (e.g. eval batches)."""
        out = {}
        for k, v in full.items():
            v = np.asarray(v)
            out[k] = jax.make_array_from_callback(v.shape, self.batch_sharding(v.shape[:2]),
                                                  lambda index, v=v: v[index])
        return out

    # ------------------------------------------------------------------ the run log

    def describe(self) -> str:
        lines = [describe_mesh(self.mesh), f"sharding rules: {self.rules.name}: {self.rules.describe()}"]
        unused = self.rules.unused_axes(self.mesh_shape)
        if unused:
            lines.append(f"warning: mesh axes {', '.join(unused)} are used by no rule, so work is "
                         f"repeated on them; choose mesh.rules=auto or a preset that uses them")
        return "\n".join(lines)

    def describe_state(self, abstract_params: Any, abstract: Any) -> str:
        """One line per parameter group (layer indices folded into *): shape, logical axes, spec;
        then the bytes of the whole state (parameters plus optimizer state) in all and on the
        fullest device."""
        seen, lines = set(), ["parameter shardings (logical axes -> mesh axes):"]
        for path, var in nnx.to_flat_state(abstract_params):
            name = re.sub(r"\.\d+(?=\.|$)", ".*", ".".join(map(str, path)))
            logical = tuple(var.get_metadata().get("out_sharding") or ())
            spec = var.value.sharding.spec
            key = (name, var.value.shape, spec)
            if key in seen:
                continue
            seen.add(key)
            shape = "x".join(map(str, var.value.shape))
            lines.append(f"  {name:<32} {shape:<14} ({', '.join(map(str, logical))}) -> "
                         f"{_spec_text(spec)}")
        total, per_device = state_bytes(abstract)
        lines.append(f"params + optimizer state: {total / 2**20:.2f} MiB in all, "
                     f"{max(per_device.values()) / 2**20:.2f} MiB on the fullest device")
        return "\n".join(lines)


def _shardings_of(abstract: Any) -> Any:
    return jax.tree.map(lambda a: a.sharding, abstract)


def state_bytes(tree: Any) -> tuple[int, dict]:
    """(total bytes, bytes per device) of the arrays or sharded ShapeDtypeStructs in `tree`."""
    total, per_device = 0, {}
    for a in jax.tree.leaves(tree):
        nbytes = np.dtype(a.dtype).itemsize
        total += int(np.prod(a.shape)) * nbytes
        for device, index in a.sharding.devices_indices_map(a.shape).items():
            shard = [len(range(*s.indices(n))) for s, n in zip(index, a.shape, strict=True)]
            per_device[device] = per_device.get(device, 0) + int(np.prod(shard)) * nbytes
    return total, per_device
