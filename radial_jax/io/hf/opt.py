"""OPT (pre-LayerNorm sizes) <-> our dense model, through one name table (`rules`) read in both
directions: LayerNorm, learned positions (offset 2), ReLU (or another activation) MLP, biases."""

from __future__ import annotations

import numpy as np

from radial_jax.config import Config
from radial_jax.io.hf import common as hf
from radial_jax.io.hf.table import (
    KeyMap,
    Rule,
    load_keys,
    load_tensors,
    offset_rows,
    rule,
    save_keys,
    save_tensors,
)

FIXED = {"norm": "layer", "positions": "learned", "norm_eps": 1e-5}  # OPT's LayerNorms use eps 1e-5
KEYS = (KeyMap("model.vocab_size", "vocab_size"), KeyMap("model.d_model", "hidden_size"),
        KeyMap("model.n_layers", "num_hidden_layers"), KeyMap("model.n_heads", "num_attention_heads"),
        KeyMap("model.d_ff", "ffn_dim"), KeyMap("model.max_positions", "max_position_embeddings"))
NORMS = ("self_attn_layer_norm", "final_layer_norm")


def rules(m: dict) -> list[Rule]:
    """HF names (model.decoder. prefix dropped) <-> ours, for a model with `m`'s sizes and options."""
    out = [*hf.head_rules(m, "embed_tokens.weight", "final_layer_norm"),
           rule("embed_positions.weight", "embedder.pos_embedding", offset_rows(2))]
    for i in range(m["n_layers"]):
        s, o = f"layers.{i}.", f"blocks.{i}."
        out += [*hf.norm_rules(m, s + NORMS[0], o + "attn_norm"),
                *hf.norm_rules(m, s + NORMS[1], o + "mlp_norm"),
                *hf.attention_rules(m, s + "self_attn.", o + "attn.", out="out_proj"),
                *hf.linear_rules(((s + "fc1", o + "mlp.up"), (s + "fc2", o + "mlp.down")), m["mlp_bias"])]
    return out


def from_opt(doc: dict, w: hf.Weights, where: str) -> tuple[dict, dict]:
    """OPT as our dense model; LayerNorms without affine parameters load as scale 1, bias 0."""
    hf.need(doc, "do_layer_norm_before", bool, where, "post-LayerNorm OPT (opt-350m)")
    hf.need(doc, "_remove_final_layer_norm", lambda v: not v, where, "OPT without a final LayerNorm")
    raw = load_keys(KEYS, doc, where)
    m = raw["model"]
    d, h = m["d_model"], m["n_heads"]
    if doc.get("word_embed_proj_dim", d) != d:
        raise hf.HFError(f"{where}: word_embed_proj_dim={doc['word_embed_proj_dim']} != hidden_size={d} "
                      "(project_in/project_out) is not supported")
    bias = bool(doc.get("enable_bias", True))
    m.update(FIXED, n_kv_heads=h, head_dim=d // h, mlp=hf.act(doc, "activation_function", where),
             qkv_bias=bias, out_bias=bias, mlp_bias=bias,
             tie_embeddings=not w.has("lm_head.weight") or bool(doc.get("tie_word_embeddings", True)))
    if m["tie_embeddings"]:
        w.ignore("lm_head.weight")
    table = rules(m)
    if doc.get("layer_norm_elementwise_affine", True):
        return raw, load_tensors(table, w.__getitem__, w.has)
    names = tuple(f"{n}.{x}" for n in NORMS for x in ("weight", "bias"))
    norms = [r for r in table if r.theirs.endswith(names)]
    tensors = load_tensors([r for r in table if r not in norms], w.__getitem__, w.has)
    for r in norms:
        tensors[r.ours[0]] = (np.ones if r.ours[0].endswith(".scale") else np.zeros)(d, np.float32)
    return raw, tensors


def opt_misfits(cfg: Config) -> list[str]:
    """Our options the OPT layout cannot hold."""
    m = cfg.model
    bias = [] if m.qkv_bias == m.out_bias == m.mlp_bias else [
        f"model.qkv_bias/out_bias/mlp_bias={m.qkv_bias}/{m.out_bias}/{m.mlp_bias} (needs all equal)"]
    return hf.misfits(m, FIXED) + bias + hf.plain_misfits(m)


def to_opt(cfg: Config, flat: dict[str, np.ndarray]) -> tuple[dict, dict[str, np.ndarray]]:
    """(config.json, tensors with HF names) of a dense model as OPTForCausalLM."""
    m, values = cfg.model, hf.config_values(cfg)
    config = {"architectures": ["OPTForCausalLM"], "model_type": "opt", **save_keys(KEYS, values),
              "word_embed_proj_dim": m.d_model, "activation_function": hf.ACT_NAMES[m.mlp],
              "enable_bias": m.qkv_bias, "do_layer_norm_before": True, "_remove_final_layer_norm": False,
              "layer_norm_elementwise_affine": True, "tie_word_embeddings": m.tie_embeddings,
              "init_std": m.init_std}
    return config, save_tensors(rules(values["model"]), flat, "model.decoder.")
