"""OPT checkpoints as our dense model."""

from __future__ import annotations

import numpy as np

from radial_jax.io.hf.common import HFError, Weights, act, linear_in, need


def from_opt(doc: dict, w: Weights, where: str) -> tuple[dict, dict]:
    """OPT (pre-LayerNorm sizes): LayerNorm, learned positions (offset 2), ReLU MLP, biases."""
    need(doc, "do_layer_norm_before", bool, where, "post-LayerNorm OPT (opt-350m)")
    need(doc, "_remove_final_layer_norm", lambda v: not v, where, "OPT without a final LayerNorm")
    d, h, n = doc["hidden_size"], doc["num_attention_heads"], doc["num_hidden_layers"]
    if doc.get("word_embed_proj_dim", d) != d:
        raise HFError(f"{where}: word_embed_proj_dim={doc['word_embed_proj_dim']} != hidden_size={d} "
                      "(project_in/project_out) is not supported")
    k, bias = d // h, bool(doc.get("enable_bias", True))
    affine = bool(doc.get("layer_norm_elementwise_affine", True))
    model = dict(d_model=d, n_layers=n, n_heads=h, n_kv_heads=h, head_dim=k, d_ff=doc["ffn_dim"],
                 norm_eps=1e-5, norm="layer", mlp=act(doc, "activation_function", where),
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
            t[o + f"attn.w{name}"] = linear_in(w[s + f"self_attn.{name}_proj.weight"], h)
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
