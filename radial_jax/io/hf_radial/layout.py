"""The radial transformers export's config.json and state dict <-> our radial config and params: one
key table and one name table, read in both directions (export writes them; `radial eval/generate/
profile` read an exported directory back through `from_radial`).

Pool parameters are stacked on a leading P axis in ours and split into model.pool.{p} in theirs.
"""

from __future__ import annotations

import numpy as np

from radial_jax.config import Config
from radial_jax.io.hf.common import (
    Weights,
    attention_rules,
    config_values,
    head_rules,
    linear_rules,
    norm_rules,
)
from radial_jax.io.hf.table import (
    KeyMap,
    Rule,
    load_keys,
    load_tensors,
    rule,
    save_keys,
    save_tensors,
    stack,
    unstack,
)

# What the template's Llama-style blocks are; the export refuses other options.
FIXED = {"norm": "rms", "mlp": "swiglu", "positions": "rope", "qkv_bias": False, "out_bias": False,
         "mlp_bias": False}
AUTO_MAP = {"AutoConfig": "configuration_radial.RadialConfig",
            "AutoModel": "modeling_radial.RadialModel",
            "AutoModelForCausalLM": "modeling_radial.RadialForCausalLM"}
KEYS = tuple(KeyMap(ours, theirs) for ours, theirs in (
    ("model.vocab_size", "vocab_size"), ("model.d_model", "hidden_size"), ("model.d_ff", "intermediate_size"),
    ("model.n_heads", "num_attention_heads"), ("model.n_kv_heads", "num_key_value_heads"),
    ("model.head_dim", "head_dim"), ("model.rope_theta", "rope_theta"), ("model.norm_eps", "rms_norm_eps"),
    ("model.prefix_layers", "prefix_layers"), ("model.pool_size", "pool_size"),
    ("model.steps", "routing_steps"), ("model.kv_skip", "kv_skip"), ("router.hidden", "router_hidden"),
    ("router.per_step", "router_per_step"), ("routing.policy", "routing_policy"),
    ("routing.top_k", "routing_top_k"), ("routing.reuse", "routing_reuse"),
    ("routing.order", "routing_order"), ("routing.skip", "routing_skip"), ("routing.gate", "routing_gate"),
    ("model.init_std", "initializer_range"), ("model.tie_embeddings", "tie_word_embeddings"))) + (
    # Training's capacity: inference here has no limit, but radial_jax reads it back for `radial
    # eval`/`profile`, which route as training did. Directories exported without it read 1.0.
    KeyMap("model.capacity_factor", "capacity_factor", 1.0),)
ROUTER = ("w_in", "b_in", "w_out", "b_out", "select_bias", "step_embed")  # which exist depends on config
MLP = ("gate", "up", "down")


def rules(m: dict) -> list[Rule]:
    """modeling_radial.py's names (model. prefix dropped) <-> ours, pool layers as pool.{p}."""
    out = head_rules(m, "embed_tokens.weight", "norm")
    blocks = [*(f"prefix.{i}." for i in range(m["prefix_layers"])),
              *(f"pool.{p}." for p in range(m["pool_size"]))]
    for b in blocks:  # the same block names on both sides, but for the Linears' leaf names
        out += [*norm_rules(m, b + "attn_norm", b + "attn_norm"),
                *norm_rules(m, b + "mlp_norm", b + "mlp_norm"),
                *attention_rules(m, b, b + "attn."),
                *linear_rules(tuple((f"{b}{x}_proj", f"{b}mlp.{x}") for x in MLP), bias=False)]
    out.append(rule("router.norm.weight", "router.norm.scale"))
    return out + [rule(f"router.{n}", f"router.{n}", optional=True) for n in ROUTER]


def hf_config(cfg: Config, special_ids: dict) -> dict:
    """config.json of the exported model (RadialConfig's fields, auto_map, special token ids)."""
    return {"architectures": ["RadialForCausalLM"], "model_type": "radial", "auto_map": AUTO_MAP,
            **save_keys(KEYS, config_values(cfg)),
            "num_hidden_layers": cfg.model.prefix_layers + cfg.model.steps,
            "max_position_embeddings": max(cfg.data.seq_len, 2048), "use_cache": True,
            "torch_dtype": "float32", **special_ids}


def hf_tensors(cfg: Config, flat: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """modeling_radial.py's state dict (float32, contiguous) from our flat params (tensors.flat_params)."""
    m = config_values(cfg)["model"] | FIXED
    return save_tensors(rules(m), unstack(flat, "pool", m["pool_size"]), "model.")


def from_radial(doc: dict, w: Weights, where: str) -> tuple[dict, dict]:
    """An exported radial directory as our radial config sections and flat params."""
    raw = load_keys(KEYS, doc, where)
    m = raw["model"]
    m.update(FIXED, kind="radial")
    return raw, stack(load_tensors(rules(m), w.__getitem__, w.has), "pool", m["pool_size"])
