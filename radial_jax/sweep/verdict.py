"""The sweep's answer to issue 19's goal, computed from its numbers: is radial at or below dense's
eval loss at every training budget of the larger size, while paying at most 0.7x dense's inference
FLOPs per token? If not, by how much.

The loss compared is each model's loss as it runs at the inference FLOPs it is charged: the eval
loss routed as decoding routes where it was measured (inference.py), else the training eval's. The
larger size is each family's group with the most parameters. Pure functions of the aggregated
numbers and the list of unfinished arms, so they are checked without training.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from radial_jax.sweep.aggregate import GroupStat


@dataclass(frozen=True)
class Goal:
    target: str = "radial"          # family that should win
    baseline: str = "dense"         # family it is compared with
    max_fraction: float = 0.7       # target's inference FLOPs per token / baseline's, at most

    def sentence(self) -> str:
        return (f"{self.target} at or below {self.baseline}'s eval loss at every training budget of the "
                f"larger size, while paying at most {self.max_fraction:.2f}x {self.baseline}'s inference "
                "FLOPs per token")


@dataclass(frozen=True)
class Cell:
    """The larger size at one training budget: the target and baseline groups there, if finished."""

    budget_label: str
    target: GroupStat | None
    baseline: GroupStat | None

    @property
    def judged(self) -> bool:
        return all(s is not None and s.deployed_loss()[0] is not None for s in (self.target, self.baseline))

    @property
    def loss_gap(self) -> float:
        """Target's loss minus baseline's (nats/token; > 0: the target is worse)."""
        return self.target.deployed_loss()[0] - self.baseline.deployed_loss()[0]

    @property
    def fraction(self) -> float:
        return self.target.inference_flops_per_token / self.baseline.inference_flops_per_token

    def met(self, goal: Goal) -> bool:
        return self.loss_gap <= 0 and self.fraction <= goal.max_fraction


@dataclass(frozen=True)
class Verdict:
    goal: Goal
    status: str                     # "met", "not met", "open" (not everything judged yet), or "n/a"
                                    # (the sweep has no arm of the target or baseline family)
    target_group: str | None
    baseline_group: str | None
    cells: tuple[Cell, ...]
    unfinished: int                 # arms of the whole sweep not finished: the verdict is provisional
    why_open: str = ""


def _larger(family: str, stats: Sequence[GroupStat], pending_groups: set[str],
            planned: Mapping[str, int]) -> tuple[str | None, str]:
    """The family's group with the most parameters (finished, or counted from its config in
    `planned`), or (None, why) when a group's parameter count is not known or the sweep has no
    such family."""
    known = {**{g: n for g, n in planned.items() if g in pending_groups},
             **{s.group: s.params for s in stats if s.family == family}}
    unknown = sorted(pending_groups - set(known))
    if unknown:
        return None, f"no arm of {', '.join(unknown)} has finished, so {family}'s larger size is not known"
    if not known:
        return None, f"the sweep has no {family} arm"  # judge turns this into "n/a"
    return max(known, key=known.get), ""


def judge(stats: Sequence[GroupStat], pending: Sequence[tuple[str, str, str]], goal: Goal = Goal(),
          planned: Mapping[str, int] | None = None) -> Verdict:
    """`pending`: (group, family, budget label) of each unfinished arm; `planned`: parameter counts
    of groups without a finished arm (`arms.planned_params`), so the larger size is known early."""
    groups = {}
    why = ""
    for fam in (goal.target, goal.baseline):
        groups[fam], reason = _larger(fam, stats, {g for g, f, _ in pending if f == fam}, planned or {})
        why = why or reason
    if why:
        status = "n/a" if why.startswith("the sweep has no") else "open"
        return Verdict(goal, status, groups[goal.target], groups[goal.baseline], (), len(pending), why)
    tg, bg = groups[goal.target], groups[goal.baseline]
    at = {(s.group, s.budget_label): s for s in stats}
    labels = sorted({lbl for g, lbl in at if g in (tg, bg)} | {lbl for g, _, lbl in pending if g in (tg, bg)},
                    key=lambda x: (len(x), x))
    cells = tuple(Cell(lbl, at.get((tg, lbl)), at.get((bg, lbl))) for lbl in labels)
    judged = [c for c in cells if c.judged]
    if any(not c.met(goal) for c in judged):
        status = "not met"
    elif judged and len(judged) == len(cells):
        status = "met"
    else:
        status = "open"
    why = "" if len(judged) == len(cells) else (
        f"{len(cells) - len(judged)} of {len(cells)} budgets of {tg} / {bg} have no finished arms yet")
    return Verdict(goal, status, tg, bg, cells, len(pending), why)


def _name(c: Cell) -> str:
    return c.budget_label or "its budget"


def _budget(c: Cell) -> str:
    s = c.target or c.baseline
    return f"{_name(c)} (budget {s.budget:.3g})" if s and s.budget else _name(c)


def cell_line(c: Cell, v: Verdict) -> str:
    if not c.judged:
        return f"- {_budget(c)}: not judged yet ({v.target_group} or {v.baseline_group} unfinished)"
    g = v.goal
    (tl, t_inf), (bl, _) = c.target.deployed_loss(), c.baseline.deployed_loss()
    routed = "routed as at inference" if t_inf else "training eval"
    loss = (f"{v.target_group} {tl:.4f} against {v.baseline_group} {bl:.4f} ({routed}): "
            f"{c.loss_gap:+.4f} nats ({c.loss_gap / bl:+.1%})")
    cost = f"at {c.fraction:.2f}x {g.baseline}'s inference FLOPs per token (goal <= {g.max_fraction:.2f}x)"
    misses = [w for w, bad in (("loss", c.loss_gap > 0), ("cost", c.fraction > g.max_fraction)) if bad]
    word = "met" if not misses else f"not met ({' and '.join(misses)})"
    return f"- {_budget(c)}: {word}; {loss}, {cost}"


def verdict_lines(v: Verdict) -> list[str]:
    """Markdown: the verdict, provisional while any arm of the sweep is unfinished, one line per
    budget, and by how much the goal is missed."""
    word = {"met": "met", "not met": "not met", "open": "not decided yet", "n/a": "not applicable"}[v.status]
    head = f"**Verdict: {word}.** Goal: {v.goal.sentence()}."
    if v.unfinished:
        head += (f" Provisional: {v.unfinished} arm(s) of the sweep are unfinished, so any number below "
                 "may change.")
    lines = [head]
    if v.why_open:
        lines.append(f"Not everything can be judged yet: {v.why_open}.")
    if v.cells:
        lines += ["", f"Larger size: {v.target_group} against {v.baseline_group}.", ""]
        lines += [cell_line(c, v) for c in v.cells]
    judged = [c for c in v.cells if c.judged]
    if judged and v.status == "not met":
        gap = max(judged, key=lambda c: c.loss_gap / c.baseline.deployed_loss()[0])
        frac = max(judged, key=lambda c: c.fraction)
        need = []
        if gap.loss_gap > 0:
            need.append(f"{v.goal.target}'s loss must fall by {gap.loss_gap:.4f} nats "
                        f"({gap.loss_gap / gap.baseline.deployed_loss()[0]:.1%}) at {_name(gap)}")
        if frac.fraction > v.goal.max_fraction:
            cut = 1 - v.goal.max_fraction / frac.fraction
            need.append(f"{v.goal.target}'s inference FLOPs per token by {cut:.1%} at {_name(frac)} "
                        f"({frac.fraction:.2f}x -> {v.goal.max_fraction:.2f}x)")
        lines += ["", "By how much: to meet the goal, " + "; ".join(need) + "."]
    return lines
