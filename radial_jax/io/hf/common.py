"""Shared pieces of the Hugging Face mappings: the error type, a checkpoint's tensors by name, the
config fields every family reads the same way, and the name-table parts (embedding and head, norms,
attention, linears) that several architectures share.

RoPE is rotate-half in both (HF Llama's `rotate_half`), so q/k need no permutation of the head
dimension; the layouts themselves are table.py's codecs.
"""

from __future__ import annotations

from dataclasses import asdict

import numpy as np

from radial_jax.config import Config, ModelConfig, ff_dim, head_dim
from radial_jax.io.hf.table import TRANSPOSED, Rule, heads_bias, heads_in, heads_out, rule
from radial_jax.io.tensors import ExportError


class HFError(ExportError):
    """A Hugging Face model that cannot be mapped; the message names the field and what is supported."""


_PREFIXES = ("model.decoder.", "decoder.", "transformer.", "model.")
_ACTS = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu_fast": "gelu_tanh",
         "gelu": "gelu", "relu": "relu"}
ACT_NAMES = {"gelu_tanh": "gelu_new", "gelu": "gelu", "relu": "relu"}  # ours -> HF's activation_function


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


def config_values(cfg: Config) -> dict[str, dict]:
    """The config by section, with the model's derived widths (d_ff, head_dim) filled in."""
    values = cfg.to_dict()
    values["model"].update(d_ff=ff_dim(cfg.model), head_dim=head_dim(cfg.model))
    return values


def misfits(m: ModelConfig, fixed: dict) -> list[str]:
    """`model.key=value (needs x)` for each of `fixed`'s options that `m` sets otherwise."""
    have = asdict(m)
    return [f"model.{k}={have[k]!r} (needs {v!r})" for k, v in fixed.items() if have[k] != v]


def plain_misfits(m: ModelConfig) -> list[str]:
    """What GPT-2/OPT-style blocks (multi-head attention of width d_model, an MLP with one activation)
    cannot hold."""
    out = [] if m.mlp in ACT_NAMES else [f"model.mlp={m.mlp!r} (needs one of {', '.join(ACT_NAMES)})"]
    if m.n_kv_heads != m.n_heads:
        out.append(f"model.n_kv_heads={m.n_kv_heads} (needs n_heads)")
    if head_dim(m) * m.n_heads != m.d_model:
        out.append(f"model.head_dim={head_dim(m)} (needs d_model / n_heads)")
    return out


def norm_rules(m: dict, theirs: str, ours: str) -> list[Rule]:
    """A norm's scale, and its bias for LayerNorm."""
    out = [rule(f"{theirs}.weight", f"{ours}.scale")]
    return out + ([rule(f"{theirs}.bias", f"{ours}.bias")] if m["norm"] == "layer" else [])


def head_rules(m: dict, embed: str, final_norm: str) -> list[Rule]:
    """Token embedding, final norm, and the output head where it is not tied to the embedding."""
    out = [rule(embed, "embedder.embedding"), *norm_rules(m, final_norm, "embedder.final_norm")]
    return out + ([] if m["tie_embeddings"] else [rule("lm_head.weight", "embedder.head", TRANSPOSED)])


def attention_rules(m: dict, theirs: str, ours: str, out: str = "o_proj") -> list[Rule]:
    """Attention as separate torch Linears `{theirs}q_proj` .. `{theirs}{out}` (biases as `m` says)."""
    h, g = m["n_heads"], m["n_kv_heads"]
    rules = [rule(f"{theirs}{out}.weight", f"{ours}wo", heads_out(h))]
    for x, heads in (("q", h), ("k", g), ("v", g)):
        rules.append(rule(f"{theirs}{x}_proj.weight", f"{ours}w{x}", heads_in(heads)))
        if m["qkv_bias"]:
            rules.append(rule(f"{theirs}{x}_proj.bias", f"{ours}b{x}", heads_bias(heads)))
    return rules + ([rule(f"{theirs}{out}.bias", f"{ours}bo")] if m["out_bias"] else [])


def linear_rules(pairs: tuple[tuple[str, str], ...], bias: bool) -> list[Rule]:
    """torch Linears (theirs) <-> our [in, out] weights `w_x` (and biases `b_x`) for (theirs, ours x)."""
    out = []
    for theirs, ours in pairs:
        head, _, x = ours.rpartition(".")
        out.append(rule(f"{theirs}.weight", f"{head}.w_{x}", TRANSPOSED))
        out += [rule(f"{theirs}.bias", f"{head}.b_{x}")] if bias else []
    return out
