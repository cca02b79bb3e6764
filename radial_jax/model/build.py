"""Build a model from the `model` config section."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from radial_jax.config import Config, ff_dim, head_dim
from radial_jax.model.dense import DenseLM
from radial_jax.model.radial import RadialLM


def block_kwargs(cfg: Config) -> dict:
    m = cfg.model
    return dict(d_model=m.d_model, n_heads=m.n_heads, n_kv_heads=m.n_kv_heads,
                head_dim=head_dim(m), d_ff=ff_dim(m), rope_theta=m.rope_theta, norm=m.norm, mlp=m.mlp,
                qkv_bias=m.qkv_bias, out_bias=m.out_bias, mlp_bias=m.mlp_bias, rope=m.positions == "rope")


def embed_kwargs(cfg: Config) -> dict:
    m = cfg.model
    return dict(norm=m.norm, positions=m.positions, max_positions=m.max_positions)


def build_model(cfg: Config, seed: int | None = None) -> nnx.Module:
    m = cfg.model
    rngs = nnx.Rngs(params=cfg.run.seed if seed is None else seed)
    dtype = jnp.bfloat16 if m.dtype == "bfloat16" else jnp.float32
    common = dict(vocab_size=m.vocab_size, tie_embeddings=m.tie_embeddings, init_std=m.init_std,
                  remat=m.remat, scan_layers=m.scan_layers, norm_eps=m.norm_eps, dtype=dtype,
                  block_kwargs=block_kwargs(cfg), embed_kwargs=embed_kwargs(cfg), rngs=rngs)
    if m.kind == "dense":
        return DenseLM(n_layers=m.n_layers, **common)
    return RadialLM(pool_size=m.pool_size, steps=m.steps, prefix_layers=m.prefix_layers,
                    capacity_factor=m.capacity_factor, kv_skip=m.kv_skip, router=cfg.router,
                    routing=cfg.routing, pool_gather=m.pool_gather, **common)


def abstract_model(cfg: Config) -> tuple[nnx.GraphDef, Any]:
    """The model's graph and abstract params (shapes only, nothing initialised)."""
    return nnx.split(nnx.eval_shape(lambda: build_model(cfg)), nnx.Param)


def count_params(model: nnx.Module) -> int:
    return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
