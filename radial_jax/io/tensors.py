"""Tensor helpers every directory format shares: JSON and safetensors reading, parameters by name."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from safetensors import safe_open

from radial_jax.config import Config, ConfigError
from radial_jax.model.build import abstract_model


class ExportError(ConfigError):
    """A model directory that cannot be written or read; the message says what and how to fix it."""


def read_json(path: Path) -> dict:
    """A JSON object from `path`; ExportError naming the file otherwise."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ExportError(f"{path}: cannot read it as JSON: {e}") from None
    if not isinstance(doc, dict):
        raise ExportError(f"{path}: expected a JSON object")
    return doc


def read_weights(path: Path) -> dict[str, Any]:
    """Every tensor of the folder's *.safetensors files (any dtype, bfloat16 included)."""
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


def flat_params(params) -> dict[str, np.ndarray]:
    """{"blocks.0.attn.wq": array, ...}: float32 host arrays named by parameter path."""
    return {".".join(map(str, path)): np.asarray(jax.device_get(v.get_value()), np.float32)
            for path, v in nnx.to_flat_state(params)}


def fill_params(cfg: Config, tensors: dict[str, np.ndarray], where: str) -> tuple[nnx.GraphDef, Any]:
    """(graphdef, params) of `cfg`'s model holding `tensors`; ExportError on missing/extra/misshapen."""
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
