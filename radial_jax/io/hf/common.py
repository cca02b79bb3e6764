"""Shared pieces of the Hugging Face mappings: the error type, a checkpoint's tensors by name, and
the config fields every family reads the same way.

Our attention weights are [D, H, K] (q/k/v) and [H, K, D] (out); a torch Linear stores [out, in], so
q_proj.weight = wq.reshape(D, H*K).T. RoPE is rotate-half in both (HF Llama's `rotate_half`), so
q/k need no permutation of the head dimension.
"""

from __future__ import annotations

import numpy as np

from radial_jax.io.tensors import ExportError


class HFError(ExportError):
    """A Hugging Face model that cannot be mapped; the message names the field and what is supported."""


_PREFIXES = ("model.decoder.", "decoder.", "transformer.", "model.")
_ACTS = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu_fast": "gelu_tanh",
         "gelu": "gelu", "relu": "relu"}


class Weights:
    """An HF checkpoint's tensors by name, with the model prefix (transformer., model.decoder., ...)
    dropped so that names from every save style match; each tensor is taken once."""

    def __init__(self, tensors: dict[str, np.ndarray], where: str):
        self.t: dict[str, np.ndarray] = {}
        for name, value in tensors.items():
            short = next((name[len(p):] for p in _PREFIXES if name.startswith(p)), name)
            self.t[short] = np.asarray(value, np.float32)
        self.where = where
        self.used: set[str] = set()

    def has(self, name: str) -> bool:
        return name in self.t

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self.t:
            raise HFError(f"{self.where}: weight {name!r} is missing from the safetensors files")
        self.used.add(name)
        return self.t[name]

    def ignore(self, name: str) -> None:
        """A tensor the model does not need (a tied head saved anyway)."""
        self.used.add(name)

    def unused(self) -> list[str]:
        return sorted(n for n in self.t if n not in self.used and not n.endswith(
            ("attn.bias", "attn.masked_bias", "rotary_emb.inv_freq")))  # buffers some saves include


def need(doc: dict, key: str, ok, where: str, what: str) -> None:
    value = doc.get(key)
    if value is not None and not ok(value):
        raise HFError(f"{where}: {key}={value!r} is not supported ({what})")


def act(doc: dict, key: str, where: str) -> str:
    name = doc.get(key, "gelu_new")
    if name not in _ACTS:
        raise HFError(f"{where}: {key}={name!r} is not supported; supported: {', '.join(_ACTS)}")
    return _ACTS[name]


def rope_theta(doc: dict, where: str) -> float:
    params = doc.get("rope_parameters") or {}
    scaling = doc.get("rope_scaling") or {}
    kind = params.get("rope_type") or scaling.get("rope_type") or scaling.get("type") or "default"
    if kind != "default":
        raise HFError(f"{where}: RoPE scaling {kind!r} is not supported (only plain RoPE)")
    return float(params.get("rope_theta") or doc.get("rope_theta") or 10000.0)


def linear_in(w_OxI: np.ndarray, heads: int) -> np.ndarray:
    """torch Linear weight [H*K, D] -> ours [D, H, K]."""
    return w_OxI.T.reshape(w_OxI.shape[1], heads, -1)
