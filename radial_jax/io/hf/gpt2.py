"""GPT-2 checkpoints as our dense model."""

from __future__ import annotations

from radial_jax.io.hf.common import Weights, act, need


def from_gpt2(doc: dict, w: Weights, where: str) -> tuple[dict, dict]:
    """GPT-2: LayerNorm, learned positions, fused qkv Conv1D ([in, out] weights), GELU MLP, biases."""
    need(doc, "scale_attn_by_inverse_layer_idx", lambda v: not v, where, "per-layer attention scaling")
    need(doc, "scale_attn_weights", bool, where, "unscaled attention")
    d, h, n = doc["n_embd"], doc["n_head"], doc["n_layer"]
    k = d // h
    model = dict(d_model=d, n_layers=n, n_heads=h, n_kv_heads=h, head_dim=k, d_ff=doc.get("n_inner") or 4 * d,
                 norm_eps=float(doc.get("layer_norm_epsilon", 1e-5)), norm="layer",
                 mlp=act(doc, "activation_function", where), qkv_bias=True, out_bias=True, mlp_bias=True,
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
