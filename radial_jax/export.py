"""Models in and out without orbax: safetensors + config.json export, and loading any model directory.

A model directory is one of
  - a run directory: config.yaml + orbax checkpoints/ (`radial train`),
  - an export directory (`radial export --format safetensors`): config.json holding our whole config
    under "radial_jax" + model.safetensors named by parameter path ("blocks.0.attn.wq",
    "pool.mlp.w_up" stacked on the pool axis, ...), dense and radial models alike,
  - a Hugging Face directory: config.json with a `model_type` + *.safetensors (hf.py maps the names;
    `radial export --format hf` writes one for dense models, in the Llama layout).
`load_model(path)` loads any of them; `load_trained` (eval, generate) hands the last two to it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import nnx

from radial_jax.config import Config, ConfigError, from_dict, parse_override

FORMAT_VERSION = 1
WEIGHTS = "model.safetensors"


class ExportError(ConfigError):
    """A model directory that cannot be written or read; the message says what and how to fix it."""


@dataclass
class Loaded:
    """A model ready to run: config, graph and params (nnx.split), its tokenizer, where it came from."""

    cfg: Config
    graphdef: nnx.GraphDef
    params: Any
    tokenizer: Any
    step: int | None
    source: str  # "run" | "export" | "hf"


# ------------------------------------------------------------------------------------- detection


def _read_json(path: Path) -> dict:
    try:
        doc = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ExportError(f"{path}: cannot read it as JSON: {e}") from None
    if not isinstance(doc, dict):
        raise ExportError(f"{path}: expected a JSON object")
    return doc


def detect(path: str | Path) -> str:
    """'run', 'export' or 'hf' for a model directory; FileNotFoundError saying what is missing."""
    p = Path(path).expanduser()
    if (p / "config.yaml").is_file():
        return "run"
    if (p / "config.json").is_file():
        doc = _read_json(p / "config.json")
        if "radial_jax" in doc:
            return "export"
        if "model_type" in doc:
            return "hf"
        raise ExportError(f"{p / 'config.json'} is neither a `radial export` config (no 'radial_jax' key) "
                          "nor a Hugging Face one (no 'model_type')")
    raise FileNotFoundError(f"{p} is not a run directory ({p / 'config.yaml'} is missing) nor an export "
                            f"or Hugging Face directory ({p / 'config.json'} is missing)")


def is_model_dir(path: str | Path) -> bool:
    """True for an export or Hugging Face directory (what `load_trained` hands over to this module)."""
    p = Path(path).expanduser()
    return not (p / "config.yaml").is_file() and (p / "config.json").is_file()


# ------------------------------------------------------------------------------------- params


def flat_params(params) -> dict[str, np.ndarray]:
    """{"blocks.0.attn.wq": array, ...}: float32 host arrays named by parameter path."""
    return {".".join(map(str, path)): np.asarray(jax.device_get(v.get_value()), np.float32)
            for path, v in nnx.to_flat_state(params)}


def abstract_model(cfg: Config) -> tuple[nnx.GraphDef, Any]:
    """The model's graph and abstract params (shapes only, nothing initialised)."""
    from radial_jax.model.build import build_model

    return nnx.split(nnx.eval_shape(lambda: build_model(cfg)), nnx.Param)


def fill_params(cfg: Config, tensors: dict[str, np.ndarray], where: str) -> tuple[nnx.GraphDef, Any]:
    """(graphdef, params) of `cfg`'s model holding `tensors`; ExportError on missing/extra/misshapen."""
    import jax.numpy as jnp

    graphdef, abstract = abstract_model(cfg)
    flat = list(nnx.to_flat_state(abstract))
    names = [".".join(map(str, path)) for path, _ in flat]
    missing = [n for n in names if n not in tensors]
    extra = sorted(set(tensors) - set(names))
    if missing or extra:
        raise ExportError(f"{where}: the weights do not match the config's model"
                          + (f"; missing {', '.join(missing[:8])}" if missing else "")
                          + (f"; unexpected {', '.join(extra[:8])}" if extra else ""))
    out = []
    for name, (path, var) in zip(names, flat, strict=True):
        want = var.get_value().shape
        if tuple(tensors[name].shape) != tuple(want):
            raise ExportError(f"{where}: {name} has shape {tuple(tensors[name].shape)}, the config's "
                              f"model needs {tuple(want)}")
        out.append((path, var.replace(jnp.asarray(tensors[name], jnp.float32))))
    return graphdef, nnx.from_flat_state(out)


def _apply_overrides(raw: dict, overrides) -> dict:
    for text in overrides:
        key, value = parse_override(text)
        section, name = key.split(".")
        raw.setdefault(section, {})[name] = value
    return raw


# ------------------------------------------------------------------------------------- export


