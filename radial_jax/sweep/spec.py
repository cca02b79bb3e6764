"""Sweep files: which arms to train, and how many steps each gets from a compute budget.

A sweep file names a base config, overrides for every arm (`set:`), named arms (`arms:`, each with
an optional own `config:` and `set:`), a `grid:` of key -> values (crossed with the arms), and an
optional `budget:` of training FLOPs or tokens per arm (one arm per budget value), and optional
`seeds:` (top level, or per arm; one arm per seed, setting every seed key). With a FLOPs budget an
arm's steps follow from its compiled FLOPs per token (isoFLOP: a model that costs half as much per
token trains on twice the tokens). An arm's `family:` groups arms of one model at several sizes,
so a report can draw one isoFLOP frontier per family. Every arm's config is loaded and validated
here, so a typo fails before anything trains, with the file, the arm and the key in the message.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from radial_jax.config import Config, ConfigError, build_checked, load_config
from radial_jax.model.flops import flops_per_token

SET_BY_SWEEP = {"run.dir": "the sweep puts each arm in OUT/<arm name>"}
SEED_KEYS = ("run.seed", "data.shuffle_seed")  # what `seeds:` sets: parameter init and data order
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+=-]*$")


class SweepError(ConfigError):
    """A sweep file problem; the message names the file, the arm or key, and the fix."""


@dataclass(frozen=True)
class Arm:
    """One run of a sweep: a config file plus overrides (run.dir excluded; the sweep sets it)."""

    name: str
    group: str                    # the name without budget and seed suffixes (same model and settings)
    config: Path
    overrides: tuple[str, ...]
    steps: int
    budget: float | None = None   # training FLOPs or tokens this arm was sized for
    budget_kind: str | None = None
    seed: int | None = None       # the value of every SEED_KEYS entry, when the sweep has seeds:
    family: str = ""              # groups of one model at several sizes (default: the group)

    def load(self, out: str | Path) -> Config:
        return load_config(self.config, [*self.overrides, f"run.dir={Path(out) / self.name}"])


@dataclass(frozen=True)
class Sweep:
    path: Path
    arms: tuple[Arm, ...]

    @property
    def default_out(self) -> Path:
        return Path("runs/sweeps") / self.path.stem


# --------------------------------------------------------------------------- isoFLOP arithmetic


def step_flops(cfg: Config) -> float:
    """Training FLOPs of one optimizer step, as compiled: per-token cost x batch x sequence."""
    return flops_per_token(cfg).train * cfg.data.batch_size * cfg.data.seq_len


def steps_for_budget(cfg: Config, *, train_flops: float | None = None, tokens: float | None = None) -> int:
    """floor(budget / cost of one step); 0 when the budget does not cover a single step."""
    if (train_flops is None) == (tokens is None):
        raise ValueError("give exactly one of train_flops and tokens")
    if train_flops is not None:
        return math.floor(train_flops / step_flops(cfg))
    return math.floor(tokens / (cfg.data.batch_size * cfg.data.seq_len))


# --------------------------------------------------------------------------- the file's schema
# Checked by the config's own machinery (`build_checked`), so a typo reads as it does in a config.
# A key left out (or left empty) is None.


def _entry(help: str, **bounds: float | bool) -> Any:
    return field(default=None, metadata={"help": help, **bounds})


@dataclass(frozen=True)
class BudgetSpec:
    train_flops: list[float] = _entry("training FLOPs of each arm: a number, or a list (an arm per value)",
                                    lo=0.0, lo_open=True)
    tokens: list[float] = _entry("training tokens of each arm: a number, or a list (an arm per value)",
                               lo=0.0, lo_open=True)


@dataclass(frozen=True)
class ArmSpec:
    name: str = _entry("folder-safe arm name, unique in the sweep")
    config: str = _entry("this arm's config file, relative to the sweep file (default: base)")
    set: dict = _entry("this arm's overrides, section.key: value")
    seeds: list[int] = _entry("this arm's seeds, replacing the sweep's seeds:", lo=0)
    family: str = _entry("the model family of this arm in reports (default: its name and grid values)")


@dataclass(frozen=True)
class SweepSpec:
    description: str = _entry("what the sweep compares")
    base: str = _entry("the config every arm starts from, relative to the sweep file")
    set: dict = _entry("overrides for every arm, section.key: value")
    arms: list[ArmSpec] = _entry("named arms, each with an optional config: and set:")
    grid: dict = _entry("section.key: [values], crossed with the arms")
    budget: BudgetSpec = _entry("train_flops: or tokens: per arm; sets each arm's train.steps")
    evals: int = _entry("eval points per arm; sets each arm's train.eval_every", lo=1)
    seeds: list[int] = _entry("an arm per seed; sets run.seed and data.shuffle_seed", lo=0)


def _given(block: Any) -> Any:
    """A mapping without its empty (None) entries."""
    return {k: v for k, v in block.items() if v is not None} if isinstance(block, dict) else block


def read_spec(path: Path) -> SweepSpec:
    """The sweep file's contents, checked for unknown keys, types and ranges."""
    if not path.is_file():
        raise SweepError(f"sweep file not found: {path}")
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise SweepError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(doc, dict) or not doc:
        raise SweepError(f"{path}: a sweep file must be a mapping with base:, arms: and/or grid:")
    doc = _given(doc)
    if isinstance(doc.get("arms"), list):
        doc["arms"] = [_given(arm) for arm in doc["arms"]]
    try:
        return build_checked(SweepSpec, doc, str(path))
    except ConfigError as e:
        raise SweepError(str(e)) from None


