"""Sweep files: which arms to train, and how many steps each gets from a compute budget.

A sweep file names a base config, overrides for every arm (`set:`), named arms (`arms:`, each with
an optional own `config:` and `set:`), a `grid:` of key -> values (crossed with the arms), and an
optional `budget:` of training FLOPs or tokens per arm (one arm per budget value). With a FLOPs
budget an arm's steps follow from its compiled FLOPs per token (isoFLOP: a model that costs half as
much per token trains on twice the tokens). Every arm's config is loaded and validated here, so a
typo fails before anything trains, with the file, the arm and the key in the message.
"""

from __future__ import annotations

import difflib
import itertools
import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from radial_jax.config import Config, ConfigError, load_config
from radial_jax.model.flops import flops_per_token

TOP_KEYS = ("description", "base", "set", "arms", "grid", "budget", "evals")
ARM_KEYS = ("name", "config", "set")
BUDGET_KEYS = ("train_flops", "tokens")
SET_BY_SWEEP = {"run.dir": "the sweep puts each arm in OUT/<arm name>"}
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+=-]*$")


class SweepError(ConfigError):
    """A sweep file problem; the message names the file, the arm or key, and the fix."""


@dataclass(frozen=True)
class Arm:
    """One run of a sweep: a config file plus overrides (run.dir excluded; the sweep sets it)."""

    name: str
    group: str                    # the name without the budget suffix (arms differing only in budget)
    config: Path
    overrides: tuple[str, ...]
    steps: int
    budget: float | None = None   # training FLOPs or tokens this arm was sized for
    budget_kind: str | None = None

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


# --------------------------------------------------------------------------- parsing


def _suggest(name: str, valid) -> str:
    close = difflib.get_close_matches(str(name), list(valid), n=1, cutoff=0.5)
    return f"; did you mean {close[0]!r}?" if close else f"; valid: {', '.join(valid)}"


def _check_keys(where: str, got: dict, valid: tuple) -> None:
    for k in got:
        if k not in valid:
            raise SweepError(f"{where}unknown key {k!r}{_suggest(k, valid)}")


def _number(where: str, value: Any) -> float:
    """A positive finite number; YAML 1.1 reads `1e13` as a string, so strings are parsed too."""
    try:
        x = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError):
        x = math.nan
    if not math.isfinite(x) or x <= 0:
        raise SweepError(f"{where}={value!r} must be a positive number")
    return x


def _override(key: str, value: Any) -> str:
    """`model.pool_size`, 4 -> "model.pool_size=4" (values written so the override parser reads them
    back as the same YAML value)."""
    if isinstance(value, str) and yaml.safe_load(value) == value:
        return f"{key}={value}"
    return f"{key}={json.dumps(value)}"


def _settings(where: str, block: Any) -> list[tuple[str, Any]]:
    """A `set:` mapping of section.key -> value, checked for shape and for keys the sweep owns."""
    if block is None:
        return []
    if not isinstance(block, dict):
        raise SweepError(f"{where} must be a mapping of section.key: value, got {block!r}")
    for key in block:
        if not isinstance(key, str) or key.count(".") != 1 or not all(key.split(".")):
            raise SweepError(f"{where}: key {key!r} must look like section.key, e.g. model.pool_size")
        if key in SET_BY_SWEEP:
            raise SweepError(f"{where}: {key} cannot be set in a sweep; {SET_BY_SWEEP[key]}")
    return list(block.items())


def _label(value: Any) -> str:
    text = "+".join(map(str, value)) if isinstance(value, list) else str(value)
    return re.sub(r"[^A-Za-z0-9.+-]", "", text) or "x"


def _grid(src: str, grid: Any) -> list[tuple[str, list[tuple[str, Any]]]]:
    """The cartesian product of the grid as (name suffix, [(key, value), ...]) rows."""
    if grid is None:
        return [("", [])]
    if not isinstance(grid, dict) or not grid:
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


def _budgets(src: str, budget: Any) -> tuple[str | None, list[float]]:
    if budget is None:
        return None, [None]
    if not isinstance(budget, dict):
        raise SweepError(f"{src}: budget must be a mapping with train_flops: or tokens:, got {budget!r}")
    _check_keys(f"{src}: budget: ", budget, BUDGET_KEYS)
    given = [k for k in BUDGET_KEYS if k in budget]
    if len(given) != 1:
        raise SweepError(f"{src}: budget needs exactly one of train_flops: and tokens: (got "
                         f"{', '.join(given) or 'neither'})")
    kind = given[0]
    values = budget[kind] if isinstance(budget[kind], list) else [budget[kind]]
    if not values:
        raise SweepError(f"{src}: budget.{kind} is an empty list; give at least one value")
    return kind, [_number(f"{src}: budget.{kind}", v) for v in values]


