"""Collectives of a compiled (SPMD-partitioned, per-device) HLO program, from its text.

Counted per kind: every synchronous collective instruction and every asynchronous `-start` (its
`-done` is the same transfer). The TPU compiler writes a reduce-scatter as an all-reduce followed by a
slice, inside a computation named `all-reduce-scatter`: those count as reduce-scatters. An
instruction's `bytes` is the largest buffer it touches on one device: the gathered result of an
all-gather, the whole unreduced buffer of a reduce-scatter, the operand of the others. `wire_bytes`
estimates what one device sends over a ring: (G-1)/G of the buffer, twice for an all-reduce
(reduce-scatter + all-gather), once for a collective-permute. A collective inside a while loop
(a scan: `model.scan_layers`) counts as many times as the loop runs: the trip count the compiler
states (`known_trip_count`), else the bound of a scan-shaped condition (`counter < N`, the counter
being the loop state's element 0, as `lax.scan` and `lax.fori_loop(0, N)` lower; libtpu states no
trip counts), else once. The `times` of each instruction says how often it ran per step.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

KINDS = ("all-gather", "reduce-scatter", "all-reduce", "all-to-all", "collective-permute")
_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4, "u32": 4,
                "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16, "f8e4m3fn": 1, "f8e5m2": 1}
_OP = re.compile(r"=\s*(?P<result>.*?)\s(?P<op>" + "|".join(KINDS) + r")(?P<start>-start)?\(")
_COMPUTATION = re.compile(r"^(?:ENTRY\s+)?%(?P<name>[\w.-]+)\s")
_SHAPE = re.compile(r"\b([a-z][a-z0-9]*)\[([0-9,]*)\]")
_GROUPS_IOTA = re.compile(r"replica_groups=\[(\d+),(\d+)\]")
_GROUPS_LIST = re.compile(r"replica_groups=\{\{([0-9,]*)\}")
_GROUPS_MESH = re.compile(r"replica_groups=mesh\[([^\]]*)\]\s*\{([^}]*)\}")
_REF = re.compile(r"%([\w.-]+)")
_BODY = re.compile(r"\bbody=%([\w.-]+)")
_TRIPS = re.compile(r'"known_trip_count":\{"n":"(\d+)"')
_CONDITION = re.compile(r"\bcondition=%([\w.-]+)")
_LESS_THAN = re.compile(r"ROOT\s.*\scompare\(%([\w.-]+), %([\w.-]+)\), direction=LT\b")

@dataclass
class Collective:
    kind: str
    bytes: int
    group: int
    shape: str  # the first operand's type, e.g. bf16[20,2048,16,128]
    times: int = 1  # runs per step: the trip counts of the while loops around it

    @property
    def wire_bytes(self) -> float:
        """What one device sends per run of the instruction (ring estimate)."""
        share = (self.group - 1) / max(self.group, 1)
        if self.kind == "all-reduce":
            return 2 * share * self.bytes
        if self.kind == "collective-permute":
            return float(self.bytes)
        return share * self.bytes


@dataclass
class CollectiveSummary:
    ops: list[Collective] = field(default_factory=list)

    def by_kind(self) -> dict[str, dict]:
        out = {k: {"count": 0, "bytes": 0, "wire_bytes": 0.0} for k in KINDS}
        for c in self.ops:
            row = out[c.kind]
            row["count"] += c.times
            row["bytes"] += c.bytes * c.times
            row["wire_bytes"] += c.wire_bytes * c.times
        return out

    @property
    def total_bytes(self) -> int:
        return sum(c.bytes * c.times for c in self.ops)

    @property
    def wire_bytes(self) -> float:
        return sum(c.wire_bytes * c.times for c in self.ops)

    def largest(self, n: int = 10) -> list[dict]:
        """The `n` (kind, operand type) pairs moving the most bytes, with their counts."""
        agg: dict[tuple, list] = {}
        for c in self.ops:
            row = agg.setdefault((c.kind, c.shape), [0, 0])
            row[0] += c.times
            row[1] += c.bytes * c.times
        top = sorted(agg.items(), key=lambda kv: -kv[1][1])[:n]
        return [{"kind": k, "operand": s, "count": n_, "bytes": b} for (k, s), (n_, b) in top]


def _array_bytes(text: str) -> list[tuple[str, int]]:
    out = []
    for dtype, dims in _SHAPE.findall(text):
        if dtype not in _DTYPE_BYTES:
            continue
        n = int(np.prod([int(d) for d in dims.split(",") if d])) if dims else 1
        out.append((f"{dtype}[{dims}]", n * _DTYPE_BYTES[dtype]))
    return out


def _group_size(line: str, n_devices: int) -> int:
    if m := _GROUPS_MESH.search(line):  # mesh['axis_0'=4,'axis_1'=1] {'axis_0'}
        sizes = dict(re.findall(r"'([^']+)'=(\d+)", m.group(1)))
        return int(np.prod([int(sizes[a]) for a in re.findall(r"'([^']+)'", m.group(2)) if a in sizes]))
    if m := _GROUPS_IOTA.search(line):
        return int(m.group(2))
    if m := _GROUPS_LIST.search(line):
        return len([x for x in m.group(1).split(",") if x])
    return n_devices


def _bytes(kind: str, start: bool, arrays: list[int], group: int) -> int:
    """One device's largest buffer of the collective, from its result type."""
    if start and kind in ("all-gather", "collective-permute"):  # (operands..., outputs..., [u32 flags])
        half = len(arrays) // 2 if kind == "all-gather" else 1
        return sum(arrays[half:]) if kind == "all-gather" else arrays[0]
    if kind == "reduce-scatter":
        return sum(arrays) * group
    return sum(arrays)


