"""Hugging Face layouts: our dense model as a Llama checkpoint, and HF checkpoints as our models.

Our attention weights are [D, H, K] (q/k/v) and [H, K, D] (out); a torch Linear stores [out, in], so
q_proj.weight = wq.reshape(D, H*K).T. RoPE is rotate-half in both (HF Llama's `rotate_half`), so
q/k need no permutation of the head dimension.
"""

from __future__ import annotations

import numpy as np

from radial_jax.config import Config, ConfigError, ff_dim, head_dim


class HFError(ConfigError):
    """A Hugging Face model that cannot be mapped; the message names the field and what is supported."""


def _llama_compatible(cfg: Config) -> None:
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
    """(LlamaConfig dict, tensors with HF names) of a dense model's flat params (export.flat_params)."""
    _llama_compatible(cfg)
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


# ------------------------------------------------------------------------------------------ import

_PREFIXES = ("model.decoder.", "decoder.", "transformer.", "model.")
_ACTS = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu_fast": "gelu_tanh",
         "gelu": "gelu", "relu": "relu"}


class _Weights:
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


def _need(doc: dict, key: str, ok, where: str, what: str) -> None:
    value = doc.get(key)
    if value is not None and not ok(value):
        raise HFError(f"{where}: {key}={value!r} is not supported ({what})")


def _act(doc: dict, key: str, where: str) -> str:
    name = doc.get(key, "gelu_new")
    if name not in _ACTS:
        raise HFError(f"{where}: {key}={name!r} is not supported; supported: {', '.join(_ACTS)}")
    return _ACTS[name]


def _rope_theta(doc: dict, where: str) -> float:
    params = doc.get("rope_parameters") or {}
    scaling = doc.get("rope_scaling") or {}
    kind = params.get("rope_type") or scaling.get("rope_type") or scaling.get("type") or "default"
    if kind != "default":
        raise HFError(f"{where}: RoPE scaling {kind!r} is not supported (only plain RoPE)")
    return float(params.get("rope_theta") or doc.get("rope_theta") or 10000.0)


def _linear_in(w_OxI: np.ndarray, heads: int) -> np.ndarray:
    """torch Linear weight [H*K, D] -> ours [D, H, K]."""
    return w_OxI.T.reshape(w_OxI.shape[1], heads, -1)