def _relative(sweep_file: Path, ref: Any) -> Path:
    """A config path written in the sweep file, relative to it: `../tiny.yaml` in
    configs/sweeps/x.yaml -> configs/tiny.yaml."""
    return Path(os.path.normpath(sweep_file.parent / str(ref)))


def _arm_specs(src: str, doc: dict, base: Path | None, sweep_file: Path) -> list[tuple[str, Path, list]]:
    """(name, config file, settings) of each `arms:` entry, or one unnamed arm from `base`."""
    arms = doc.get("arms")
    if arms is None:
        if base is None:
            raise SweepError(f"{src}: needs base: (the config every arm starts from) or arms: with a "
                             "config: each")
        return [("", base, [])]
    if not isinstance(arms, list) or not arms:
        raise SweepError(f"{src}: arms is empty; give a list of {{name: ..., set: {{...}}}} entries")
    out, seen = [], set()
    for i, arm in enumerate(arms):
        if not isinstance(arm, dict):
            raise SweepError(f"{src}: arms[{i}] must be a mapping with name: (and config:, set:), "
                             f"got {arm!r}")
        _check_keys(f"{src}: arms[{i}]: ", arm, ARM_KEYS)
        name = arm.get("name")
        if not isinstance(name, str) or not _SAFE_NAME.match(name):
            raise SweepError(f"{src}: arms[{i}].name={name!r} must be a folder-safe name (letters, "
                             "digits, . _ + = -)")
        if name in seen:
            raise SweepError(f"{src}: two arms are named {name!r}; arm names must be unique")
        seen.add(name)
        config = base
        if "config" in arm:
            config = _relative(sweep_file, arm["config"])
            if not config.is_file():
                raise SweepError(f"{src}: arm {name!r}: config not found: {config}")
        if config is None:
            raise SweepError(f"{src}: arm {name!r} has no config: and the sweep has no base:")
        out.append((name, config, _settings(f"{src}: arm {name!r}: set", arm.get("set"))))
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
    if not path.is_file():
        raise SweepError(f"sweep file not found: {path}")
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise SweepError(f"{src}: not valid YAML: {e}") from None
    if not isinstance(doc, dict) or not doc:
        raise SweepError(f"{src}: a sweep file must be a mapping with base:, arms: and/or grid:")
    _check_keys(f"{src}: ", doc, TOP_KEYS)
    base = None
    if "base" in doc:
        base = _relative(path, doc["base"])
        if not base.is_file():
            raise SweepError(f"{src}: base config not found: {base} (paths are relative to the sweep "
                             "file)")
    common = _settings(f"{src}: set", doc.get("set"))
    specs = _arm_specs(src, doc, base, path)
    grid = _grid(src, doc.get("grid"))
    kind, budgets = _budgets(src, doc.get("budget"))
    evals = doc.get("evals")
    if evals is not None and (isinstance(evals, bool) or not isinstance(evals, int) or evals < 1):
        raise SweepError(f"{src}: evals={evals!r} must be a whole number >= 1 (eval points per arm)")
    keys = {k for k, _ in common} | {k for s in specs for k, _ in s[2]} | {k for _, g in grid for k, _ in g}
    if kind and "train.steps" in keys:
        raise SweepError(f"{src}: train.steps cannot be set in a sweep with a budget: (the budget "
                         "sets each arm's steps)")
    if evals and "train.eval_every" in keys:
        raise SweepError(f"{src}: train.eval_every cannot be set with evals: (evals sets it per arm)")

    arms = []
    for (arm_name, config, settings), (suffix, pairs) in itertools.product(specs, grid):
        group = _join(arm_name, suffix) or config.stem
        overrides = [_override(k, v) for k, v in [*common, *settings, *pairs]]
        cfg = _load(src, group, config, overrides)
        for i, budget in enumerate(budgets, 1):
            name = _join(group, f"b{i}" if len(budgets) > 1 else "")
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
            arms.append(Arm(name, group, config, tuple(overrides + extra), steps, budget, kind))
    return Sweep(path, tuple(arms))
