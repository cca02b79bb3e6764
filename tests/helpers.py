"""Small shared builders for tests: tiny configs, packed batches, copies in compiled HLO."""

from __future__ import annotations

import os
import re

import jax.numpy as jnp
import numpy as np

from radial_jax.config import load_config

TINY = ["model.d_model=32", "model.n_layers=2", "model.n_heads=4", "model.n_kv_heads=2",
        "model.d_ff=64", "data.seq_len=32", "data.batch_size=4", "train.warmup_steps=2",
        "train.steps=10"]


def device_env(devices: int, **extra: str) -> dict:
    """The environment for a subprocess that sees `devices` virtual CPU devices (XLA reads the flag
    only when JAX starts), keeping the suite's other XLA flags and dropping any launcher variables."""
    flags = os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={devices}"
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": flags.strip(), **extra}
    for key in ("RADIAL_COORDINATOR", "RADIAL_NUM_PROCESSES", "RADIAL_PROCESS_ID"):
        env.pop(key, None)
    return env


def tiny_config(*overrides: str):
    return load_config(None, [*TINY, *overrides])


def run_cfg(run_dir, corpus_cache, *extra):
    """A tiny training config that logs every step and evaluates every 4 steps into `run_dir`."""
    return load_config(None, [*TINY, f"run.dir={run_dir}", f"data.cache_dir={corpus_cache}",
                              "train.log_every=1", "train.eval_every=4", "train.eval_batches=2",
                              "train.checkpoint_every=100", *extra])


def packed_batch(doc_lengths_per_row: list[list[int]], seq_len: int, seed: int = 0, vocab: int = 258):
    """A batch whose rows pack documents of the given lengths (then padding), as the pipeline does."""
    rng = np.random.default_rng(seed)
    b = len(doc_lengths_per_row)
    tokens = rng.integers(0, 256, (b, seq_len + 1)).astype(np.int32)
    seg = np.zeros((b, seq_len + 1), np.int32)
    pos = np.zeros((b, seq_len + 1), np.int32)
    for r, lengths in enumerate(doc_lengths_per_row):
        i = 0
        for d, n in enumerate(lengths):
            seg[r, i:i + n] = d + 1
            pos[r, i:i + n] = np.arange(n)
            i += n
        tokens[r, i:] = 0
    return {
        "inputs": jnp.asarray(tokens[:, :-1]), "targets": jnp.asarray(tokens[:, 1:]),
        "positions": jnp.asarray(pos[:, :-1]), "segment_ids": jnp.asarray(seg[:, :-1]),
        "loss_mask": jnp.asarray((seg[:, :-1] == seg[:, 1:]) & (seg[:, :-1] != 0)),
    }


def f32_copies(hlo: str) -> list[tuple[int, ...]]:
    """Shapes of the float32 arrays a compiled program's HLO text copies."""
    found = re.findall(r"= f32\[([\d,]+)\]\{[\d,]*\} copy\(", hlo)
    return [tuple(int(d) for d in shape.split(",")) for shape in found]
