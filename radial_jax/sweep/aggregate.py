"""Sweep results over seeds: mean and spread per (arm group, budget), and each family's isoFLOP
frontier (the size with the lowest mean eval loss at each training budget).

Pure functions of the per-arm numbers a report reads, so they are checked without training."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


class Measured(Protocol):
    """What aggregation needs of one arm (the report's `ArmResult` has these)."""

    group: str
    family: str
    seed: int | None
    budget: float | None
    budget_label: str
    params: int
    training_flops: float
    inference_flops_per_token: float
    eval_loss: float | None
    inference_loss: float | None
    seconds: float | None


@dataclass(frozen=True)
class GroupStat:
    """One arm group at one budget, over its seeds (n = seeds with an eval loss)."""

    group: str
    family: str
    budget_label: str             # "b1", "b2", ... or "" (the sweep has one budget, or none)
    budget: float | None          # the budget the arms were sized for (training FLOPs or tokens)
    params: int
    seeds: tuple                  # seeds of the arms (None: an arm without a seed)
    n: int
    eval_loss_mean: float | None
    eval_loss_min: float | None
    eval_loss_max: float | None
    training_flops: float         # mean over the arms (equal up to one step's rounding)
    inference_flops_per_token: float
    seconds_mean: float | None    # wall time per arm on the machine that trained it
    seconds_total: float | None
    inference_loss_mean: float | None = None  # eval loss routed as decoding routes; None unless
    inference_loss_min: float | None = None   # every arm of the group has one
    inference_loss_max: float | None = None

    def deployed_loss(self) -> tuple[float | None, bool]:
        """(mean eval loss of the model as it runs at its inference FLOPs, whether that is the
        measured inference-routed loss): the inference loss where measured, else the eval loss."""
        return self.deployed_range()[0], self.inference_loss_mean is not None

    def deployed_range(self) -> tuple[float | None, float | None, float | None]:
        """(mean, min, max) over seeds of that loss."""
        if self.inference_loss_mean is not None:
            return self.inference_loss_mean, self.inference_loss_min, self.inference_loss_max
        return self.eval_loss_mean, self.eval_loss_min, self.eval_loss_max


def _mean(xs: Sequence[float]) -> float | None:
    return statistics.fmean(xs) if xs else None


def aggregate(results: Sequence[Measured]) -> list[GroupStat]:
    """Mean and min-max of the final eval loss over the seeds of each (group, budget), in the
    order the groups first appear."""
    keyed: dict[tuple[str, str], list[Measured]] = {}
    for r in results:
        keyed.setdefault((r.group, r.budget_label), []).append(r)
    out = []
    for (group, label), rs in keyed.items():
        losses = [r.eval_loss for r in rs if r.eval_loss is not None]
        secs = [r.seconds for r in rs if r.seconds is not None]
        inf = [r.inference_loss for r in rs]
        inf = [x for x in inf if x is not None] if all(x is not None for x in inf) else []
        out.append(GroupStat(
            group=group, family=rs[0].family, budget_label=label, budget=rs[0].budget, params=rs[0].params,
            seeds=tuple(r.seed for r in rs), n=len(losses), eval_loss_mean=_mean(losses),
            eval_loss_min=min(losses, default=None), eval_loss_max=max(losses, default=None),
            training_flops=statistics.fmean(r.training_flops for r in rs),
            inference_flops_per_token=statistics.fmean(r.inference_flops_per_token for r in rs),
            seconds_mean=_mean(secs), seconds_total=sum(secs) if secs else None,
            inference_loss_mean=_mean(inf), inference_loss_min=min(inf, default=None),
            inference_loss_max=max(inf, default=None)))
    return out


@dataclass(frozen=True)
class FrontierPoint:
    """A family's best group (lowest mean eval loss, across sizes) at one training budget."""

    family: str
    budget_label: str
    best: GroupStat
    others: tuple[GroupStat, ...]  # the family's other groups at this budget


def frontier(stats: Sequence[GroupStat]) -> list[FrontierPoint]:
    """Per family and budget, the group with the lowest mean eval loss; ordered by family (first
    appearance), then budget (training FLOPs)."""
    cells: dict[tuple[str, str], list[GroupStat]] = {}
    for s in stats:
        if s.eval_loss_mean is not None:
            cells.setdefault((s.family, s.budget_label), []).append(s)
    families = list(dict.fromkeys(s.family for s in stats))
    points = []
    for (family, label), ss in cells.items():
        best = min(ss, key=lambda s: s.eval_loss_mean)
        points.append(FrontierPoint(family, label, best, tuple(s for s in ss if s is not best)))
    return sorted(points, key=lambda p: (families.index(p.family), p.best.budget or p.best.training_flops))


def best_per_budget(stats: Sequence[GroupStat]) -> dict[str, list[GroupStat]]:
    """Budget label -> every group at that budget, lowest mean eval loss first."""
    by_budget: dict[str, list[GroupStat]] = {}
    for s in stats:
        if s.eval_loss_mean is not None:
            by_budget.setdefault(s.budget_label, []).append(s)
    return {b: sorted(ss, key=lambda s: s.eval_loss_mean) for b, ss in by_budget.items()}
