"""model.remat: what a block keeps for the backward pass and what it recomputes.

The layers name the outputs of their weight matmuls (`checkpoint_name`, names in `PROJ_NAMES`),
and the policies pick by name. A name reads the same inside the pool's `vmap` and the layers'
`scan` as outside, where a policy on dot shapes (`dots_with_no_batch_dims_saveable`) would see the
pool's vmapped matmuls as batched dots and keep nothing.

- `none`: no rematerialisation; every activation the backward pass needs is kept.
- `block`: each block keeps only its input (`nothing_saveable`) and recomputes the rest: least
  memory, about one more forward pass of compute.
- `dots`: each block keeps its weight matmuls' outputs (q, k, v, attention and MLP projections) and
  recomputes norms, RoPE, attention scores and activations: most of `none`'s speed, the attention
  scores and elementwise temporaries freed.
- `offload`: as `dots`, with the kept matmul outputs moved to the host's memory (`pinned_host`)
  until the backward pass: `block`'s HBM, less recompute, paid in host-device transfers
  (TPU and GPU; a CPU backend keeps them in place).
"""

from __future__ import annotations

from collections.abc import Callable

import jax

POLICIES = ("none", "block", "dots", "offload")
PROJ_NAMES = ("q_proj", "k_proj", "v_proj", "attn_out", "mlp_in", "mlp_out")


def policy(remat: str) -> Callable | None:
    """The `jax.checkpoint` policy of `remat` (one of POLICIES other than `none`)."""
    cp = jax.checkpoint_policies
    if remat == "block":
        return cp.nothing_saveable
    if remat == "dots":
        return cp.save_only_these_names(*PROJ_NAMES)
    if remat == "offload":
        return cp.save_and_offload_only_these_names(
            names_which_can_be_saved=[], names_which_can_be_offloaded=list(PROJ_NAMES),
            offload_src="device", offload_dst="pinned_host")
    raise ValueError(f"model.remat={remat!r}: expected one of {', '.join(POLICIES)}")


def checkpoint(fn: Callable, remat: str) -> Callable:
    """`fn` under `remat`'s policy (`none`: fn itself), for pure functions of arrays."""
    return fn if remat == "none" else jax.checkpoint(fn, policy=policy(remat))
