"""GPT-2 <-> our dense model (LayerNorm, learned positions, fused qkv Conv1D, GELU MLP, biases),
through one name table (`rules`) read in both directions."""

from __future__ import annotations

import numpy as np

from radial_jax.config import Config
from radial_jax.io.hf import common as hf
from radial_jax.io.hf.table import (
    KeyMap,
    Rule,
    conv_heads_out,
    fused_qkv,
    load_keys,
    load_tensors,
    rule,
    save_keys,
    save_tensors,
)

FIXED = {"norm": "layer", "positions": "learned", "qkv_bias": True, "out_bias": True, "mlp_bias": True,
         "tie_embeddings": True}
KEYS = (KeyMap("model.vocab_size", "vocab_size"), KeyMap("model.d_model", "n_embd"),
        KeyMap("model.n_layers", "n_layer"), KeyMap("model.n_heads", "n_head"),
        KeyMap("model.d_ff", "n_inner", 0), KeyMap("model.norm_eps", "layer_norm_epsilon", 1e-5),
        KeyMap("model.max_positions", "n_positions"))


def rules(m: dict) -> list[Rule]:
    """HF names (transformer. prefix dropped) <-> ours; GPT-2's Conv1D weights are [in, out] as ours."""
    h = m["n_heads"]
    out = [*hf.head_rules(m, "wte.weight", "ln_f"), rule("wpe.weight", "embedder.pos_embedding")]
    for i in range(m["n_layers"]):
        s, o = f"h.{i}.", f"blocks.{i}."
        out += [*hf.norm_rules(m, s + "ln_1", o + "attn_norm"), *hf.norm_rules(m, s + "ln_2", o + "mlp_norm"),
                rule(s + "attn.c_attn.weight", (o + "attn.wq", o + "attn.wk", o + "attn.wv"), fused_qkv(h)),
                rule(s + "attn.c_attn.bias", (o + "attn.bq", o + "attn.bk", o + "attn.bv"), fused_qkv(h)),
                rule(s + "attn.c_proj.weight", o + "attn.wo", conv_heads_out(h)),
                rule(s + "attn.c_proj.bias", o + "attn.bo")]
        for theirs, x in (("c_fc", "up"), ("c_proj", "down")):
            out += [rule(s + f"mlp.{theirs}.weight", o + f"mlp.w_{x}"),
                    rule(s + f"mlp.{theirs}.bias", o + f"mlp.b_{x}")]
    return out


def from_gpt2(doc: dict, w: hf.Weights, where: str) -> tuple[dict, dict]:
    """GPT-2 as our dense model with its options (FIXED); the head is tied to wte."""
    hf.need(doc, "scale_attn_by_inverse_layer_idx", lambda v: not v, where, "per-layer attention scaling")
    hf.need(doc, "scale_attn_weights", bool, where, "unscaled attention")
    raw = load_keys(KEYS, doc, where)
    m = raw["model"]
    m.update(FIXED, n_kv_heads=m["n_heads"], head_dim=m["d_model"] // m["n_heads"],
             d_ff=m["d_ff"] or 4 * m["d_model"], mlp=hf.act(doc, "activation_function", where))
    w.ignore("lm_head.weight")
    return raw, load_tensors(rules(m), w.__getitem__, w.has)


def gpt2_misfits(cfg: Config) -> list[str]:
    """Our options the GPT-2 layout cannot hold."""
    m = cfg.model
    return hf.misfits(m, FIXED) + hf.plain_misfits(m)


def to_gpt2(cfg: Config, flat: dict[str, np.ndarray]) -> tuple[dict, dict[str, np.ndarray]]:
    """(config.json, tensors with HF names) of a dense model as GPT2LMHeadModel."""
    values = hf.config_values(cfg)
    config = {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", **save_keys(KEYS, values),
              "activation_function": hf.ACT_NAMES[cfg.model.mlp], "initializer_range": cfg.model.init_std,
              "tie_word_embeddings": True}
    return config, save_tensors(rules(values["model"]), flat, "transformer.")