def _llama(doc: dict, w: _Weights, where: str) -> tuple[dict, dict]:
    """Llama, Mistral, Qwen2: RMSNorm, RoPE, SwiGLU, grouped-query attention."""
    if doc.get("hidden_act", "silu") != "silu":
        raise HFError(f"{where}: hidden_act={doc.get('hidden_act')!r} is not supported (SwiGLU needs silu)")
    _need(doc, "pretraining_tp", lambda v: v == 1, where, "tensor-parallel slices must be merged")
    d, h = doc["hidden_size"], doc["num_attention_heads"]
    g = doc.get("num_key_value_heads") or h
    k = doc.get("head_dim") or d // h
    qwen = doc["model_type"] == "qwen2"
    attn_bias = bool(doc.get("attention_bias", False))
    model = dict(d_model=d, n_layers=doc["num_hidden_layers"], n_heads=h, n_kv_heads=g, head_dim=k,
                 d_ff=doc["intermediate_size"], rope_theta=_rope_theta(doc, where),
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
            t[o + f"attn.w{ours}"] = _linear_in(w[s + f"self_attn.{theirs}.weight"], heads)
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


def _gpt2(doc: dict, w: _Weights, where: str) -> tuple[dict, dict]:
    """GPT-2: LayerNorm, learned positions, fused qkv Conv1D ([in, out] weights), GELU MLP, biases."""
    _need(doc, "scale_attn_by_inverse_layer_idx", lambda v: not v, where, "per-layer attention scaling")
    _need(doc, "scale_attn_weights", bool, where, "unscaled attention")
    d, h, n = doc["n_embd"], doc["n_head"], doc["n_layer"]
    k = d // h
    model = dict(d_model=d, n_layers=n, n_heads=h, n_kv_heads=h, head_dim=k, d_ff=doc.get("n_inner") or 4 * d,
                 norm_eps=float(doc.get("layer_norm_epsilon", 1e-5)), norm="layer",
                 mlp=_act(doc, "activation_function", where), qkv_bias=True, out_bias=True, mlp_bias=True,
                 positions="learned", max_positions=doc["n_positions"], tie_embeddings=True)
    t = {"embedder.embedding": w["wte.weight"], "embedder.pos_embedding": w["wpe.weight"],
         "embedder.final_norm.scale": w["ln_f.weight"], "embedder.final_norm.bias": w["ln_f.bias"]}
    for i in range(n):
        s, o = f"h.{i}.", f"blocks.{i}."
        qkv_W, qkv_b = w[s + "attn.c_attn.weight"], w[s + "attn.c_attn.bias"]  # [D, 3D], [3D]
        for j, name in enumerate("qkv"):
            t[o + f"attn.w{name}"] = qkv_W[:, j * d:(j + 1) * d].reshape(d, h, k)
            t[o + f"attn.b{name}"] = qkv_b[j * d:(j + 1) * d].reshape(h, k)
        t[o + "attn.wo"] = w[s + "attn.c_proj.weight"].reshape(h, k, d)
        t[o + "attn.bo"] = w[s + "attn.c_proj.bias"]
        t[o + "mlp.w_up"], t[o + "mlp.b_up"] = w[s + "mlp.c_fc.weight"], w[s + "mlp.c_fc.bias"]
        t[o + "mlp.w_down"], t[o + "mlp.b_down"] = w[s + "mlp.c_proj.weight"], w[s + "mlp.c_proj.bias"]
        for ours, theirs in (("attn_norm", "ln_1"), ("mlp_norm", "ln_2")):
            t[o + f"{ours}.scale"], t[o + f"{ours}.bias"] = w[s + f"{theirs}.weight"], w[s + f"{theirs}.bias"]
    w.ignore("lm_head.weight")  # GPT-2's head is tied to wte
    return model, t


def _opt(doc: dict, w: _Weights, where: str) -> tuple[dict, dict]:
    """OPT (pre-LayerNorm sizes): LayerNorm, learned positions (offset 2), ReLU MLP, biases."""
    _need(doc, "do_layer_norm_before", bool, where, "post-LayerNorm OPT (opt-350m)")
    _need(doc, "_remove_final_layer_norm", lambda v: not v, where, "OPT without a final LayerNorm")
    d, h, n = doc["hidden_size"], doc["num_attention_heads"], doc["num_hidden_layers"]
    if doc.get("word_embed_proj_dim", d) != d:
        raise HFError(f"{where}: word_embed_proj_dim={doc['word_embed_proj_dim']} != hidden_size={d} "
                      "(project_in/project_out) is not supported")
    k, bias = d // h, bool(doc.get("enable_bias", True))
    affine = bool(doc.get("layer_norm_elementwise_affine", True))
    model = dict(d_model=d, n_layers=n, n_heads=h, n_kv_heads=h, head_dim=k, d_ff=doc["ffn_dim"],
                 norm_eps=1e-5, norm="layer", mlp=_act(doc, "activation_function", where),
                 qkv_bias=bias, out_bias=bias, mlp_bias=bias, positions="learned",
                 max_positions=doc["max_position_embeddings"],
                 tie_embeddings=not w.has("lm_head.weight") or bool(doc.get("tie_word_embeddings", True)))

    def norm(ours: str, theirs: str) -> dict:
        if not affine:
            return {f"{ours}.scale": np.ones(d, np.float32), f"{ours}.bias": np.zeros(d, np.float32)}
        return {f"{ours}.scale": w[f"{theirs}.weight"], f"{ours}.bias": w[f"{theirs}.bias"]}

    t = {"embedder.embedding": w["embed_tokens.weight"],
         "embedder.pos_embedding": w["embed_positions.weight"][2:],  # OPT offsets positions by 2
         **norm("embedder.final_norm", "final_layer_norm")}
    if not model["tie_embeddings"]:
        t["embedder.head"] = w["lm_head.weight"].T
    else:
        w.ignore("lm_head.weight")  # tied to embed_tokens
    for i in range(n):
        s, o = f"layers.{i}.", f"blocks.{i}."
        for name in "qkv":
            t[o + f"attn.w{name}"] = _linear_in(w[s + f"self_attn.{name}_proj.weight"], h)
            if bias:
                t[o + f"attn.b{name}"] = w[s + f"self_attn.{name}_proj.bias"].reshape(h, k)
        t[o + "attn.wo"] = w[s + "self_attn.out_proj.weight"].T.reshape(h, k, d)
        t[o + "mlp.w_up"], t[o + "mlp.w_down"] = w[s + "fc1.weight"].T, w[s + "fc2.weight"].T
        if bias:
            t[o + "attn.bo"] = w[s + "self_attn.out_proj.bias"]
            t[o + "mlp.b_up"], t[o + "mlp.b_down"] = w[s + "fc1.bias"], w[s + "fc2.bias"]
        t.update({o + k_: v for k_, v in {**norm("attn_norm", s + "self_attn_layer_norm"),
                                          **norm("mlp_norm", s + "final_layer_norm")}.items()})
    return model, t


ARCHITECTURES = {"llama": _llama, "mistral": _llama, "qwen2": _llama, "gpt2": _gpt2, "opt": _opt}


def _tokenizer_for(path, vocab_size: int) -> str:
    """The directory's tokenizer.json, else bytes where the vocabulary covers them, else HFError."""
    from radial_jax.data.tokenizer import ByteTokenizer

    tok = path / "tokenizer.json"
    if tok.is_file():
        return str(tok.absolute())
    if vocab_size >= ByteTokenizer.vocab_size:
        return "bytes"
    raise HFError(f"{path} has no tokenizer.json, and its vocabulary ({vocab_size} ids) is smaller than the "
                  f"byte tokenizer's {ByteTokenizer.vocab_size}; put the model's tokenizer.json there")


def hf_config_and_tensors(path, overrides=()) -> tuple[Config, dict[str, np.ndarray]]:
    """Our config (dense model with the architecture's options) and flat tensors of an HF directory."""
    from pathlib import Path

    from radial_jax.config import from_dict
    from radial_jax.export import _apply_overrides, _read_json, _read_weights

    p = Path(path).expanduser()
    where = str(p)
    doc = _read_json(p / "config.json")
    mt = doc.get("model_type")
    if mt not in ARCHITECTURES:
        raise HFError(f"{where}: model_type {mt!r} is not supported; supported: "
                      f"{', '.join(sorted(ARCHITECTURES))}")
    w = _Weights(_read_weights(p), where)
    model, tensors = ARCHITECTURES[mt](doc, w, where)
    left = w.unused()
    if left:
        raise HFError(f"{where}: weights the {mt} mapping does not use: {', '.join(left[:8])}")
    model.update(kind="dense", vocab_size=doc["vocab_size"])
    limit = model.get("max_positions") or doc.get("max_position_embeddings") or 2048
    window = doc.get("sliding_window") if doc.get("use_sliding_window", mt == "mistral") else None
    raw = {"run": {"dir": str(p)}, "model": model,
           "data": {"tokenizer": _tokenizer_for(p, doc["vocab_size"]),
                    "seq_len": min(256, limit, window or limit)}}
    try:
        cfg = from_dict(_apply_overrides(raw, overrides))
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
    if window is not None and cfg.data.seq_len > window:
        raise HFError(f"{where}: sliding-window attention ({window}) is not supported; keep data.seq_len "
                      f"<= {window}, where it equals full attention")
    return cfg, tensors


def load_hf(path, overrides=()):
    """(config, graphdef, params) of a Hugging Face directory (see ARCHITECTURES)."""
    from radial_jax.export import fill_params

    cfg, tensors = hf_config_and_tensors(path, overrides)
    graphdef, params = fill_params(cfg, tensors, str(path))
    return cfg, graphdef, params
