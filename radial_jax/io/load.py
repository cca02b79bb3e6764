"""`load_model`: the model in any model directory (run, export or Hugging Face), ready to run."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flax import nnx

from radial_jax.config import Config
from radial_jax.data.tokenizer import tokenizer_for
from radial_jax.errors import NotFoundError
from radial_jax.io.export_dir import read_export
from radial_jax.io.hf.load import read_hf
from radial_jax.io.run_dir import read_run
from radial_jax.io.tensors import ExportError, read_json


@dataclass
class Loaded:
    """A model ready to run: config, graph and params (nnx.split), its tokenizer, where it came from."""

    cfg: Config
    graphdef: nnx.GraphDef
    params: Any
    tokenizer: Any
    step: int | None
    source: str  # "run" | "export" | "hf"
    arch: str | None = None  # the Hugging Face model_type it came from: `--format hf` writes it again


def detect(path: str | Path) -> str:
    """'run', 'export' or 'hf' for a model directory; FileNotFoundError saying what is missing."""
    p = Path(path).expanduser()
    if (p / "config.yaml").is_file():
        return "run"
    if (p / "config.json").is_file():
        doc = read_json(p / "config.json")
        if "radial_jax" in doc:
            return "export"
        if "model_type" in doc:
            return "hf"
        raise ExportError(f"{p / 'config.json'} is neither a `radial export` config (no 'radial_jax' key) "
                          "nor a Hugging Face one (no 'model_type')")
    raise NotFoundError(f"{p} is not a run directory ({p / 'config.yaml'} is missing) nor an export "
                            f"or Hugging Face directory ({p / 'config.json'} is missing)")


def load_model(path: str | Path, overrides=(), step: int | None = None) -> Loaded:
    """The model in `path` (run, export or Hugging Face directory) with config overrides applied;
    `step` picks a run's checkpoint (default: the newest)."""
    p = Path(path).expanduser()
    kind = detect(p)
    arch = None
    if kind == "run":
        cfg, graphdef, params, step = read_run(p, overrides, step)
    elif kind == "export":
        cfg, graphdef, params, step = read_export(p, overrides)
        arch = read_json(p / "config.json")["radial_jax"].get("hf_model_type")
    else:
        (cfg, graphdef, params), step = read_hf(p, overrides), None
        arch = read_json(p / "config.json")["model_type"]
    return Loaded(cfg, graphdef, params, tokenizer_for(cfg), step, kind, arch)
