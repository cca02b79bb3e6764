"""Llama, Mistral, Qwen2 (RMSNorm, RoPE, SwiGLU, grouped-query attention) <-> our dense model, through
one name table (`rules`) read in both directions."""

from __future__ import annotations

import numpy as np

from radial_jax.config import Config
from radial_jax.io.hf import common as hf
from radial_jax.io.hf.table import KeyMap, Rule, load_keys, load_tensors, save_keys, save_tensors

FIXED = {"norm": "rms", "mlp": "swiglu", "positions": "rope"}
KEYS = (KeyMap("model.vocab_size", "vocab_size"), KeyMap("model.d_model", "hidden_size"),
        KeyMap("model.n_layers", "num_hidden_layers"), KeyMap("model.n_heads", "num_attention_heads"),
        KeyMap("model.d_ff", "intermediate_size"), KeyMap("model.norm_eps", "rms_norm_eps", 1e-6))
MLP = (("mlp.gate_proj", "mlp.gate"), ("mlp.up_proj", "mlp.up"), ("mlp.down_proj", "mlp.down"))


def rules(m: dict) -> list[Rule]:
    """HF names (model. prefix dropped) <-> ours, for a model with `m`'s sizes and options."""
    out = hf.head_rules(m, "embed_tokens.weight", "norm")
    for i in range(m["n_layers"]):
        s, o = f"layers.{i}.", f"blocks.{i}."
        out += [*hf.norm_rules(m, s + "input_layernorm", o + "attn_norm"),
                *hf.norm_rules(m, s + "post_attention_layernorm", o + "mlp_norm"),
                *hf.attention_rules(m, s + "self_attn.", o + "attn."),
                *hf.linear_rules(tuple((s + t, o + x) for t, x in MLP), m["mlp_bias"])]
    return out


def from_llama(doc: dict, w: hf.Weights, where: str) -> tuple[dict, dict]:
    """Llama, Mistral, Qwen2: RMSNorm, RoPE, SwiGLU, grouped-query attention."""
    if doc.get("hidden_act", "silu") != "silu":
        raise hf.HFError(f"{where}: hidden_act={doc.get('hidden_act')!r} is not supported "
                         "(SwiGLU needs silu)")
    hf.need(doc, "pretraining_tp", lambda v: v == 1, where, "tensor-parallel slices must be merged")
    raw = load_keys(KEYS, doc, where)
    m = raw["model"]
    qwen, attn_bias = doc["model_type"] == "qwen2", bool(doc.get("attention_bias", False))
    m.update(FIXED, n_kv_heads=doc.get("num_key_value_heads") or m["n_heads"],
             head_dim=doc.get("head_dim") or m["d_model"] // m["n_heads"],
             rope_theta=hf.rope_theta(doc, where),
             qkv_bias=qwen or attn_bias, out_bias=attn_bias and not qwen,
             mlp_bias=bool(doc.get("mlp_bias", False)),
             tie_embeddings=not w.has("lm_head.weight") or bool(doc.get("tie_word_embeddings")))
    if m["tie_embeddings"]:
        w.ignore("lm_head.weight")
    return raw, load_tensors(rules(m), w.__getitem__, w.has)


def llama_misfits(cfg: Config) -> list[str]:
    """Our options that neither Llama nor (q/k/v biases alone) Qwen2 can hold."""
    m = cfg.model
    if m.qkv_bias == m.out_bias or (m.qkv_bias and not m.mlp_bias):
        return hf.misfits(m, FIXED)
    return [*hf.misfits(m, FIXED), f"model.qkv_bias={m.qkv_bias!r} with model.out_bias={m.out_bias!r} and "
            f"model.mlp_bias={m.mlp_bias!r} (Llama's attention_bias is q/k/v and out together; Qwen2 "
            "has q/k/v biases only)"]


def to_llama(cfg: Config, flat: dict[str, np.ndarray]) -> tuple[dict, dict[str, np.ndarray]]:
    """(config.json, tensors with HF names) of a dense model as Llama, or as Qwen2 where only the
    q/k/v projections have biases."""
    m, values = cfg.model, hf.config_values(cfg)
    qwen = m.qkv_bias and not m.out_bias
    config = {
        "architectures": ["Qwen2ForCausalLM" if qwen else "LlamaForCausalLM"],
        "model_type": "qwen2" if qwen else "llama", **save_keys(KEYS, values),
        "num_key_value_heads": m.n_kv_heads, "head_dim": values["model"]["head_dim"], "hidden_act": "silu",
        "max_position_embeddings": max(cfg.data.seq_len, 2048), "rope_theta": m.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": m.rope_theta}, "rope_scaling": None,
        "tie_word_embeddings": m.tie_embeddings, "initializer_range": m.init_std,
        **({"use_sliding_window": False} if qwen else {"attention_bias": m.qkv_bias, "mlp_bias": m.mlp_bias}),
    }
    return config, save_tensors(rules(values["model"]), flat, "model.")
