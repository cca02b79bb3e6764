"""Language-model loss: token cross-entropy masked at document boundaries and padding."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def token_nll(logits_BxSxV: jax.Array, targets_BxS: jax.Array) -> jax.Array:
    """Per-token negative log-likelihood in nats, float32 [B, S]."""
    return optax.softmax_cross_entropy_with_integer_labels(
        logits_BxSxV.astype(jnp.float32), targets_BxS)


def masked_sum_and_count(nll_BxS: jax.Array, mask_BxS: jax.Array) -> tuple[jax.Array, jax.Array]:
    m = mask_BxS.astype(jnp.float32)
    return jnp.sum(nll_BxS * m), jnp.sum(m)
