"""Our export layout: config.json holding the whole config under "config" (and "radial_jax" metadata)
+ model.safetensors named by parameter path ("blocks.0.attn.wq", "pool.mlp.w_up" stacked on the pool
axis, ...), for dense and radial models alike; loads without orbax."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from flax import nnx

from radial_jax.config import Config, ConfigError, apply_overrides, from_dict
from radial_jax.io.tensors import ExportError, fill_params, flat_params, read_json, read_weights

FORMAT_VERSION = 1
WEIGHTS = "model.safetensors"


def export_layout(cfg: Config, params, *, step: int | None, origin: str, tokenizer_file: str | None,
                  arch: str | None = None) -> tuple[dict, dict[str, np.ndarray], dict[str, str]]:
    """(config.json document, tensors, safetensors metadata) of a model in our layout; `arch`, the
    Hugging Face model_type it was imported from, is kept for a later `--format hf`."""
    raw = cfg.to_dict()
    if tokenizer_file is not None:
        raw["data"]["tokenizer"] = "tokenizer.json"  # relative: resolved against the export dir
    meta = {"format_version": FORMAT_VERSION, "step": step, "exported_from": origin}
    config = {"radial_jax": meta | ({"hf_model_type": arch} if arch else {}), "config": raw}
    return config, flat_params(params), {"format": "np", "radial_jax": str(FORMAT_VERSION)}


def read_export(path: Path, overrides=()) -> tuple[Config, nnx.GraphDef, Any, int | None]:
    """(config, graphdef, params, step) of a `radial export --format safetensors` directory."""
    doc = read_json(path / "config.json")
    meta = doc["radial_jax"]
    if int(meta.get("format_version", 0)) > FORMAT_VERSION:
        raise ExportError(f"{path}: export format {meta.get('format_version')} is newer than this "
                          f"radial_jax reads ({FORMAT_VERSION}); upgrade radial_jax")
    raw = doc["config"]
    tok = raw.get("data", {}).get("tokenizer", "bytes")
    if tok != "bytes" and (path / tok).is_file():
        raw["data"]["tokenizer"] = str((path / tok).absolute())
    try:
        cfg = from_dict(apply_overrides(raw, overrides))
    except ConfigError as e:
        raise ConfigError(f"{path / 'config.json'}: {e}") from None
    graphdef, params = fill_params(cfg, read_weights(path), str(path))
    return cfg, graphdef, params, meta.get("step")
