"""The grain pipeline: documents -> tokens -> packed rows of seq_len + 1 -> model batches.

Every row of the global batch (B = data.batch_size rows) is its own grain stream: the documents,
shuffled (reshuffled every epoch) and repeated forever, are dealt round-robin to the B rows (row r
takes documents r, r + B, r + 2B, ... of the shuffled order), and each row stream tokenises with
BOS/EOS, packs by concatenate-then-split, and (train) mixes a window of its packed rows. So the
batch of global step t is a function of (seed, B, t) alone, whatever the number of processes: a
process loads only its rows, and its iterator's state names each row's position, so positions saved
by any number of processes merge (`merge_positions`) and resume exactly on any other number that
divides B. Valid: the same with one fixed shuffle, so the eval batches are fixed and sample the
whole split.
A model batch is a dict of [B', S] arrays (S = seq_len, B' = this process's rows):
  inputs, targets     int32  tokens[:, :-1], tokens[:, 1:] of each packed row
  positions           int32  position inside its document piece (restarts at 0 per piece)
  segment_ids         int32  1, 2, ... per document piece in the row; 0 is padding
  loss_mask           float32 1 where the target continues the input's document (never across a
                              document boundary, never on padding)
"""

from __future__ import annotations

from typing import Any

import grain
import numpy as np

from radial_jax.config import DataConfig
from radial_jax.data.sources import DataError, Split, make_source

_VALID_SEED = 20240407
# What a process reads ahead (threads, documents), shared by the rows it loads so that more rows
# do not mean more threads and memory: grain's default thread count, and enough documents for a
# few steps of long rows without a long start.
_READ_THREADS, _READ_AHEAD = 16, 128


def _rows_of(batch_size: int, process_index: int, process_count: int) -> range:
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index={process_index} must be in [0, {process_count})")
    if batch_size % process_count:
        raise DataError(f"data.batch_size={batch_size} is not divisible by the {process_count} "
                        "processes; each process loads an equal share of the rows")
    n = batch_size // process_count
    return range(process_index * n, (process_index + 1) * n)


def _row_seed(seed: int, row: int) -> int:
    return int(np.random.SeedSequence([seed, row]).generate_state(1)[0])


def _retuple(state: Any, under_slices: bool = False) -> Any:
    """grain's packing marks an empty remainder with the tuple (-1, -1); JSON (how checkpoints keep
    states) turns tuples into lists, and a list never equals the marker, so put tuples back."""
    if isinstance(state, dict):
        return {k: _retuple(v, under_slices or k == "remainder_slices") for k, v in state.items()}
    if isinstance(state, list):
        return tuple(state) if under_slices else [_retuple(v) for v in state]
    return state


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


def row_streams(cfg: DataConfig, split: Split, *, tokenizer: Any, seed: int, rows: range,
                batch_size: int) -> dict[int, grain.IterDataset]:
    """The endless stream of packed rows [S + 1] of each row in `rows` of a `batch_size` batch."""
    # Train: shuffled before repeat, so a fresh permutation every epoch. Valid: a fixed permutation,
    # so the first eval batches sample the whole split (not only its first documents).
    order = grain.MapDataset.source(make_source(cfg, split))
    order = order.shuffle(seed=seed if split == "train" else _VALID_SEED).repeat(None)
    read = grain.ReadOptions(num_threads=max(1, _READ_THREADS // len(rows)),
                             prefetch_buffer_size=max(1, _READ_AHEAD // len(rows)))
    # The row window: data.shuffle_rows rows buffered across the whole global batch.
    window = -(-cfg.shuffle_rows // batch_size) if split == "train" and cfg.shuffle_rows > 1 else 0
    streams = {}
    for r in rows:
        ds = order[r::batch_size].filter(lambda text: len(text) > 0)
        ds = ds.map(lambda text: {"tokens": np.asarray(tokenizer.encode(text), np.int32)})
        ds = grain.experimental.ConcatThenSplitIterDataset(
            ds.to_iter_dataset(read), length_struct={"tokens": cfg.seq_len + 1})
        if window > 1:
            # A long document fills many consecutive rows of its stream; the window spreads them
            # over steps. Checkpointable like the rest.
            ds = grain.experimental.WindowShuffleIterDataset(ds, window_size=window,
                                                             seed=_row_seed(seed, r))
        streams[r] = ds
    return streams


class BatchIterator(grain.DatasetIterator):
    """This process's rows of every global batch, one grain iterator per row, as model batches.

    State: {"batch_size": B, "rows": {"<row>": that row's grain state}}; `set_state` takes any
    state holding at least this iterator's rows (e.g. the merged positions of other processes),
    as it is or read back from JSON."""

    def __init__(self, streams: dict[int, grain.IterDataset], batch_size: int):
        self._rows = {r: iter(ds) for r, ds in streams.items()}
        super().__init__(list(self._rows.values()))
        self.batch_size = batch_size

    def __next__(self) -> dict[str, np.ndarray]:
        packed = [next(it) for it in self._rows.values()]
        return to_model_batch({k: np.stack([p[k] for p in packed]) for k in packed[0]})

    def get_state(self) -> dict[str, Any]:
        return {"batch_size": self.batch_size,
                "rows": {str(r): it.get_state() for r, it in self._rows.items()}}

    def set_state(self, state: dict[str, Any]) -> None:
        have = state.get("rows", {})
        missing = [r for r in self._rows if str(r) not in have]
        if state.get("batch_size") != self.batch_size or missing:
            raise DataError(f"the data position is for data.batch_size={state.get('batch_size')} "
                            f"with rows {', '.join(sorted(have, key=int)) or 'none'}; this iterator "
                            f"loads rows {', '.join(map(str, missing))} of {self.batch_size}")
        for r, it in self._rows.items():
            it.set_state(_retuple(have[str(r)]))


def merge_positions(states: list[dict[str, Any]]) -> dict[str, Any]:
    """One global data position from the `BatchIterator` states of processes (rows held by several
    processes appear once); DataError if a state is not one (e.g. another pipeline's) or the
    batch sizes differ."""
    sizes = {s.get("batch_size") if isinstance(s, dict) and "rows" in s else None for s in states}
    if not states or None in sizes or len(sizes) > 1:
        raise DataError("the saved data positions are not per row of one global batch "
                        f"(batch sizes {sorted(map(str, sizes))})")
    rows: dict[str, Any] = {}
    for s in states:
        rows.update(s["rows"])
    return {"batch_size": sizes.pop(), "rows": dict(sorted(rows.items(), key=lambda kv: int(kv[0])))}


def make_iterator(cfg: DataConfig, split: Split, *, tokenizer: Any, seed: int, process_index: int = 0,
                  process_count: int = 1, batch_size: int | None = None) -> BatchIterator:
    """Slice `process_index` of `process_count` equal slices of the rows of every global batch
    (`batch_size`, default `cfg.batch_size`), endless; checkpointable with get_state/set_state or
    grain's orbax handler."""
    b = batch_size or cfg.batch_size
    rows = _rows_of(b, process_index, process_count)
    return BatchIterator(row_streams(cfg, split, tokenizer=tokenizer, seed=seed, rows=rows,
                                     batch_size=b), b)


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
