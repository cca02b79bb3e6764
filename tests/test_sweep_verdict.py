"""The report's verdict on issue 19's goal (radial at or below dense's loss at every budget of the
larger size, at most 0.7x dense's inference FLOPs per token) and its sizes, from hand-made numbers."""

from dataclasses import replace

import pytest

from radial_jax.sweep.aggregate import GroupStat
from radial_jax.sweep.tables import comparison_table, sizes, versus_table
from radial_jax.sweep.verdict import Goal, judge, verdict_lines


def stat(group: str, label: str, loss: float, inference_flops: float, *, params: int,
         inference_loss: float | None = None, family: str | None = None) -> GroupStat:
    return GroupStat(group=group, family=family or group.split("_")[0], budget_label=label,
                     budget={"b1": 3e13, "b2": 1.2e14}[label], params=params, seeds=(0,), n=1,
                     eval_loss_mean=loss, eval_loss_min=loss, eval_loss_max=loss, training_flops=1e13,
                     inference_flops_per_token=inference_flops, seconds_mean=60.0, seconds_total=60.0,
                     inference_loss_mean=inference_loss, inference_loss_min=inference_loss,
                     inference_loss_max=inference_loss)


def sweep(radial_l: dict, dense_l: dict) -> list[GroupStat]:
    """Small and large dense and radial at b1 and b2; the small size is better for radial, so only
    the large one may decide."""
    out = []
    for lbl in ("b1", "b2"):
        out += [stat("dense_s", lbl, 2.0, 100.0, params=3),
                stat("radial_s", lbl, 1.0, 10.0, params=3, inference_loss=1.0)]
        out += [stat("dense_l", lbl, dense_l[lbl], 400.0, params=12),
                stat("radial_l", lbl, 0.0, radial_l[lbl][1], params=12, inference_loss=radial_l[lbl][0])]
    return out


def test_met_when_every_larger_budget_is_at_or_below_dense_within_the_cost():
    stats = sweep({"b1": (2.5, 200.0), "b2": (2.2, 280.0)}, {"b1": 2.5, "b2": 2.3})
    v = judge(stats, [])
    assert (v.status, v.target_group, v.baseline_group, v.unfinished) == ("met", "radial_l", "dense_l", 0)
    assert [c.budget_label for c in v.cells] == ["b1", "b2"]
    assert [c.fraction for c in v.cells] == [0.5, 0.7]  # 0.7x exactly is allowed
    text = "\n".join(verdict_lines(v))
    assert text.startswith("**Verdict: met.**") and "Provisional" not in text
    # the loss compared is the inference-routed one (radial_l's training eval loss, 0.0, is ignored)
    assert "radial_l 2.5000 against dense_l 2.5000 (routed as at inference): +0.0000 nats" in text


def test_not_met_says_by_how_much():
    stats = sweep({"b1": (2.6, 200.0), "b2": (2.2, 320.0)}, {"b1": 2.5, "b2": 2.3})
    v = judge(stats, [])
    assert v.status == "not met"
    lines = verdict_lines(v)
    b1 = next(x for x in lines if x.startswith("- b1"))
    b2 = next(x for x in lines if x.startswith("- b2"))
    assert "not met (loss)" in b1 and "+0.1000 nats (+4.0%)" in b1 and "at 0.50x dense's" in b1
    assert "not met (cost)" in b2 and "at 0.80x" in b2
    by = next(x for x in lines if x.startswith("By how much"))
    assert "radial's loss must fall by 0.1000 nats (4.0%) at b1" in by
    assert "inference FLOPs per token by 12.5% at b2 (0.80x -> 0.70x)" in by  # 1 - 0.7 / 0.8


def test_unfinished_arms_make_it_provisional_or_open():
    stats = sweep({"b1": (2.4, 200.0), "b2": (2.2, 280.0)}, {"b1": 2.5, "b2": 2.3})
    no_b2 = [s for s in stats if not (s.group == "radial_l" and s.budget_label == "b2")]
    v = judge(no_b2, [("radial_l", "radial", "b2"), ("mod_s", "mod", "b1")])
    assert v.status == "open" and v.unfinished == 2 and v.cells[1].target is None
    text = "\n".join(verdict_lines(v))
    assert "Provisional: 2 arm(s)" in text and "1 of 2 budgets of radial_l / dense_l" in text
    assert "- b2 (budget 1.2e+14): not judged yet" in text
    # a miss already measured stays a miss while other arms run
    worse = sweep({"b1": (2.6, 200.0), "b2": (2.2, 280.0)}, {"b1": 2.5, "b2": 2.3})
    assert judge(worse, [("mod_s", "mod", "b1")]).status == "not met"
    # a family group with no finished arm: its size is unknown, nothing is judged
    small_only = [s for s in stats if s.group.endswith("_s")]
    v = judge(small_only, [("radial_l", "radial", "b1"), ("dense_l", "dense", "b1")])
    assert v.status == "open" and v.cells == () and "radial_l has finished" in v.why_open


def test_training_eval_loss_stands_in_where_inference_was_not_measured():
    stats = sweep({"b1": (2.4, 200.0), "b2": (2.2, 280.0)}, {"b1": 2.5, "b2": 2.3})
    stats = [s if s.group != "radial_l" else stat("radial_l", s.budget_label, 2.6, 200.0, params=12)
             for s in stats]
    v = judge(stats, [])
    assert v.status == "not met" and v.cells[0].loss_gap == pytest.approx(0.1)
    assert "(training eval)" in "\n".join(verdict_lines(v))
    v = judge(stats, [], Goal(target="nothing"))
    assert (v.status, v.why_open) == ("n/a", "the sweep has no nothing arm")


