"""The grain pipeline: documents -> tokens -> packed rows of seq_len + 1 -> model batches.

The global batch (B = data.batch_size rows) is dealt from S data streams (data.streams; by default
one per batch shard of the run that starts it, kept when it resumes): stream s takes documents s,
s + S, s + 2S, ... of the shuffled order and fills rows s * B/S .. (s + 1) * B/S - 1 of every batch.
Each stream is a grain pipeline: shuffle (reshuffled every epoch), repeat forever, take its
documents, tokenise with BOS/EOS, concatenate-then-split into rows, mix a window of data.shuffle_rows
rows (train), batch its B/S rows. A process loads the streams of its rows (S / processes of them), so
the batches depend on (seed, B, S) and the step only: positions saved per stream by N processes
(`merge_positions`) resume exactly on any number of processes that divides S. Valid: one stream with
a fixed shuffle, so the eval batches are fixed and sample the whole split.
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
# What a process reads ahead (grain's defaults for one stream: threads, documents), shared by the
# streams it loads so that more streams do not mean more threads and memory.
_READ_THREADS, _READ_AHEAD = 16, 500


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


def make_stream(cfg: DataConfig, split: Split, *, tokenizer: Any, seed: int, stream: int,
                stream_count: int, rows: int, read: grain.ReadOptions | None = None
                ) -> grain.IterDataset:
    """The endless model batches of `rows` rows from data stream `stream` of `stream_count`."""
    ds = grain.MapDataset.source(make_source(cfg, split))
    # Train: before repeat, so a fresh permutation every epoch. Valid: a fixed permutation, so the
    # first eval batches sample the whole split (not only its first documents) and never change.
    ds = ds.shuffle(seed=seed if split == "train" else _VALID_SEED)
    # Forever, so a tiny split still fills any number of batches; streams take interleaved docs.
    ds = ds.repeat(None)[stream::stream_count]
    ds = ds.filter(lambda text: len(text) > 0)
    ds = ds.map(lambda text: {"tokens": np.asarray(tokenizer.encode(text), np.int32)})
    ds = ds.to_iter_dataset(read)
    ds = grain.experimental.ConcatThenSplitIterDataset(ds, length_struct={"tokens": cfg.seq_len + 1})
    if split == "train" and cfg.shuffle_rows > 1:
        # Consecutive rows come from the same long document; mixing a window of rows makes each
        # batch draw on many documents (lower-variance gradients). Checkpointable like the rest.
        ds = grain.experimental.WindowShuffleIterDataset(ds, window_size=cfg.shuffle_rows, seed=seed)
    return ds.batch(rows, drop_remainder=True).map(to_model_batch)


class BatchIterator(grain.DatasetIterator):
    """This process's rows of every global batch: one grain iterator per data stream it loads,
    their rows side by side.

    State: {"batch_size": B, "stream_count": S, "streams": {"<s>": stream s's grain state}};
    `set_state` takes any state holding at least this iterator's streams (e.g. the merged
    positions of other processes), as it is or read back from JSON."""

    def __init__(self, streams: dict[int, grain.IterDataset], stream_count: int, batch_size: int):
        self._streams = {s: iter(ds) for s, ds in streams.items()}
        super().__init__(list(self._streams.values()))
        self.stream_count, self.batch_size = stream_count, batch_size

    def __next__(self) -> dict[str, np.ndarray]:
        parts = [next(it) for it in self._streams.values()]
        if len(parts) == 1:
            return parts[0]
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    def get_state(self) -> dict[str, Any]:
        return {"batch_size": self.batch_size, "stream_count": self.stream_count,
                "streams": {str(s): it.get_state() for s, it in self._streams.items()}}

    def set_state(self, state: dict[str, Any]) -> None:
        have = state.get("streams", {})
        missing = [s for s in self._streams if str(s) not in have]
        if state.get("stream_count") != self.stream_count or missing:
            raise DataError(f"the data position has {state.get('stream_count')} streams (saved: "
                            f"{', '.join(sorted(have, key=int)) or 'none'}); this iterator reads "
                            f"streams {', '.join(map(str, self._streams))} of {self.stream_count}")
        for s, it in self._streams.items():
            it.set_state(_retuple(have[str(s)]))


def merge_positions(saved: list[tuple[int, int, Any]]) -> dict[str, Any]:
    """One global data position from what each process saved: (process index, process count,
    state). A `BatchIterator` state names its streams; a bare grain state (one stream per process,
    as saved before streams were named) is stream `index` of `count`. DataError if the stream
    counts disagree."""
    counts, streams = set(), {}
    for index, count, state in saved:
        if not (isinstance(state, dict) and "streams" in state):
            state = {"stream_count": count, "streams": {str(index): state}}
        counts.add(state["stream_count"])
        streams.update(state["streams"])
    if len(counts) != 1:
        raise DataError(f"the saved data positions disagree on the number of streams "
                        f"({', '.join(map(str, sorted(counts))) or 'none saved'})")
    return {"stream_count": counts.pop(),
            "streams": dict(sorted(streams.items(), key=lambda kv: int(kv[0])))}


def make_iterator(cfg: DataConfig, split: Split, *, tokenizer: Any, seed: int, process_index: int = 0,
                  process_count: int = 1, batch_size: int | None = None,
                  streams: int | None = None) -> BatchIterator:
    """Slice `process_index` of `process_count` equal slices of the rows of every global batch
    (`batch_size`, default `cfg.batch_size`) dealt from `streams` data streams (default
    `cfg.streams`, else one per process); endless, checkpointable with get_state/set_state or
    grain's orbax handler."""
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index={process_index} must be in [0, {process_count})")
    b = batch_size or cfg.batch_size
    n = streams or cfg.streams or process_count
    if b % n:
        raise DataError(f"data.batch_size={b} is not divisible by the {n} data streams "
                        "(data.streams, default one per process); each stream fills an equal share")
    if n % process_count:
        options = [str(d) for d in range(1, n + 1) if n % d == 0]
        options = ", ".join(options[:-1]) + f" or {options[-1]}" if len(options) > 1 else options[0]
        raise DataError(
            f"the {n} data streams of this run (data.streams; by default one per process of the run "
            f"that started it) cannot be divided among {process_count} processes (batch shards): "
            f"run on {options} processes to resume it exactly, or start a run with "
            f"data.streams set to a multiple of {process_count}")
    k = n // process_count
    read = grain.ReadOptions(num_threads=max(1, _READ_THREADS // k),
                             prefetch_buffer_size=max(1, _READ_AHEAD // k))
    mine = range(process_index * k, (process_index + 1) * k)
    return BatchIterator({s: make_stream(cfg, split, tokenizer=tokenizer, seed=seed, stream=s,
                                         stream_count=n, rows=b // n, read=read) for s in mine},
                         n, b)


def make_eval_batches(cfg: DataConfig, tokenizer: Any, n_batches: int, *, process_index: int = 0,
                      process_count: int = 1, batch_size: int | None = None) -> list[dict]:
    """The first `n_batches` validation batches (one stream): the same every call, however small
    the split."""
    it = make_iterator(cfg, "valid", tokenizer=tokenizer, seed=0, process_index=process_index,
                       process_count=process_count, batch_size=batch_size, streams=process_count)
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
