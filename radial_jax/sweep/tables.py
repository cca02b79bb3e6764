"""The Markdown tables of a sweep report: per arm, per arm group over seeds, each family's isoFLOP
frontier, and the comparison at each size and budget (every family against dense)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from radial_jax.markdown import table
from radial_jax.sweep.aggregate import GroupStat, best_per_budget, frontier
from radial_jax.sweep.arms import ArmResult, Unfinished
from radial_jax.sweep.cost import short

COLUMNS = [  # (header, field, format)
    ("arm", "name", str), ("params", "params", lambda v: f"{v:,}"),
    ("active FLOPs/token (train)", "train_flops_per_token", short),
    ("inference FLOPs/token", "inference_flops_per_token", short),
    ("training FLOPs", "training_flops", lambda v: f"{v:.3g}"), ("tokens", "tokens", short),
    ("eval loss", "eval_loss", lambda v: f"{v:.4f}"), ("bits/byte", "bits_per_byte", lambda v: f"{v:.4f}"),
    ("mean active depth (train)", "active_depth", lambda v: f"{v:.2f}"),
    ("depth at inference", "inference_depth", lambda v: f"{v:.2f}"),
    ("eval loss at inference", "inference_loss", lambda v: f"{v:.4f}"),
    ("step time (s)", "step_time_s", lambda v: f"{v:.3f}"),
    ("arm time (min)", "seconds", lambda v: f"{v / 60:.1f}"), ("CPUs", "cpus", str),
    ("decode ms/token", "decode_ms_per_token", lambda v: f"{v:.3f}"),
]


def markdown_table(results: Sequence[ArmResult]) -> str:
    rows = [[fmt(getattr(r, f)) if getattr(r, f) is not None else "-" for _, f, fmt in COLUMNS]
            for r in results]
    return "\n".join(table([h for h, _, _ in COLUMNS], rows))


def unfinished_table(arms: Sequence[Unfinished]) -> str:
    rows = [[a.name, a.status(), f"{a.seconds / 60:.1f}" if a.seconds else "-"] for a in arms]
    return "\n".join(table(["arm", "status", "stopped attempts (min)"], rows))


def label(s: GroupStat) -> str:
    """group_bN: an arm's name without its seed."""
    return "_".join(x for x in (s.group, s.budget_label) if x)


def spread(mean: float | None, lo: float | None, hi: float | None, n: int) -> str:
    if mean is None:
        return "-"
    if n < 2:
        return f"{mean:.4f}"
    return f"{mean:.4f} ({lo:.4f}-{hi:.4f}, n={n})"


def loss_spread(s: GroupStat) -> str:
    return spread(s.eval_loss_mean, s.eval_loss_min, s.eval_loss_max, s.n)


def budget(s: GroupStat) -> str:
    return f"{s.budget:.3g}" if s.budget is not None else f"{s.training_flops:.3g} (spent)"


def best_lines(stats: Sequence[GroupStat]) -> list[str]:
    """For each training budget (or all arms when there is one): which group reached the lowest
    mean eval loss, and at what inference cost."""
    lines = []
    for lbl, ss in best_per_budget(stats).items():
        if len(ss) < 2:
            continue
        best, others = ss[0], ss[1:]
        rest = ", ".join(f"{label(s)} {loss_spread(s)} ({short(s.inference_flops_per_token)})"
                         for s in others)
        lines.append(f"- {'budget ' + budget(best) if lbl else 'all arms'}: lowest mean eval loss "
                     f"{label(best)} ({loss_spread(best)} at {best.training_flops:.3g} training FLOPs, "
                     f"{short(best.inference_flops_per_token)} inference FLOPs/token); {rest}")
    return lines


def seeds_table(stats: Sequence[GroupStat]) -> str:
    rows = []
    for s in stats:
        seeds = ", ".join("-" if x is None else str(x) for x in s.seeds)
        time_ = "-" if s.seconds_mean is None else f"{s.seconds_mean / 60:.1f} / {s.seconds_total / 60:.1f}"
        rows.append([label(s), s.family, budget(s), f"{s.params:,}", seeds, loss_spread(s),
                     f"{s.training_flops:.3g}", short(s.inference_flops_per_token), time_])
    return "\n".join(table(["arm group", "family", "budget", "params", "seeds",
                            "eval loss: mean (min-max, n)", "training FLOPs", "inference FLOPs/token",
                            "arm time (min): mean / total"], rows))


def frontier_table(stats: Sequence[GroupStat]) -> str:
    rows = []
    for p in frontier(stats):
        b = p.best
        others = ", ".join(f"{s.group} {s.eval_loss_mean:.4f}" for s in p.others) or "-"
        rows.append([p.family, budget(b), loss_spread(b), b.group, f"{b.params:,}",
                     short(b.inference_flops_per_token), others])
    return "\n".join(table(["family", "budget", "lowest mean eval loss (min-max, n)", "from", "params",
                            "inference FLOPs/token", "the family's other sizes"], rows))


@dataclass(frozen=True)
class Sizes:
    """Each group's size within its family (0: fewest parameters); None while the parameter count
    of a group of its family is not known (no finished arm and no readable config), since then the
    family's order of sizes is not known yet."""

    rank: dict[str, int | None]
    count: int  # sizes per family: the most groups any family has

    def name(self, group: str) -> str:
        r = self.rank.get(group)
        return "not known yet" if r is None else size_name(r, self.count)

    def key(self, group: str) -> int:
        """For sorting: unknown sizes last."""
        r = self.rank.get(group)
        return self.count if r is None else r


