"""The names of the logical axes model code puts on arrays and of the device mesh's axes, and the
`logical=mesh_axis` rule overrides a config may give (see parallel/rules.py for how they resolve).

A leaf module: config validates overrides with it and parallel/ builds meshes and rules from it.
"""

from __future__ import annotations

LOGICAL_AXES = ("batch", "length", "embed", "heads", "kv", "mlp", "vocab", "pool", "capacity")
MESH_AXES = ("data", "fsdp", "pool", "tensor")


def parse_rule_overrides(items: list[str] | tuple[str, ...]) -> dict[str, tuple[str, ...]]:
    """["embed=none", "batch=data+fsdp"] -> {"embed": (), "batch": ("data", "fsdp")}; ValueError
    naming the entry otherwise."""
    out = {}
    for item in items:
        logical, sep, target = (part.strip() for part in item.partition("="))
        if not sep or not logical:
            raise ValueError(f"mesh.rules_override entry {item!r} must look like logical=mesh_axis, "
                             "e.g. embed=fsdp, batch=data+fsdp or kv=none")
        if logical not in LOGICAL_AXES:
            raise ValueError(f"mesh.rules_override entry {item!r}: unknown logical axis {logical!r}; "
                             f"choose one of {', '.join(LOGICAL_AXES)}")
        axes = () if target.lower() in ("", "none", "null") else tuple(
            a.strip() for a in target.split("+"))
        bad = [a for a in axes if a not in MESH_AXES]
        if bad:
            raise ValueError(f"mesh.rules_override entry {item!r}: unknown mesh axis {bad[0]!r}; "
                             f"choose from {', '.join(MESH_AXES)} (join several with +) or none")
        out[logical] = axes
    return out
