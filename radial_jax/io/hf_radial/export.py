"""A radial model as a Hugging Face transformers remote-code directory.

`write_hf_radial` writes config.json (with `auto_map`, so `AutoModelForCausalLM.from_pretrained(dir,
trust_remote_code=True)` finds the classes), configuration_radial.py and modeling_radial.py (copied
verbatim from template/: the one template of the PyTorch model), model.safetensors with torch
names and layouts, generation_config.json, and the tokenizer files (tokenizer.py).

Our attention weights are [D, H, K] (q/k/v) and [H, K, D] (out), MLP weights [in, out]; a torch Linear
stores [out, in], so q_proj.weight = wq.reshape(D, H*K).T. Pool parameters are stacked on a leading
P axis; the export splits them into model.pool.{p}.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from radial_jax.config import Config, ConfigError, ff_dim, head_dim
from radial_jax.io.hf_radial.tokenizer import write_tokenizer_files

# Not a package (no __init__.py): radial_jax never imports these files, which import torch.
TEMPLATE_DIR = Path(__file__).parent / "template"
TEMPLATES = ("configuration_radial.py", "modeling_radial.py")
AUTO_MAP = {"AutoConfig": "configuration_radial.RadialConfig",
            "AutoModel": "modeling_radial.RadialModel",
            "AutoModelForCausalLM": "modeling_radial.RadialForCausalLM"}


class HFRadialError(ConfigError):
    """A radial model the transformers export cannot hold; the message names the option."""


def check_exportable(cfg: Config) -> None:
    """HFRadialError naming every option of `cfg` that the PyTorch template does not implement."""
    m, r = cfg.model, cfg.routing
    if m.kind != "radial":
        raise HFRadialError(f"the radial transformers export needs model.kind=radial, got {m.kind!r}")
    unsupported = [f"model.{k}={getattr(m, k)!r}" for k, ok in (
        ("norm", "rms"), ("mlp", "swiglu"), ("positions", "rope"), ("qkv_bias", False),
        ("out_bias", False), ("mlp_bias", False)) if getattr(m, k) != ok]
    if r.policy == "expert_choice":
        unsupported.append("routing.policy='expert_choice' (not causal: it cannot decode token by token)")
    if unsupported:
        raise HFRadialError("the radial transformers export (Llama-style blocks, token_choice or fixed "
                            "routing) cannot hold a model with " + ", ".join(unsupported)
                            + "; export it with --format safetensors")


def hf_config(cfg: Config, tokenizer=None) -> dict:
    """config.json of the exported model (RadialConfig's fields, auto_map, special token ids)."""
    m, rt, r = cfg.model, cfg.router, cfg.routing
    doc = {
        "architectures": ["RadialForCausalLM"], "model_type": "radial", "auto_map": AUTO_MAP,
        "vocab_size": m.vocab_size, "hidden_size": m.d_model, "intermediate_size": ff_dim(m),
        "num_attention_heads": m.n_heads, "num_key_value_heads": m.n_kv_heads, "head_dim": head_dim(m),
        "rope_theta": m.rope_theta, "rms_norm_eps": m.norm_eps, "prefix_layers": m.prefix_layers,
        "pool_size": m.pool_size, "routing_steps": m.steps, "num_hidden_layers": m.prefix_layers + m.steps,
        "kv_skip": m.kv_skip, "router_hidden": rt.hidden, "router_per_step": rt.per_step,
        "routing_policy": r.policy, "routing_top_k": r.top_k, "routing_reuse": r.reuse,
        "routing_order": r.order, "routing_skip": r.skip, "routing_gate": r.gate,
        "max_position_embeddings": max(cfg.data.seq_len, 2048), "initializer_range": m.init_std,
        "tie_word_embeddings": m.tie_embeddings, "use_cache": True, "torch_dtype": "float32",
    }
    if tokenizer is not None:
        doc.update(special_token_ids(tokenizer))
    return doc


def special_token_ids(tokenizer) -> dict:
    """bos/eos/pad ids for config.json and generation_config.json; pad is EOS when the tokenizer
    has no pad token of its own (a finished sequence in a batch is filled with it)."""
    ids = {"bos_token_id": tokenizer.bos_id, "eos_token_id": tokenizer.eos_id}
    ids["pad_token_id"] = getattr(tokenizer, "pad_id", None) or tokenizer.eos_id
    return {k: v for k, v in ids.items() if v is not None}


def _linear_out_in(w_DxHxK: np.ndarray) -> np.ndarray:
    """Ours [D, H, K] -> torch Linear [H*K, D]."""
    return w_DxHxK.reshape(w_DxHxK.shape[0], -1).T


def _block(flat: dict[str, np.ndarray], ours: str, theirs: str, index=None) -> dict[str, np.ndarray]:
    """One Block's tensors; index p picks pool layer p out of the stacked pool parameters."""
    get = (lambda n: flat[ours + n]) if index is None else (lambda n: flat[ours + n][index])
    d = get("attn.wo").shape[-1]
    return {
        theirs + "attn_norm.weight": get("attn_norm.scale"),
        theirs + "q_proj.weight": _linear_out_in(get("attn.wq")),
        theirs + "k_proj.weight": _linear_out_in(get("attn.wk")),
        theirs + "v_proj.weight": _linear_out_in(get("attn.wv")),
        theirs + "o_proj.weight": get("attn.wo").reshape(-1, d).T,
        theirs + "mlp_norm.weight": get("mlp_norm.scale"),
        theirs + "gate_proj.weight": get("mlp.w_gate").T,
        theirs + "up_proj.weight": get("mlp.w_up").T,
        theirs + "down_proj.weight": get("mlp.w_down").T,
    }


def hf_tensors(cfg: Config, flat: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """modeling_radial.py's state dict (float32, contiguous) from our flat params (export.flat_params)."""
    m = cfg.model
    t = {"model.embed_tokens.weight": flat["embedder.embedding"],
         "model.norm.weight": flat["embedder.final_norm.scale"]}
    if not m.tie_embeddings:
        t["lm_head.weight"] = flat["embedder.head"].T
    for i in range(m.prefix_layers):
        t.update(_block(flat, f"prefix.{i}.", f"model.prefix.{i}."))
    for p in range(m.pool_size):
        t.update(_block(flat, "pool.", f"model.pool.{p}.", index=p))
    t["model.router.norm.weight"] = flat["router.norm.scale"]
    for name in ("w_in", "b_in", "w_out", "b_out", "select_bias", "step_embed"):
        if f"router.{name}" in flat:
            t[f"model.router.{name}"] = flat[f"router.{name}"]
    return {k: np.ascontiguousarray(v, np.float32) for k, v in t.items()}


def write_hf_radial(cfg: Config, flat: dict[str, np.ndarray], out_dir: str | Path, *,
                    tokenizer=None) -> dict[str, Path]:
    """Write the remote-code directory of a radial model (flat params as export.flat_params makes
    them) to `out_dir`; returns the files written by role."""
    check_exportable(cfg)
    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    files = {"config": out / "config.json", "weights": out / "model.safetensors"}
    files["config"].write_text(json.dumps(hf_config(cfg, tokenizer), indent=2) + "\n")
    save_file(hf_tensors(cfg, flat), str(files["weights"]), metadata={"format": "pt"})
    for name in TEMPLATES:
        files[name.removesuffix(".py")] = out / name
        shutil.copyfile(TEMPLATE_DIR / name, out / name)
    if tokenizer is not None:
        files["generation_config"] = out / "generation_config.json"
        files["generation_config"].write_text(json.dumps(special_token_ids(tokenizer), indent=2) + "\n")
        files.update(write_tokenizer_files(tokenizer, out))
    return files
