"""Llama, Mistral, Qwen2 (RMSNorm, RoPE, SwiGLU, grouped-query attention): import, and our dense
model exported as a Llama checkpoint."""

from __future__ import annotations

import numpy as np

from radial_jax.config import Config, ff_dim, head_dim
from radial_jax.io.hf.common import HFError, Weights, linear_in, need, rope_theta


def _check_llama_compatible(cfg: Config) -> None:
    m = cfg.model
    if m.kind != "dense":
        raise HFError("--format hf writes the Llama layout, which has no router or pool: export a radial "
                      "model with --format safetensors")
    unsupported = {k: getattr(m, k) for k, ok in (
        ("norm", "rms"), ("mlp", "swiglu"), ("positions", "rope"), ("mlp_bias", False),
        ("out_bias", False), ("qkv_bias", False)) if hasattr(m, k) and getattr(m, k) != ok}
    if unsupported:
        raise HFError("the Llama layout cannot hold a model with "
                      + ", ".join(f"model.{k}={v!r}" for k, v in unsupported.items())
                      + "; export it with --format safetensors")


def to_hf_llama(cfg: Config, flat: dict[str, np.ndarray]) -> tuple[dict, dict[str, np.ndarray]]:
    """(LlamaConfig dict, tensors with HF names) of a dense model's flat params (io.tensors.flat_params)."""
    _check_llama_compatible(cfg)
    m = cfg.model
    d, hd = m.d_model, head_dim(m)
    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "vocab_size": m.vocab_size, "hidden_size": d, "intermediate_size": ff_dim(m),
        "num_hidden_layers": m.n_layers, "num_attention_heads": m.n_heads,
        "num_key_value_heads": m.n_kv_heads, "head_dim": hd, "hidden_act": "silu",
        "max_position_embeddings": max(cfg.data.seq_len, 2048), "rms_norm_eps": m.norm_eps,
        "rope_theta": m.rope_theta, "rope_parameters": {"rope_type": "default", "rope_theta": m.rope_theta},
        "rope_scaling": None, "attention_bias": False, "mlp_bias": False,
        "tie_word_embeddings": m.tie_embeddings, "torch_dtype": "float32", "dtype": "float32",
        "initializer_range": m.init_std,
    }
    t = {"model.embed_tokens.weight": flat["embedder.embedding"],
         "model.norm.weight": flat["embedder.final_norm.scale"]}
    if not m.tie_embeddings:
        t["lm_head.weight"] = flat["embedder.head"].T
    for i in range(m.n_layers):
        b, o = f"blocks.{i}.", f"model.layers.{i}."
        for ours, theirs in (("wq", "q_proj"), ("wk", "k_proj"), ("wv", "v_proj")):
            w_DxHxK = flat[b + f"attn.{ours}"]
            t[o + f"self_attn.{theirs}.weight"] = w_DxHxK.reshape(d, -1).T
        t[o + "self_attn.o_proj.weight"] = flat[b + "attn.wo"].reshape(-1, d).T
        t[o + "mlp.gate_proj.weight"] = flat[b + "mlp.w_gate"].T
        t[o + "mlp.up_proj.weight"] = flat[b + "mlp.w_up"].T
        t[o + "mlp.down_proj.weight"] = flat[b + "mlp.w_down"].T
        t[o + "input_layernorm.weight"] = flat[b + "attn_norm.scale"]
        t[o + "post_attention_layernorm.weight"] = flat[b + "mlp_norm.scale"]
    return config, {k: np.ascontiguousarray(v, np.float32) for k, v in t.items()}


def from_llama(doc: dict, w: Weights, where: str) -> tuple[dict, dict]:
    """Llama, Mistral, Qwen2: RMSNorm, RoPE, SwiGLU, grouped-query attention."""
    if doc.get("hidden_act", "silu") != "silu":
        raise HFError(f"{where}: hidden_act={doc.get('hidden_act')!r} is not supported (SwiGLU needs silu)")
    need(doc, "pretraining_tp", lambda v: v == 1, where, "tensor-parallel slices must be merged")
    d, h = doc["hidden_size"], doc["num_attention_heads"]
    g = doc.get("num_key_value_heads") or h
    k = doc.get("head_dim") or d // h
    qwen = doc["model_type"] == "qwen2"
    attn_bias = bool(doc.get("attention_bias", False))
    model = dict(d_model=d, n_layers=doc["num_hidden_layers"], n_heads=h, n_kv_heads=g, head_dim=k,
                 d_ff=doc["intermediate_size"], rope_theta=rope_theta(doc, where),
                 norm_eps=float(doc.get("rms_norm_eps", 1e-6)), norm="rms", mlp="swiglu",
                 qkv_bias=qwen or attn_bias, out_bias=attn_bias and not qwen,
                 mlp_bias=bool(doc.get("mlp_bias", False)), positions="rope",
                 tie_embeddings=not w.has("lm_head.weight") or bool(doc.get("tie_word_embeddings")))
    t = {"embedder.embedding": w["embed_tokens.weight"], "embedder.final_norm.scale": w["norm.weight"]}
    if not model["tie_embeddings"]:
        t["embedder.head"] = w["lm_head.weight"].T
    for i in range(model["n_layers"]):
        s, o = f"layers.{i}.", f"blocks.{i}."
        for ours, theirs, heads in (("q", "q_proj", h), ("k", "k_proj", g), ("v", "v_proj", g)):
            t[o + f"attn.w{ours}"] = linear_in(w[s + f"self_attn.{theirs}.weight"], heads)
            if model["qkv_bias"]:
                t[o + f"attn.b{ours}"] = w[s + f"self_attn.{theirs}.bias"].reshape(heads, k)
        t[o + "attn.wo"] = w[s + "self_attn.o_proj.weight"].T.reshape(h, k, d)
        if model["out_bias"]:
            t[o + "attn.bo"] = w[s + "self_attn.o_proj.bias"]
        for ours, theirs in (("gate", "gate_proj"), ("up", "up_proj"), ("down", "down_proj")):
            t[o + f"mlp.w_{ours}"] = w[s + f"mlp.{theirs}.weight"].T
            if model["mlp_bias"]:
                t[o + f"mlp.b_{ours}"] = w[s + f"mlp.{theirs}.bias"]
        t[o + "attn_norm.scale"] = w[s + "input_layernorm.weight"]
        t[o + "mlp_norm.scale"] = w[s + "post_attention_layernorm.weight"]
    if model["tie_embeddings"]:
        w.ignore("lm_head.weight")
    return model, t