def test_sizes_wait_for_every_group_of_a_family():
    stats = sweep({"b1": (2.4, 200.0), "b2": (2.2, 280.0)}, {"b1": 2.5, "b2": 2.3})
    size = sizes(stats)
    assert size.rank == {"dense_s": 0, "radial_s": 0, "dense_l": 1, "radial_l": 1} and size.count == 2
    assert size.name("radial_l") == "larger size"
    rows = comparison_table(stats, size).splitlines()[2:]
    radial_l_b1 = next(r for r in rows if "| radial_l |" in r and "| 3e+13 |" in r)
    assert radial_l_b1.startswith("| larger size |")
    assert radial_l_b1.endswith("| -2.5000 | 2.4000 | 200 | 0.50x |")  # training-eval gap, inference loss
    # dense_s has no finished arm yet: dense_l's size is not known, so nothing is compared with it
    partial = [s for s in stats if s.group != "dense_s"]
    size = sizes(partial, [("dense_s", "dense")])
    assert size.rank["dense_l"] is None and size.rank["radial_l"] == 1
    rows = comparison_table(partial, size).splitlines()[2:]
    assert rows[-1].startswith("| not known yet |") and "| dense_l |" in rows[-1]
    assert all(r.endswith("| - | 2.4000 | 200 | - |") for r in rows if "| radial_l |" in r and "3e+13" in r)


def test_planned_sizes_compare_a_partial_sweep_before_its_larger_arms_finish():
    """Groups with no finished arm are sized from their configs' parameter counts (`planned`), so
    the smaller size is compared and the larger size is judged as soon as its arms finish."""
    stats = sweep({"b1": (2.4, 200.0), "b2": (2.2, 280.0)}, {"b1": 2.5, "b2": 2.3})
    small_only = [s for s in stats if s.group.endswith("_s")]
    pending = [("radial_l", "radial"), ("dense_l", "dense")]
    size = sizes(small_only, pending, {"radial_l": 12, "dense_l": 12})
    assert size.rank == {"dense_s": 0, "radial_s": 0} and size.name("radial_s") == "smaller size"
    rows = comparison_table(small_only, size).splitlines()[2:]
    assert all(r.startswith("| smaller size |") for r in rows)
    # planned counts of a group that is smaller than the finished one reorder the sizes
    assert sizes(small_only, [("radial_t", "radial")], {"radial_t": 1}).rank["radial_s"] == 1
    v = judge(small_only, [("radial_l", "radial", "b1"), ("dense_l", "dense", "b2")],
              planned={"radial_l": 12, "dense_l": 12})
    assert (v.status, v.target_group, v.baseline_group) == ("open", "radial_l", "dense_l")
    assert "2 of 2 budgets of radial_l / dense_l have no finished arms yet" == v.why_open


def test_planned_params_come_from_the_arms_configs(tmp_path):
    from radial_jax.config import load_config
    from radial_jax.sweep.arms import SweepArms, Unfinished, planned_params
    from radial_jax.sweep.cost import count_params

    wide = ["model.d_model=64", "model.n_heads=2", "model.n_kv_heads=1"]
    manifest = {"arms": [{"name": "dense_l_s0_b1", "config": "configs/tiny.yaml", "overrides": wide},
                         {"name": "dense_x_s0_b1", "config": str(tmp_path / "gone.yaml"), "overrides": []}]}
    unfinished = [Unfinished(a["name"], a["name"][:7], "dense", "b1", 0, 10, 0.0, False)
                  for a in manifest["arms"]]
    planned = planned_params(SweepArms([], unfinished, manifest), tmp_path)
    assert planned == {"dense_l": count_params(load_config("configs/tiny.yaml", wide))}


def test_radial_against_each_family_says_who_is_lower_and_whether_seeds_resolve_it():
    def two_seeds(group: str, lbl: str, lo: float, hi: float, flops: float) -> GroupStat:
        s = stat(group, lbl, (lo + hi) / 2, flops, params=3)
        return replace(s, seeds=(0, 1), n=2, eval_loss_min=lo, eval_loss_max=hi)

    stats = [two_seeds("dense_s", "b1", 1.40, 1.46, 100.0), two_seeds("radial_s", "b1", 1.30, 1.35, 50.0),
             two_seeds("mod_s", "b1", 1.33, 1.38, 60.0), stat("radial_s", "b2", 1.2, 50.0, params=3),
             stat("dense_s", "b2", 1.1, 100.0, params=3)]
    rows = versus_table(stats, sizes(stats), "radial").splitlines()[2:]
    cells = [[c.strip() for c in r.strip("|").split("|")] for r in rows]
    assert [(c[1], c[2], c[5], c[6], c[7], c[8]) for c in cells] == [
        ("3e+13", "dense", "-0.1050", "yes", "apart", "0.50x"),
        ("3e+13", "mod", "-0.0300", "yes", "overlap", "0.83x"),
        ("1.2e+14", "dense", "+0.1000", "no", "one seed", "0.50x")]
    assert cells[0][3] == "1.3250 (1.3000-1.3500, n=2)"
    assert versus_table(stats, sizes(stats), "mor") == ""


def test_radial_against_each_family_skips_groups_whose_size_is_not_known_yet():
    stats = [stat("radial_s", "b1", 1.3, 50.0, params=3), stat("dense_l", "b1", 1.4, 400.0, params=12)]
    partial = sizes(stats, pending=[("radial_l", "radial"), ("dense_s", "dense")])
    assert versus_table(stats, partial, "radial") == ""
