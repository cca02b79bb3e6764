"""A Hugging Face directory (config.json with a `model_type` + *.safetensors) as our config and params."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from flax import nnx

from radial_jax.config import Config, ConfigError, apply_overrides, from_dict
from radial_jax.data.tokenizer import ByteTokenizer
from radial_jax.io.hf.common import HFError, Weights
from radial_jax.io.hf.gpt2 import from_gpt2
from radial_jax.io.hf.llama import from_llama
from radial_jax.io.hf.opt import from_opt
from radial_jax.io.hf_radial.layout import from_radial
from radial_jax.io.hf_radial.tokenizer import is_byte_tokenizer
from radial_jax.io.tensors import fill_params, read_json, read_weights

# model_type -> (config.json, weights, where) -> (our config sections, our flat tensors)
ARCHITECTURES = {"llama": from_llama, "mistral": from_llama, "qwen2": from_llama, "gpt2": from_gpt2,
                 "opt": from_opt, "radial": from_radial}


def _tokenizer_for(path: Path, vocab_size: int) -> str:
    """The directory's tokenizer.json (bytes where it is the byte tokenizer's file that our export
    writes), else bytes where the vocabulary covers them, else HFError."""
    tok = path / "tokenizer.json"
    if tok.is_file():
        return "bytes" if is_byte_tokenizer(tok) else str(tok.absolute())
    if vocab_size >= ByteTokenizer.vocab_size:
        return "bytes"
    raise HFError(f"{path} has no tokenizer.json, and its vocabulary ({vocab_size} ids) is smaller than the "
                  f"byte tokenizer's {ByteTokenizer.vocab_size}; put the model's tokenizer.json there")


def hf_config_and_tensors(path, overrides=()) -> tuple[Config, dict[str, np.ndarray]]:
    """Our config (a dense model with the architecture's options, or a radial one) and flat tensors of
    an HF directory."""
    p = Path(path).expanduser()
    where = str(p)
    doc = read_json(p / "config.json")
    mt = doc.get("model_type")
    if mt not in ARCHITECTURES:
        raise HFError(f"{where}: model_type {mt!r} is not supported; supported: "
                      f"{', '.join(sorted(ARCHITECTURES))}")
    w = Weights(read_weights(p), where)
    raw, tensors = ARCHITECTURES[mt](doc, w, where)
    left = w.unused()
    if left:
        raise HFError(f"{where}: weights the {mt} mapping does not use: {', '.join(left[:8])}")
    raw["model"].setdefault("kind", "dense")
    limit = raw["model"].get("max_positions") or doc.get("max_position_embeddings") or 2048
    window = doc.get("sliding_window") if doc.get("use_sliding_window", mt == "mistral") else None
    raw.update(run={"dir": str(p)}, data={"tokenizer": _tokenizer_for(p, doc["vocab_size"]),
                                          "seq_len": min(256, limit, window or limit)})
    try:
        cfg = from_dict(apply_overrides(raw, overrides))
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
    if window is not None and cfg.data.seq_len > window:
        raise HFError(f"{where}: sliding-window attention ({window}) is not supported; keep data.seq_len "
                      f"<= {window}, where it equals full attention")
    return cfg, tensors


def read_hf(path: Path, overrides=()) -> tuple[Config, nnx.GraphDef, Any]:
    """(config, graphdef, params) of a Hugging Face directory (see ARCHITECTURES)."""
    cfg, tensors = hf_config_and_tensors(path, overrides)
    graphdef, params = fill_params(cfg, tensors, str(path))
    return cfg, graphdef, params