def _split_computations(hlo_text: str) -> tuple[dict[str, list[str]], str]:
    """{computation name: its lines} and the entry computation's name."""
    comps: dict[str, list[str]] = {}
    lines: list[str] = []
    entry = ""
    for line in hlo_text.splitlines():
        if c := _COMPUTATION.match(line):
            lines = comps.setdefault(c.group("name"), [])
            entry = c.group("name") if line.startswith("ENTRY") else entry
            continue
        lines.append(line)
    return comps, entry


def _loop_trips(while_line: str, comps: dict[str, list[str]]) -> int:
    """Runs of a while loop's body: the stated trip count, else N from a condition `counter < N`
    whose counter is element 0 of the loop state and N a constant, else 1."""
    if stated := _TRIPS.search(while_line):
        return int(stated.group(1))
    condition = _CONDITION.search(while_line)
    lines = comps.get(condition.group(1), []) if condition else []
    root = next((m for line in lines if (m := _LESS_THAN.search(line))), None)
    if root is None:
        return 1
    defs = {m.group(1): line for line in lines if (m := re.match(r"\s*(?:ROOT\s+)?%([\w.-]+)\s*=", line))}
    counter, bound = defs.get(root.group(1), ""), defs.get(root.group(2), "")
    limit = re.search(r"\sconstant\((\d+)\)", bound)
    if "get-tuple-element(" in counter and re.search(r"index=0\b", counter) and limit:
        return int(limit.group(1))
    return 1


def run_counts(comps: dict[str, list[str]], entry: str) -> dict[str, int]:
    """How many times each computation runs per execution of `entry`: a while loop's body runs its
    trip count (`_loop_trips`) times per run of the loop, every other
    computation a line refers to (fusions, calls, branches, reductions) once per run of that line."""
    callees: dict[str, list[tuple[str, int]]] = {}
    for name, lines in comps.items():
        edges = callees.setdefault(name, [])
        for line in lines:
            body = _BODY.search(line)
            trips = _loop_trips(line, comps) if body else 1
            for ref in _REF.findall(line.split("=", 1)[1] if "=" in line else line):
                if ref in comps and ref != name:
                    edges.append((ref, trips if body and ref == body.group(1) else 1))
    order, seen = [], set()

    def visit(name: str) -> None:  # depth-first post-order: callers after their callees
        if name in seen:
            return
        seen.add(name)
        for callee, _ in callees.get(name, []):
            visit(callee)
        order.append(name)

    visit(entry)
    counts = dict.fromkeys(order, 0)
    counts[entry] = 1
    for name in reversed(order):  # every caller before its callees
        for callee, k in callees.get(name, []):
            counts[callee] += counts[name] * k
    return counts


def parse_collectives(hlo_text: str, n_devices: int) -> CollectiveSummary:
    summary = CollectiveSummary()
    comps, entry = _split_computations(hlo_text)
    counts = run_counts(comps, entry) if entry else {}
    for computation, lines in comps.items():
        for c in _collectives(computation, lines, n_devices):
            c.times = counts.get(computation, 1)
            summary.ops.append(c)
    return summary


def _collectives(computation: str, lines: list[str], n_devices: int) -> list[Collective]:
    out: list[Collective] = []
    for line in lines:
        m = _OP.search(line)
        if not m:
            continue
        kind, start = m.group("op"), bool(m.group("start"))
        arrays = _array_bytes(m.group("result"))
        if not arrays:
            continue
        if kind == "all-reduce" and computation.startswith("all-reduce-scatter"):
            kind = "reduce-scatter"  # all-reduce + slice: the result is the whole buffer already
            group = _group_size(line, n_devices)
            out.append(Collective(kind, sum(b for _, b in arrays), group, arrays[0][0]))
            continue
        group = _group_size(line, n_devices)
        nbytes = _bytes(kind, start, [b for _, b in arrays], group)
        out.append(Collective(kind, nbytes, group, arrays[0][0]))
    return out