# --------------------------------------------------------------------------- parsing


def _override(key: str, value: Any) -> str:
    """`model.pool_size`, 4 -> "model.pool_size=4" (values written so the override parser reads them
    back as the same YAML value)."""
    if isinstance(value, str) and yaml.safe_load(value) == value:
        return f"{key}={value}"
    return f"{key}={json.dumps(value)}"


def _settings(where: str, block: dict | None) -> list[tuple[str, Any]]:
    """A `set:` mapping of section.key -> value, checked for keys the sweep owns (the arm's config
    checks the rest)."""
    if block is None:
        return []
    for key in block:
        if not isinstance(key, str) or key.count(".") != 1 or not all(key.split(".")):
            raise SweepError(f"{where}: key {key!r} must look like section.key, e.g. model.pool_size")
        if key in SET_BY_SWEEP:
            raise SweepError(f"{where}: {key} cannot be set in a sweep; {SET_BY_SWEEP[key]}")
    return list(block.items())


def _label(value: Any) -> str:
    text = "+".join(map(str, value)) if isinstance(value, list) else str(value)
    return re.sub(r"[^A-Za-z0-9.+-]", "", text) or "x"


def _grid(src: str, grid: dict | None) -> list[tuple[str, list[tuple[str, Any]]]]:
    """The cartesian product of the grid as (name suffix, [(key, value), ...]) rows."""
    if grid is None:
        return [("", [])]
    if not grid:
        raise SweepError(f"{src}: grid is empty; give it section.key: [values, ...] entries, e.g. "
                         "model.capacity_factor: [0.5, 1.0]")
    _settings(f"{src}: grid", grid)
    for key, values in grid.items():
        if not isinstance(values, list):
            raise SweepError(f"{src}: grid.{key} must be a list of values, got {values!r} (for one "
                             "value for every arm use set:)")
        if not values:
            raise SweepError(f"{src}: grid.{key} is an empty list; give at least one value")
    rows = []
    for combo in itertools.product(*grid.values()):
        pairs = list(zip(grid, combo, strict=True))
        rows.append(("_".join(f"{k.split('.')[1]}-{_label(v)}" for k, v in pairs), pairs))
    return rows


def _budgets(src: str, budget: BudgetSpec | None) -> tuple[str | None, list[float | None]]:
    if budget is None:
        return None, [None]
    given = [f.name for f in fields(budget) if getattr(budget, f.name) is not None]
    if len(given) != 1:
        raise SweepError(f"{src}: budget needs exactly one of train_flops: and tokens: (got "
                         f"{', '.join(given) or 'neither'})")
    kind = given[0]
    values = getattr(budget, kind)
    if not values:
        raise SweepError(f"{src}: budget.{kind} is an empty list; give at least one value")
    return kind, values


def _relative(sweep_file: Path, ref: str) -> Path:
    """A config path written in the sweep file, relative to it: `../tiny.yaml` in
    configs/sweeps/x.yaml -> configs/tiny.yaml."""
    return Path(os.path.normpath(sweep_file.parent / ref))


def _seeds(where: str, seeds: list[int] | None) -> list[int | None]:
    if seeds is None:
        return [None]
    if not seeds:
        raise SweepError(f"{where} is an empty list; give at least one seed, e.g. [0, 1]")
    if len(set(seeds)) != len(seeds):
        raise SweepError(f"{where}={seeds} repeats a seed; give each seed once")
    return list(seeds)


@dataclass(frozen=True)
class _ArmEntry:
    name: str
    config: Path
    settings: list
    seeds: list[int | None]
    family: str | None


def _arm_specs(src: str, spec: SweepSpec, base: Path | None, sweep_file: Path) -> list[_ArmEntry]:
    """Each `arms:` entry (its seeds: the arm's own, else the sweep's), or one unnamed arm from
    `base`."""
    arms, seeds = spec.arms, _seeds(f"{src}: seeds", spec.seeds)
    if arms is None:
        if base is None:
            raise SweepError(f"{src}: needs base: (the config every arm starts from) or arms: with a "
                             "config: each")
        return [_ArmEntry("", base, [], seeds, None)]
    if not arms:
        raise SweepError(f"{src}: arms is empty; give a list of {{name: ..., set: {{...}}}} entries")
    out, seen = [], set()
    for i, arm in enumerate(arms):
        name = arm.name
        if name is None or not _SAFE_NAME.match(name):
            raise SweepError(f"{src}: arms[{i}].name={name!r} must be a folder-safe name (letters, "
                             "digits, . _ + = -)")
        if name in seen:
            raise SweepError(f"{src}: two arms are named {name!r}; arm names must be unique")
        seen.add(name)
        config = base
        if arm.config is not None:
            config = _relative(sweep_file, arm.config)
            if not config.is_file():
                raise SweepError(f"{src}: arm {name!r}: config not found: {config}")
        if config is None:
            raise SweepError(f"{src}: arm {name!r} has no config: and the sweep has no base:")
        if arm.family is not None and not _SAFE_NAME.match(arm.family):
            raise SweepError(f"{src}: arm {name!r}: family={arm.family!r} must be a folder-safe name "
                             "(letters, digits, . _ + = -)")
        own = seeds if arm.seeds is None else _seeds(f"{src}: arm {name!r}: seeds", arm.seeds)
        out.append(_ArmEntry(name, config, _settings(f"{src}: arm {name!r}: set", arm.set), own,
                             arm.family))
    return out