def sizes(stats: Sequence[GroupStat], pending: Sequence[tuple[str, str]] = (),
          planned: Mapping[str, int] | None = None) -> Sizes:
    """The sizes of the finished groups; `pending`: (group, family) of unfinished arms; `planned`:
    parameter counts of groups without a finished arm (`arms.planned_params`)."""
    params = {**(planned or {}), **{s.group: s.params for s in stats}}
    groups: dict[str, set[str]] = {}
    for g, f in [*((s.group, s.family) for s in stats), *pending]:
        groups.setdefault(f, set()).add(g)
    rank: dict[str, int | None] = {}
    finished = {s.group for s in stats}
    for all_groups in groups.values():
        complete = all(g in params for g in all_groups)
        known = sorted((params[g], g) for g in all_groups if g in params)
        rank.update({g: i if complete else None for i, (_, g) in enumerate(known) if g in finished})
    return Sizes(rank, max((len(g) for g in groups.values()), default=1))


def size_name(rank: int, n_sizes: int) -> str:
    """'smaller size' / 'larger size' of two; 'one size'; 'size 1', 'size 2', ... of more."""
    named = {(0, 1): "one size", (0, 2): "smaller size", (1, 2): "larger size"}
    return named.get((rank, n_sizes), f"size {rank + 1}")


def baseline_of(stats: Sequence[GroupStat], size: Sizes, baseline: str) -> dict[tuple[int, str], GroupStat]:
    """(size rank, budget label) -> the baseline family's group there (known sizes only)."""
    return {(size.rank[s.group], s.budget_label): s for s in stats
            if s.family == baseline and size.rank.get(s.group) is not None}


def comparison_table(stats: Sequence[GroupStat], size: Sizes, baseline: str = "dense") -> str:
    """At each size and budget, every family: mean eval loss over seeds (min-max), its gap to the
    baseline family's, the loss routed as at inference, and inference FLOPs per token as a fraction
    of the baseline's."""
    ref = baseline_of(stats, size, baseline)
    families = list(dict.fromkeys(s.family for s in stats))
    order = sorted(stats, key=lambda s: (size.key(s.group), s.budget or s.training_flops,
                                         families.index(s.family)))
    rows = []
    for s in order:
        d = ref.get((size.rank.get(s.group), s.budget_label))
        gap = "-" if d is None or d.eval_loss_mean is None or s.eval_loss_mean is None else (
            f"{s.eval_loss_mean - d.eval_loss_mean:+.4f}")
        inf = spread(s.inference_loss_mean, s.inference_loss_min, s.inference_loss_max, s.n)
        frac = "-" if d is None else f"{s.inference_flops_per_token / d.inference_flops_per_token:.2f}x"
        rows.append([size.name(s.group), budget(s), s.family, s.group, f"{s.params:,}",
                     f"{s.training_flops:.3g}", loss_spread(s), gap, inf,
                     short(s.inference_flops_per_token), frac])
    return "\n".join(table(["size", "budget", "family", "group", "params", "training FLOPs (spent)",
                            "eval loss: mean (min-max, n)", f"vs {baseline}", "eval loss at inference",
                            "inference FLOPs/token", f"x {baseline}"], rows))


def seed_ranges(a: GroupStat, b: GroupStat) -> str:
    """'apart' when the two groups' min-max ranges over seeds do not touch, 'overlap' when they do
    (the gap is within seed noise), 'one seed' when either group has fewer than two."""
    if min(a.n, b.n) < 2:
        return "one seed"
    (_, alo, ahi), (_, blo, bhi) = a.deployed_range(), b.deployed_range()
    return "apart" if ahi < blo or bhi < alo else "overlap"


def versus_table(stats: Sequence[GroupStat], size: Sizes, family: str) -> str:
    """`family` against every other family at each size and budget: mean loss as run at inference
    (with the min-max over seeds), the gap, whether the seed ranges are apart, and the ratio of
    inference FLOPs per token. Known sizes only, so no group is set against another size's; empty
    when the family has no such group."""
    known = [s for s in stats if size.rank.get(s.group) is not None]
    at: dict[tuple[int, str], list[GroupStat]] = {}
    for s in known:
        at.setdefault((size.rank[s.group], s.budget_label), []).append(s)
    rows = []
    for s in sorted((s for s in known if s.family == family),
                    key=lambda s: (size.key(s.group), s.budget or s.training_flops)):
        mine = s.deployed_range()
        for o in at[(size.rank[s.group], s.budget_label)]:
            theirs = o.deployed_range()
            if o.family == family or mine[0] is None or theirs[0] is None:
                continue
            rows.append([size.name(s.group), budget(s), o.family, spread(*mine, s.n), spread(*theirs, o.n),
                         f"{mine[0] - theirs[0]:+.4f}", "yes" if mine[0] < theirs[0] else "no",
                         seed_ranges(s, o),
                         f"{s.inference_flops_per_token / o.inference_flops_per_token:.2f}x"])
    if not rows:
        return ""
    return "\n".join(table(["size", "budget", "against", f"{family}: mean (min-max, n)",
                            "theirs: mean (min-max, n)", f"{family} - theirs", f"{family} lower",
                            "seed ranges", "inference FLOPs/token, ratio"], rows))
