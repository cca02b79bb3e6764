"""Logical axis names -> mesh axes: the presets, user overrides, and how one array's spec is resolved.

Model code names the dimensions of parameters and activations with logical axes:
  batch, length     rows and positions of a batch
  embed             the residual width D
  heads, kv         attention heads and the per-head width
  mlp               the MLP hidden width F
  vocab             the vocabulary V
  pool              the radial pool's stacked layers P
  capacity          slots per pool layer in a dispatch buffer C
A rule maps a logical name to zero or more mesh axes (`data`, `fsdp`, `pool`, `tensor`). Rules are
ordered: when two dimensions of one array want the same mesh axis, the dimension whose rule comes
first gets it. So in the dispatch buffer [batch, pool, capacity, embed] `pool` takes the pool axis
and `batch` the data axes, and in an activation [batch, length, embed] `batch` takes `fsdp` and the
embedding stays whole, while a parameter [embed, mlp] is split on `fsdp` along embed. A mesh axis of
size 1, or one whose size does not divide the dimension, is left out.
"""

from __future__ import annotations

from dataclasses import dataclass

from jax.sharding import PartitionSpec

from radial_jax.axes import parse_rule_overrides

Table = tuple[tuple[str, tuple[str, ...]], ...]

_BATCH = ("batch", ("data", "fsdp"))
_FSDP = ("embed", ("fsdp",))
_TENSOR = (("heads", ("tensor",)), ("mlp", ("tensor",)), ("vocab", ("tensor",)))

PRESETS: dict[str, Table] = {
    # Batch split over every data axis; all parameters replicated.
    "data_parallel": (_BATCH,),
    # + parameters and optimizer state split along embed (ZeRO-3 style; gathered per layer by XLA).
    "fsdp": (_BATCH, _FSDP),
    # + heads, MLP width and vocabulary split over `tensor` (Megatron style).
    "fsdp_tensor": (_BATCH, *_TENSOR, _FSDP),
    # + the pool's layers split over `pool` (layer parallelism); outside the pool, `pool` is one
    # more batch axis, so moving tokens into the dispatch buffer is an all-to-all, as in MoE.
    "pool_parallel": (("pool", ("pool",)), ("batch", ("data", "fsdp", "pool")), *_TENSOR, _FSDP),
}


@dataclass(frozen=True)
class Rules:
    """An ordered logical -> mesh axes table, and the preset it came from (for the run log)."""

    name: str
    table: Table

    def spec(self, names: tuple[str | None, ...], shape: tuple[int, ...] | None,
             mesh_shape: dict[str, int]) -> PartitionSpec:
        """The PartitionSpec for an array whose dimensions have these logical names."""
        order = {logical: i for i, (logical, _) in enumerate(self.table)}
        axes_of = dict(self.table)
        dims = sorted(range(len(names)), key=lambda i: order.get(names[i], len(order)))
        used: set[str] = set()
        out: list = [None] * len(names)
        for i in dims:
            chosen, split = [], 1
            for axis in axes_of.get(names[i], ()):
                size = mesh_shape.get(axis, 1)
                if size == 1 or axis in used or (shape is not None and shape[i] % (split * size)):
                    continue
                chosen.append(axis)
                split *= size
                used.add(axis)
            out[i] = tuple(chosen) if len(chosen) > 1 else (chosen[0] if chosen else None)
        return PartitionSpec(*out)

    def unused_axes(self, mesh_shape: dict[str, int]) -> list[str]:
        """Mesh axes of size > 1 that no rule uses: work is replicated over them."""
        named = {a for _, axes in self.table for a in axes}
        return [a for a, n in mesh_shape.items() if n > 1 and a not in named]

    def describe(self) -> str:
        return ", ".join(f"{k}->{'+'.join(v) if v else 'none'}" for k, v in self.table)


def choose_preset(mesh_shape: dict[str, int]) -> str:
    """`auto`: the smallest preset that uses every mesh axis larger than 1."""
    if mesh_shape.get("pool", 1) > 1:
        return "pool_parallel"
    if mesh_shape.get("tensor", 1) > 1:
        return "fsdp_tensor"
    if mesh_shape.get("fsdp", 1) > 1:
        return "fsdp"
    return "data_parallel"


def make_rules(preset: str, overrides: list[str] | tuple[str, ...], mesh_shape: dict[str, int]) -> Rules:
    """The preset (or `auto`'s choice) with overrides replacing rules in place or appended."""
    name = choose_preset(mesh_shape) if preset == "auto" else preset
    table = dict(PRESETS[name])
    extra = parse_rule_overrides(overrides)  # already checked by config
    table.update(extra)
    label = name + (" + overrides" if extra else "")
    return Rules(label, tuple(table.items()))