def _load(src: str, name: str, config: Path, overrides: list[str]) -> Config:
    """The arm's validated config; a config error is re-raised naming the sweep file and arm."""
    try:
        return load_config(config, overrides)
    except ConfigError as e:
        msg = str(e).removeprefix("command line: ")
        raise SweepError(f"{src}: arm {name!r}: {msg}") from None


def _too_small(src: str, name: str, kind: str, budget: float, cfg: Config) -> SweepError:
    rows = f"batch {cfg.data.batch_size} x seq_len {cfg.data.seq_len}"
    if kind == "train_flops":
        need = (f"{step_flops(cfg):.4g} FLOPs ({flops_per_token(cfg).train:.4g} training FLOPs per token "
                f"x {rows})")
    else:
        need = f"{cfg.data.batch_size * cfg.data.seq_len} tokens ({rows})"
    return SweepError(f"{src}: budget.{kind}={budget:.4g} is too small for arm {name!r}: one training "
                      f"step needs {need}")


def _join(*parts: str) -> str:
    return "_".join(p for p in parts if p)


def load_sweep(path: str | Path) -> Sweep:
    """Parse and validate a sweep file; every arm's config is loaded (so checked) and sized."""
    path = Path(path)
    src = str(path)
    spec = read_spec(path)
    base = None
    if spec.base is not None:
        base = _relative(path, spec.base)
        if not base.is_file():
            raise SweepError(f"{src}: base config not found: {base} (paths are relative to the sweep "
                             "file)")
    common = _settings(f"{src}: set", spec.set)
    specs = _arm_specs(src, spec, base, path)
    grid = _grid(src, spec.grid)
    kind, budgets = _budgets(src, spec.budget)
    evals = spec.evals
    keys = {k for k, _ in common} | {k for s in specs for k, _ in s.settings} | {k for _, g in grid
                                                                                   for k, _ in g}
    seeded = [k for k in SEED_KEYS if k in keys]
    if seeded and any(s != [None] for s in (e.seeds for e in specs)):
        raise SweepError(f"{src}: {seeded[0]} cannot be set in a sweep with seeds: (each seed sets "
                         f"{' and '.join(SEED_KEYS)})")
    if kind and "train.steps" in keys:
        raise SweepError(f"{src}: train.steps cannot be set in a sweep with a budget: (the budget "
                         "sets each arm's steps)")
    if evals and "train.eval_every" in keys:
        raise SweepError(f"{src}: train.eval_every cannot be set with evals: (evals sets it per arm)")

    arms = []
    for entry, (suffix, pairs), seed in ((e, g, s) for e, g in itertools.product(specs, grid)
                                         for s in e.seeds):
        config = entry.config
        group = _join(entry.name, suffix) or config.stem
        seed_set = [(k, seed) for k in SEED_KEYS] if seed is not None else []
        overrides = [_override(k, v) for k, v in [*common, *entry.settings, *pairs, *seed_set]]
        cfg = _load(src, group, config, overrides)
        for i, budget in enumerate(budgets, 1):
            name = _join(group, "" if seed is None else f"s{seed}", f"b{i}" if len(budgets) > 1 else "")
            steps = cfg.train.steps
            if kind:
                steps = steps_for_budget(cfg, **{kind: budget})
                if steps < 1:
                    raise _too_small(src, name, kind, budget, cfg)
            extra = [f"train.steps={steps}"] if kind else []
            if evals:
                extra.append(f"train.eval_every={max(1, math.ceil(steps / evals))}")
            _load(src, name, config, [*overrides, *extra])  # the final overrides validate too
            if any(a.name == name for a in arms):
                raise SweepError(f"{src}: two arms would be named {name!r} (grid values that differ only in "
                                 "characters a folder name drops?); rename the arms")
            arms.append(Arm(name, group, config, tuple(overrides + extra), steps, budget, kind, seed,
                            entry.family or group))
    # Seed by seed: a sweep stopped after its first pass already has one run of every arm and budget.
    order = {s: i for i, s in enumerate(dict.fromkeys(a.seed for a in arms))}
    return Sweep(path, tuple(sorted(arms, key=lambda a: order[a.seed])))
