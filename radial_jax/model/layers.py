"""Transformer building blocks: RMSNorm, RoPE, grouped-query attention, SwiGLU MLP, Block.

Options for imported architectures (GPT-2, OPT, Qwen2): LayerNorm, biases, a plain GELU/ReLU MLP,
no RoPE (learned positions live in the Embedder). The defaults are the Llama-style model above.

Shape letters: B batch, S query length, T key/value length, D model width, H query heads,
G key/value heads, K head width, F MLP width, V vocabulary.

Parameters carry logical axis names (`embed`, `heads`, `kv`, `mlp`, `vocab`); rules elsewhere map
them to mesh axes, so nothing here names a device axis.

The Block exposes its attention in two halves (`qkv`, then `finish`) so that the radial model can
build one shared key/value buffer from tokens that different pool layers processed, and the
KV cache can store keys between the halves. `__call__` composes them for the dense model.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from jax.ad_checkpoint import checkpoint_name


def param(rngs: nnx.Rngs, shape: tuple[int, ...], axes: tuple[str | None, ...], std: float | None,
          ) -> nnx.Param:
    """A float32 parameter with logical axis names; std None means ones (norm scales)."""
    value = (jnp.ones(shape, jnp.float32) if std is None
             else std * jax.random.normal(rngs.params(), shape, jnp.float32))
    return nnx.Param(value, out_sharding=axes, eager_sharding=False)


def zeros(shape: tuple[int, ...], axes: tuple[str | None, ...]) -> nnx.Param:
    """A float32 parameter of zeros (biases)."""
    return nnx.Param(jnp.zeros(shape, jnp.float32), out_sharding=axes, eager_sharding=False)


class RMSNorm(nnx.Module):
    def __init__(self, dim: int, *, eps: float, rngs: nnx.Rngs):
        self.scale = param(rngs, (dim,), ("embed",), None)
        self.eps = eps

    def __call__(self, x_BxSxD: jax.Array) -> jax.Array:
        x = x_BxSxD.astype(jnp.float32)
        x = x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + self.eps)
        return (x * self.scale[...]).astype(x_BxSxD.dtype)


class LayerNorm(nnx.Module):
    """LayerNorm with scale and bias (GPT-2, OPT)."""

    def __init__(self, dim: int, *, eps: float, rngs: nnx.Rngs):
        self.scale = param(rngs, (dim,), ("embed",), None)
        self.bias = zeros((dim,), ("embed",))
        self.eps = eps

    def __call__(self, x_BxSxD: jax.Array) -> jax.Array:
        x = x_BxSxD.astype(jnp.float32)
        x = x - jnp.mean(x, axis=-1, keepdims=True)
        x = x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + self.eps)
        return (x * self.scale[...] + self.bias[...]).astype(x_BxSxD.dtype)


def make_norm(kind: str, dim: int, *, eps: float, rngs: nnx.Rngs) -> RMSNorm | LayerNorm:
    """`rms` (RMSNorm) or `layer` (LayerNorm)."""
    return {"rms": RMSNorm, "layer": LayerNorm}[kind](dim, eps=eps, rngs=rngs)


def apply_rope(x_BxSxHxK: jax.Array, pos_BxS: jax.Array, theta: float) -> jax.Array:
    """Rotary embedding, rotate-half layout (as in Llama), on per-document positions."""
    k = x_BxSxHxK.shape[-1]
    freq_K2 = 1.0 / (theta ** (jnp.arange(0, k, 2, dtype=jnp.float32) / k))
    ang_BxSxK2 = pos_BxS.astype(jnp.float32)[..., None] * freq_K2
    cos, sin = jnp.cos(ang_BxSxK2)[:, :, None, :], jnp.sin(ang_BxSxK2)[:, :, None, :]
    x1, x2 = jnp.split(x_BxSxHxK.astype(jnp.float32), 2, axis=-1)
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x_BxSxHxK.dtype)


def attention_mask(q_seg_BxS: jax.Array, q_idx_BxS: jax.Array, kv_seg_BxT: jax.Array,
                   kv_idx_BxT: jax.Array, kv_ok_BxT: jax.Array | None = None) -> jax.Array:
    """[B, 1, S, T] bool: same document, key not after query (by row index), key present."""
    same = q_seg_BxS[:, :, None] == kv_seg_BxT[:, None, :]
    causal = kv_idx_BxT[:, None, :] <= q_idx_BxS[:, :, None]
    mask = same & causal
    if kv_ok_BxT is not None:
        mask = mask & kv_ok_BxT[:, None, :]
    return mask[:, None]


def grouped_attention(q_BxSxHxK: jax.Array, kt_BxGxKxT: jax.Array, v_BxGxTxK: jax.Array,
                      mask_Bx1xSxT: jax.Array, own_kv: tuple | None = None) -> jax.Array:
    """Softmax attention [B, S, H, K] over the KV cache's layout: keys transposed, [B, G, K, T], and
    values [B, G, T, K]. Both matmuls are then plain [Q, K] x [K, T] and [Q, T] x [T, K] products
    that read the cache where it lies, and the softmax runs along the minor axis; with [B, T, G, K]
    keys XLA transposes the whole cache slot at every layer and decode step (see model/kv_cache.py).

    own_kv: each query's own key and value ([B, S, G, K] each), not yet in the cache: every query
    also attends to its own, so the cache can be written after it is read (the batch-1 routed
    decode step reads a slot inside lax.switch and writes it after). Without own_kv every query row
    must see at least one key.

    Query head h reads key/value head h // (H / G), as in jax.nn.dot_product_attention."""
    b, s, h, width = q_BxSxHxK.shape
    g = kt_BxGxKxT.shape[1]
    q_BxGxRxSxK = jnp.moveaxis(q_BxSxHxK.reshape(b, s, g, h // g, width), 1, 3)
    scores = jnp.einsum("bgrsk,bgkt->bgrst", q_BxGxRxSxK, kt_BxGxKxT,
                        preferred_element_type=jnp.float32) * (width ** -0.5)
    scores = jnp.where(mask_Bx1xSxT[:, :, None], scores, jnp.finfo(jnp.float32).min)
    if own_kv is None:
        probs = jax.nn.softmax(scores, axis=-1).astype(v_BxGxTxK.dtype)
        o_BxGxRxSxK = jnp.einsum("bgrst,bgtk->bgrsk", probs, v_BxGxTxK)
    else:
        own_k_BxSxGxK, own_v_BxSxGxK = own_kv
        own = jnp.einsum("bgrsk,bsgk->bgrs", q_BxGxRxSxK, own_k_BxSxGxK.astype(q_BxGxRxSxK.dtype),
                         preferred_element_type=jnp.float32) * (width ** -0.5)
        probs = jax.nn.softmax(jnp.concatenate([scores, own[..., None]], axis=-1), axis=-1)
        probs = probs.astype(v_BxGxTxK.dtype)
        o_BxGxRxSxK = (jnp.einsum("bgrst,bgtk->bgrsk", probs[..., :-1], v_BxGxTxK)
                       + probs[..., -1:] * jnp.moveaxis(own_v_BxSxGxK, 1, 2)[:, :, None].astype(
                           v_BxGxTxK.dtype))
    return jnp.moveaxis(o_BxGxRxSxK, 3, 1).reshape(b, s, h, width)


class Attention(nnx.Module):
    def __init__(self, d_model: int, n_heads: int, n_kv_heads: int, head_dim: int, *,
                 rope_theta: float, init_std: float, out_std: float, dtype, rngs: nnx.Rngs,
                 qkv_bias: bool = False, out_bias: bool = False, rope: bool = True):
        self.wq = param(rngs, (d_model, n_heads, head_dim), ("embed", "heads", "kv"), init_std)
        self.wk = param(rngs, (d_model, n_kv_heads, head_dim), ("embed", "heads", "kv"), init_std)
        self.wv = param(rngs, (d_model, n_kv_heads, head_dim), ("embed", "heads", "kv"), init_std)
        self.wo = param(rngs, (n_heads, head_dim, d_model), ("heads", "kv", "embed"), out_std)
        if qkv_bias:
            self.bq = zeros((n_heads, head_dim), ("heads", "kv"))
            self.bk = zeros((n_kv_heads, head_dim), ("heads", "kv"))
            self.bv = zeros((n_kv_heads, head_dim), ("heads", "kv"))
        self.bo = zeros((d_model,), ("embed",)) if out_bias else None
        self.qkv_bias, self.rope = qkv_bias, rope
        self.rope_theta = rope_theta
        self.dtype = dtype

    def qkv(self, x_BxSxD: jax.Array, pos_BxS: jax.Array):
        x = x_BxSxD.astype(self.dtype)
        q_BxSxHxK = jnp.einsum("bsd,dhk->bshk", x, self.wq[...].astype(self.dtype))
        k_BxSxGxK = jnp.einsum("bsd,dgk->bsgk", x, self.wk[...].astype(self.dtype))
        v_BxSxGxK = jnp.einsum("bsd,dgk->bsgk", x, self.wv[...].astype(self.dtype))
        if self.qkv_bias:
            q_BxSxHxK = q_BxSxHxK + self.bq[...].astype(self.dtype)
            k_BxSxGxK = k_BxSxGxK + self.bk[...].astype(self.dtype)
            v_BxSxGxK = v_BxSxGxK + self.bv[...].astype(self.dtype)
        q_BxSxHxK = checkpoint_name(q_BxSxHxK, "q_proj")  # names for model.remat's policies (remat.py)
        k_BxSxGxK = checkpoint_name(k_BxSxGxK, "k_proj")
        v_BxSxGxK = checkpoint_name(v_BxSxGxK, "v_proj")
        if self.rope:
            q_BxSxHxK = apply_rope(q_BxSxHxK, pos_BxS, self.rope_theta)
            k_BxSxGxK = apply_rope(k_BxSxGxK, pos_BxS, self.rope_theta)
        return q_BxSxHxK, k_BxSxGxK, v_BxSxGxK

    def attend(self, q_BxSxHxK: jax.Array, k: jax.Array, v: jax.Array, mask_Bx1xSxT: jax.Array, *,
               from_cache: bool = False, own_kv: tuple | None = None) -> jax.Array:
        """Attention output projected back to width D. Keys/values are [B, T, G, K], or with
        from_cache the KV cache's layout: keys [B, G, K, T], values [B, G, T, K] (own_kv: see
        grouped_attention)."""
        k, v = k.astype(q_BxSxHxK.dtype), v.astype(q_BxSxHxK.dtype)
        if from_cache:
            o_BxSxHxK = grouped_attention(q_BxSxHxK, k, v, mask_Bx1xSxT, own_kv)
        else:
            o_BxSxHxK = jax.nn.dot_product_attention(q_BxSxHxK, k, v, mask=mask_Bx1xSxT)
        return self.project(o_BxSxHxK)

    def project(self, o_BxSxHxK: jax.Array) -> jax.Array:
        """The heads' outputs projected back to width D (attention's only weights after q, k, v)."""
        out_BxSxD = jnp.einsum("bshk,hkd->bsd", o_BxSxHxK, self.wo[...].astype(self.dtype))
        out_BxSxD = out_BxSxD if self.bo is None else out_BxSxD + self.bo[...].astype(self.dtype)
        return checkpoint_name(out_BxSxD, "attn_out")


_ACTIVATIONS = {"gelu": lambda x: jax.nn.gelu(x, approximate=False),
                "gelu_tanh": lambda x: jax.nn.gelu(x, approximate=True), "relu": jax.nn.relu}


class MLP(nnx.Module):
    """SwiGLU: down(silu(x @ gate) * (x @ up)); or plain (gelu, gelu_tanh, relu): down(act(x @ up))."""

    def __init__(self, d_model: int, d_ff: int, *, init_std: float, out_std: float, dtype,
                 rngs: nnx.Rngs, kind: str = "swiglu", bias: bool = False):
        if kind == "swiglu":
            self.w_gate = param(rngs, (d_model, d_ff), ("embed", "mlp"), init_std)
        self.w_up = param(rngs, (d_model, d_ff), ("embed", "mlp"), init_std)
        self.w_down = param(rngs, (d_ff, d_model), ("mlp", "embed"), out_std)
        if bias:
            if kind == "swiglu":
                self.b_gate = zeros((d_ff,), ("mlp",))
            self.b_up = zeros((d_ff,), ("mlp",))
            self.b_down = zeros((d_model,), ("embed",))
        self.kind, self.bias = kind, bias
        self.dtype = dtype

    def _in(self, x, w, b):
        y = jnp.einsum("bsd,df->bsf", x, w[...].astype(self.dtype))
        return checkpoint_name(y + b[...].astype(self.dtype) if self.bias else y, "mlp_in")

    def __call__(self, x_BxSxD: jax.Array) -> jax.Array:
        x = x_BxSxD.astype(self.dtype)
        u = self._in(x, self.w_up, getattr(self, "b_up", None))
        if self.kind == "swiglu":
            u = jax.nn.silu(self._in(x, self.w_gate, getattr(self, "b_gate", None))) * u
        else:
            u = _ACTIVATIONS[self.kind](u)
        y = jnp.einsum("bsf,fd->bsd", u, self.w_down[...].astype(self.dtype))
        return checkpoint_name(y + self.b_down[...].astype(self.dtype) if self.bias else y, "mlp_out")


class Block(nnx.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then + mlp(norm(.))."""

    def __init__(self, *, d_model: int, n_heads: int, n_kv_heads: int, head_dim: int, d_ff: int,
                 rope_theta: float, norm_eps: float, init_std: float, n_residual_layers: int,
                 dtype, rngs: nnx.Rngs, norm: str = "rms", mlp: str = "swiglu", qkv_bias: bool = False,
                 out_bias: bool = False, mlp_bias: bool = False, rope: bool = True):
        out_std = init_std / (2 * n_residual_layers) ** 0.5  # GPT-2 style scaled residual init
        self.attn_norm = make_norm(norm, d_model, eps=norm_eps, rngs=rngs)
        self.attn = Attention(d_model, n_heads, n_kv_heads, head_dim, rope_theta=rope_theta,
                              init_std=init_std, out_std=out_std, dtype=dtype, rngs=rngs,
                              qkv_bias=qkv_bias, out_bias=out_bias, rope=rope)
        self.mlp_norm = make_norm(norm, d_model, eps=norm_eps, rngs=rngs)
        self.mlp = MLP(d_model, d_ff, init_std=init_std, out_std=out_std, dtype=dtype, rngs=rngs,
                       kind=mlp, bias=mlp_bias)

    def qkv(self, x_BxSxD: jax.Array, pos_BxS: jax.Array):
        """Queries, keys and values of this block's attention for tokens x."""
        return self.attn.qkv(self.attn_norm(x_BxSxD), pos_BxS)

    def attn_delta(self, q_BxSxHxK, k, v, mask_Bx1xSxT, *, from_cache: bool = False,
                   own_kv: tuple | None = None) -> jax.Array:
        """What attention adds to the residual stream (before the MLP)."""
        return self.attn.attend(q_BxSxHxK, k, v, mask_Bx1xSxT, from_cache=from_cache, own_kv=own_kv)

    def mlp_delta(self, x_BxSxD: jax.Array) -> jax.Array:
        return self.mlp(self.mlp_norm(x_BxSxD))

    def finish(self, x_BxSxD, q_BxSxHxK, k, v, mask_Bx1xSxT, *, from_cache: bool = False,
               own_kv: tuple | None = None) -> jax.Array:
        """The block's output for tokens x given their queries and the keys/values to attend to
        ([B, T, G, K], or with from_cache the KV cache's layout, see Attention.attend)."""
        h = x_BxSxD + self.attn_delta(q_BxSxHxK, k, v, mask_Bx1xSxT, from_cache=from_cache,
                                      own_kv=own_kv).astype(x_BxSxD.dtype)
        return h + self.mlp_delta(h).astype(h.dtype)

    def finish_heads(self, x_BxSxD: jax.Array, o_BxSxHxK: jax.Array) -> jax.Array:
        """`finish` from attention's heads outputs (layers.grouped_attention over keys/values this
        block did not make: batched radial decoding attends once per token, outside the pool)."""
        h = x_BxSxD + self.attn.project(o_BxSxHxK).astype(x_BxSxD.dtype)
        return h + self.mlp_delta(h).astype(h.dtype)

    def __call__(self, x_BxSxD: jax.Array, pos_BxS: jax.Array, mask_Bx1xSxS: jax.Array):
        q, k, v = self.qkv(x_BxSxD, pos_BxS)
        return self.finish(x_BxSxD, q, k, v, mask_Bx1xSxS)