def export(run_dir: str | Path, out_dir: str | Path, *, fmt: str = "safetensors",
           step: int | None = None) -> dict[str, Path]:
    """Write the model of a run (or export, or HF) directory to `out_dir`; returns the files written."""
    src = load_model(run_dir, step=step)
    return write_export(src.cfg, src.params, out_dir, fmt=fmt, step=src.step, origin=str(run_dir),
                        tokenizer=src.tokenizer)


def write_export(cfg: Config, params, out_dir: str | Path, *, fmt: str = "safetensors",
                 step: int | None = None, origin: str = "", tokenizer=None) -> dict[str, Path]:
    """safetensors + config.json of a model: our layout (`safetensors`) or HF Llama (`hf`, dense)."""
    from safetensors.numpy import save_file

    tok_file = getattr(tokenizer, "path", None)  # a tokenizer.json travels with the weights
    if fmt == "safetensors":
        raw = cfg.to_dict()
        if tok_file is not None:
            raw["data"]["tokenizer"] = "tokenizer.json"  # relative: resolved against the export dir
        config = {"radial_jax": {"format_version": FORMAT_VERSION, "step": step, "exported_from": origin},
                  "config": raw}
        tensors = flat_params(params)
        metadata = {"format": "np", "radial_jax": str(FORMAT_VERSION)}
    elif fmt == "hf":
        from radial_jax.hf import to_hf_llama

        config, tensors = to_hf_llama(cfg, flat_params(params))
        if tokenizer is not None:
            config.update(bos_token_id=tokenizer.bos_id, eos_token_id=tokenizer.eos_id)
        metadata = {"format": "pt"}  # what transformers expects of a safetensors file
    else:
        raise ExportError(f"unknown export format {fmt!r}; choose safetensors or hf")
    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    files = {"config": out / "config.json", "weights": out / WEIGHTS}
    files["config"].write_text(json.dumps(config, indent=2) + "\n")
    save_file(tensors, str(files["weights"]), metadata=metadata)
    if tok_file is not None and Path(tok_file).resolve() != (out / "tokenizer.json").resolve():
        files["tokenizer"] = out / "tokenizer.json"
        files["tokenizer"].write_bytes(Path(tok_file).read_bytes())
    return files


# ------------------------------------------------------------------------------------- loading


def _read_weights(path: Path) -> dict[str, Any]:
    """Every tensor of the folder's *.safetensors files (any dtype, bfloat16 included)."""
    from safetensors import safe_open

    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise ExportError(f"{path}: no *.safetensors weights (a .bin/PyTorch checkpoint is not read; "
                          "save it with safe_serialization=True)")
    out: dict[str, Any] = {}
    for f in files:
        with safe_open(str(f), framework="flax") as fh:
            for name in fh.keys():
                out[name] = fh.get_tensor(name)
    return out


def load_export(path: str | Path, overrides=()) -> tuple[Config, nnx.GraphDef, Any, int | None]:
    """(config, graphdef, params, step) of a `radial export --format safetensors` directory."""
    p = Path(path).expanduser()
    doc = _read_json(p / "config.json")
    meta = doc["radial_jax"]
    if int(meta.get("format_version", 0)) > FORMAT_VERSION:
        raise ExportError(f"{p}: export format {meta.get('format_version')} is newer than this radial_jax "
                          f"reads ({FORMAT_VERSION}); upgrade radial_jax")
    raw = doc["config"]
    tok = raw.get("data", {}).get("tokenizer", "bytes")
    if tok != "bytes" and (p / tok).is_file():
        raw["data"]["tokenizer"] = str((p / tok).absolute())
    try:
        cfg = from_dict(_apply_overrides(raw, overrides))
    except ConfigError as e:
        raise ConfigError(f"{p / 'config.json'}: {e}") from None
    graphdef, params = fill_params(cfg, _read_weights(p), str(p))
    return cfg, graphdef, params, meta.get("step")


def load_model_dir(path: str | Path, overrides=()) -> tuple[Config, nnx.GraphDef, Any, int | None]:
    """(config, graphdef, params, step) of an export or Hugging Face directory: `load_trained`'s shape."""
    loaded = load_model(path, overrides)
    return loaded.cfg, loaded.graphdef, loaded.params, loaded.step


def load_model(path: str | Path, overrides=(), step: int | None = None) -> Loaded:
    """The model in `path` (run, export or Hugging Face directory) with config overrides applied."""
    from radial_jax.data.tokenizer import get_tokenizer

    kind = detect(path)
    if kind == "run":
        from radial_jax.train.checkpoint import load_trained

        cfg, graphdef, params, step = load_trained(path, overrides, step)
    elif kind == "export":
        cfg, graphdef, params, step = load_export(path, overrides)
    else:
        from radial_jax.hf import load_hf

        cfg, graphdef, params = load_hf(path, overrides)
        step = None
    return Loaded(cfg, graphdef, params, get_tokenizer(cfg.data.tokenizer), step, kind)
