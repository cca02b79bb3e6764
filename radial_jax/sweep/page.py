"""The results page of a sweep report: how to regenerate it, where and when it ran, the verdict, the
comparison at each size and budget, the figures with what they say and do not, and every arm.

Every number and sentence comes from the arms read (nothing is written by hand), so the page can
be regenerated as the sweep grows; while arms are unfinished it says so at the top.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from radial_jax.config import Config
from radial_jax.sweep.aggregate import GroupStat, best_per_budget
from radial_jax.sweep.arms import ArmResult, Unfinished
from radial_jax.sweep.tables import (
    Sizes,
    baseline_of,
    best_lines,
    comparison_table,
    frontier_table,
    markdown_table,
    seeds_table,
    size_name,
    sizes,
    unfinished_table,
    versus_table,
)
from radial_jax.sweep.verdict import Verdict, verdict_lines


@dataclass(frozen=True)
class PageInputs:
    title: str
    description: str                # the sweep file's `description:` ("" if none)
    command: str                    # the command that writes this page again
    results: Sequence[ArmResult]    # finished arms
    stats: Sequence[GroupStat]
    unfinished: Sequence[Unfinished]
    verdict: Verdict
    configs: Sequence[Config]       # of the finished arms: what they share
    figures: dict[str, str]         # name -> link relative to the page
    csv: str                        # link to the per-arm CSV
    planned: dict[str, int] = field(default_factory=dict)  # params of groups with no finished arm


def _distinct(values) -> str:
    return ", ".join(str(v) for v in dict.fromkeys(values)) or "-"


def machine_lines(results: Sequence[ArmResult]) -> list[str]:
    """Report date and machine, the machine(s) the arms trained on, and when they finished."""
    lines = [f"Written {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {platform.platform()}, "
             f"{os.cpu_count()} CPUs."]
    ran = list(dict.fromkeys(r.machine for r in results if r.machine))
    if ran:
        timed = [r.seconds for r in results if r.seconds is not None]
        lines.append(f"Arms trained on: {'; '.join(ran)}. Arm time: wall seconds over every attempt "
                     "at the arm, from its sweep_done.json (CPUs: the cores its process could use); "
                     f"{len(timed)} of {len(results)} arms timed, {sum(timed) / 3600:.2f} h in all.")
    done = sorted(r.finished_at for r in results if r.finished_at)
    if done:
        lines.append(f"Arms finished between {done[0]} and {done[-1]}.")
    return lines


def setup_line(configs: Sequence[Config]) -> str:
    """What the finished arms share (or not): data, tokenizer, batch, optimizer schedule."""
    d = [c.data for c in configs]
    return (f"Data: {_distinct(x.source for x in d)} corpus, {_distinct(x.tokenizer for x in d)} "
            f"tokenizer, {_distinct(x.batch_size for x in d)} x {_distinct(x.seq_len for x in d)} "
            f"tokens per step; optimizer: peak lr {_distinct(c.train.lr for c in configs)}, warmup "
            f"{_distinct(c.train.warmup_steps for c in configs)} steps, cosine to "
            f"{_distinct(c.train.min_lr_ratio for c in configs)} of the peak; seeds "
            f"{_distinct(sorted({c.run.seed for c in configs}))} (run.seed = data.shuffle_seed).")


def says(stats: Sequence[GroupStat], size: Sizes, baseline: str = "dense") -> str:
    """What the figures say, in numbers: the best family at each size and budget, and each family's
    inference FLOPs per token against the baseline's."""
    cells = []
    for lbl, ss in best_per_budget(stats).items():
        for rank in range(size.count):
            here = [s for s in ss if size.rank.get(s.group) == rank]
            if len(here) > 1:
                b, nxt = here[0], here[1]
                cells.append(f"{size_name(rank, size.count)}, {lbl or 'all'}: {b.family} "
                             f"({b.eval_loss_mean:.4f}, {nxt.eval_loss_mean - b.eval_loss_mean:.4f} below "
                             f"{nxt.family})")
    ref = baseline_of(stats, size, baseline)
    fracs: dict[str, list[float]] = {}
    for s in stats:
        d = ref.get((size.rank.get(s.group), s.budget_label))
        if d is not None and s.family != baseline:
            fracs.setdefault(s.family, []).append(s.inference_flops_per_token / d.inference_flops_per_token)
    cost = "; ".join(f"{f} {min(x):.2f}" + (f"-{max(x):.2f}" if max(x) - min(x) >= 0.005 else "") + "x"
                     for f, x in fracs.items())
    out = ("At equal training FLOPs, the lowest mean eval loss: " + "; ".join(cells) + "." if cells else
           "Nothing compared yet: no size and budget has two families finished.")
    if cost:
        out += f" Inference FLOPs per token against {baseline}'s at the same size and budget: {cost}."
    return out


