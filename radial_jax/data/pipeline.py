"""The grain pipeline: documents -> tokens -> packed rows of seq_len + 1 -> model batches.

Train: shuffle (reshuffled every epoch), repeat forever, shard by process, tokenise with BOS/EOS,
concatenate-then-split into rows, batch. Valid: the same with one fixed shuffle, so the eval batches
are fixed and sample the whole split.
A model batch is a dict of [B, S] arrays (S = seq_len, B = batch_size / process_count):
  inputs, targets     int32  tokens[:, :-1], tokens[:, 1:] of each packed row
  positions           int32  position inside its document piece (restarts at 0 per piece)
  segment_ids         int32  1, 2, ... per document piece in the row; 0 is padding
  loss_mask           float32 1 where the target continues the input's document (never across a
                              document boundary, never on padding)
The iterator's state (`get_state`/`set_state`, or grain's orbax handler) resumes it exactly.
"""

from __future__ import annotations

from typing import Any

import grain
import numpy as np

from radial_jax.config import DataConfig
from radial_jax.data.sources import DataError, Split, make_source

_VALID_SEED = 20240407


def _per_process_batch(cfg: DataConfig, process_count: int, batch_size: int | None) -> int:
    global_batch = batch_size or cfg.batch_size
    if global_batch % process_count:
        raise DataError(f"data.batch_size={global_batch} is not divisible by the {process_count} "
                        "processes; each process loads an equal share")
    return global_batch // process_count


def to_model_batch(packed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Packed rows [B, S + 1] (`tokens`, `tokens_segment_ids`, `tokens_positions`) -> model batch."""
    tokens, seg, pos = packed["tokens"], packed["tokens_segment_ids"], packed["tokens_positions"]
    same_doc = (seg[:, :-1] == seg[:, 1:]) & (seg[:, :-1] != 0)
    return {
        "inputs": tokens[:, :-1].astype(np.int32),
        "targets": tokens[:, 1:].astype(np.int32),
        "positions": pos[:, :-1].astype(np.int32),
        "segment_ids": seg[:, :-1].astype(np.int32),
        "loss_mask": same_doc.astype(np.float32),
    }


def make_dataset(cfg: DataConfig, split: Split, *, tokenizer: Any, seed: int, process_index: int = 0,
                 process_count: int = 1, batch_size: int | None = None) -> grain.IterDataset:
    """The endless stream of this process's model batches for `split` (see the module docstring).

    `batch_size` overrides `cfg.batch_size` (the global batch, split evenly across processes).
    """
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index={process_index} must be in [0, {process_count})")
    per_process = _per_process_batch(cfg, process_count, batch_size)
    ds = grain.MapDataset.source(make_source(cfg, split))
    # Train: before repeat, so a fresh permutation every epoch. Valid: a fixed permutation, so the
    # first eval batches sample the whole split (not only its first documents) and never change.
    ds = ds.shuffle(seed=seed if split == "train" else _VALID_SEED)
    # Forever, so a tiny split still fills any number of batches; processes take interleaved docs.
    ds = ds.repeat(None)[process_index::process_count]
    ds = ds.filter(lambda text: len(text) > 0)
    ds = ds.map(lambda text: {"tokens": np.asarray(tokenizer.encode(text), np.int32)})
    ds = ds.to_iter_dataset()
    ds = grain.experimental.ConcatThenSplitIterDataset(ds, length_struct={"tokens": cfg.seq_len + 1})
    if split == "train" and cfg.shuffle_rows > 1:
        # Consecutive rows come from the same long document; mixing a window of rows makes each
        # batch draw on many documents (lower-variance gradients). Checkpointable like the rest.
        ds = grain.experimental.WindowShuffleIterDataset(ds, window_size=cfg.shuffle_rows, seed=seed)
    return ds.batch(per_process, drop_remainder=True).map(to_model_batch)


def make_iterator(cfg: DataConfig, split: Split, *, tokenizer: Any, seed: int, process_index: int = 0,
                  process_count: int = 1, batch_size: int | None = None) -> grain.DatasetIterator:
    """`iter(make_dataset(...))`: checkpointable with get_state/set_state or grain's orbax handler."""
    return iter(make_dataset(cfg, split, tokenizer=tokenizer, seed=seed, process_index=process_index,
                             process_count=process_count, batch_size=batch_size))


def make_eval_batches(cfg: DataConfig, tokenizer: Any, n_batches: int, *, process_index: int = 0,
                      process_count: int = 1, batch_size: int | None = None) -> list[dict]:
    """The first `n_batches` validation batches: the same every call, however small the split."""
    it = make_iterator(cfg, "valid", tokenizer=tokenizer, seed=0, process_index=process_index,
                       process_count=process_count, batch_size=batch_size)
    return [next(it) for _ in range(n_batches)]


def describe(cfg: DataConfig, split: Split | None = None) -> str:
    """One line for the run log, e.g. "data: builtin, 1747 train docs (29.4 MB), 89 valid docs"."""
    parts = []
    for s in ([split] if split else ["train", "valid"]):
        src = make_source(cfg, s)
        size = getattr(src, "text_bytes", None)
        parts.append(f"{len(src)} {s} docs" + (f" ({size / 1e6:.1f} MB)" if size is not None else ""))
    name = {"builtin": "builtin (Python stdlib sources + help topics)",
            "text": f"text files {', '.join(cfg.train_files)}",
            "tfds": f"tfds {cfg.tfds_name}"}[cfg.source]
    return f"data: {name}, {', '.join(parts)}"