def does_not_say(stats: Sequence[GroupStat], size: Sizes, configs: Sequence[Config], unfinished: int
                 ) -> str:
    """What the figures cannot tell, with the numbers that bound it: seeds, spread, budgets, FLOPs."""
    by_size: dict[str, set[int]] = {}
    for s in sorted(stats, key=lambda s: size.key(s.group)):
        by_size.setdefault(size.name(s.group), set()).add(s.n)
    seeds = [f"{name}: {_distinct(sorted(ns))}" for name, ns in by_size.items()]
    spread = [(s.eval_loss_max - s.eval_loss_min, s) for s in stats if s.n > 1]
    parts = [f"Seeds per group ({'; '.join(seeds)}): the bars are the min-max of those runs, not a "
             "confidence interval, and a single run has no spread at all"]
    if spread:
        w, s = max(spread, key=lambda x: x[0])
        parts[0] += (f"; the widest seed range is {w:.4f} nats ({s.group} at "
                     f"{s.budget_label or 'its budget'}), so smaller gaps are not resolved")
    n_budgets = len({s.budget_label for s in stats})
    parts.append(f"{n_budgets} training budget(s) per size cannot fit a scaling law, nor say where the "
                 "lines cross beyond them")
    parts.append("FLOPs are analytic matmul counts (model/flops.py), not wall-clock time or decode "
                 "latency on any machine")
    parts.append(f"one corpus and tokenizer ({_distinct(c.data.source for c in configs)}, "
                 f"{_distinct(c.data.tokenizer for c in configs)}) and no per-arm tuning: every arm "
                 "keeps its config's optimizer settings")
    if unfinished:
        parts.append(f"{unfinished} unfinished arm(s) are not in it")
    return "; ".join(parts) + "."


NOTES = ("Active FLOPs/token (train): forward + backward as compiled (routed models: the capacity-bound "
         "slots). Inference FLOPs/token: routed models at the depth a token runs when the final "
         "checkpoint is evaluated on the eval split routed as decoding routes (no capacity; a learned "
         "skip predictor, Mixture-of-Depths' causal predictor or Mixture-of-Recursions' router decides), "
         "through model/flops.py; 'eval loss at inference' is that evaluation's loss. 'eval loss' is the "
         "last eval of training (routed models: capacity-bound routing). Step time: median over logged "
         "intervals after the first (compilation). Decode: batch 1, from a decode benchmark JSON in the "
         "arm's folder.")


def render(p: PageInputs) -> str:
    n_all = len(p.results) + len(p.unfinished)
    size = sizes(p.stats, [(u.group, u.family) for u in p.unfinished], p.planned)
    partial = bool(p.unfinished)
    md = [f"# {p.title}" + (" (partial)" if partial else ""), ""]
    if p.description:
        md += [p.description, ""]
    if partial:
        md += [f"**Partial: {len(p.results)} of {n_all} arms finished.** Unfinished arms are listed at the "
               "end and are in no number or figure; the verdict is provisional.", ""]
    md += ["Regenerate this page (it measures new arms' inference depth, cached beside the figures):", "",
           "```bash", p.command, "```", "", *machine_lines(p.results), "", setup_line(p.configs), ""]
    if p.verdict.status != "n/a":
        md += ["## Verdict", "", *verdict_lines(p.verdict), ""]
    md += ["## At each size and budget", "",
           "Mean over seeds at equal training FLOPs (each arm's steps = its budget / its training FLOPs "
           "per token), with the min-max over seeds and n; each family against dense at the same size "
           "and budget.", "", comparison_table(p.stats, size), ""]
    if versus := versus_table(p.stats, size, p.verdict.goal.target):
        md += [f"### {p.verdict.goal.target} against each family", "",
               "Loss as each model runs at inference (routed as decoding routes where measured, as in the "
               "verdict), mean over seeds at equal training FLOPs; 'seed ranges': whether the two min-max "
               "ranges over seeds are apart or overlap (a gap within seed noise).", "", versus, ""]
    figs = {k: v for k, v in p.figures.items() if k in ("frontier", "inference")}
    md += ["## Figures", ""] + [f"![{k}]({v})" for k, v in figs.items()] + [""]
    md += [f"**What they say.** {says(p.stats, size)}", "",
           f"**What they do not say.** {does_not_say(p.stats, size, p.configs, len(p.unfinished))}", ""]
    md += ["## Over seeds and the isoFLOP frontier", "", seeds_table(p.stats), "",
           "At each training budget, the family's size with the lowest mean eval loss:", "",
           frontier_table(p.stats), ""]
    if notes := best_lines(p.stats):
        md += ["Lowest mean eval loss at each training budget:", "", *notes, ""]
    md += ["## Every arm", "", f"Also as CSV: [{p.csv}]({p.csv}).", "", markdown_table(p.results), "",
           NOTES, ""]
    unmeasured = [f"{r.name} ({r.inference_source})" for r in p.results
                  if r.inference_source.startswith("not")]
    if unmeasured:
        md += ["Inference depth not measured: " + "; ".join(unmeasured) + ".", ""]
    md += [f"![{k}]({v})" for k, v in p.figures.items() if k not in figs] + [""]
    if partial:
        md += ["## Unfinished arms", "", unfinished_table(p.unfinished), ""]
    return "\n".join(md)
