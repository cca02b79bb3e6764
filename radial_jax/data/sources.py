"""Random-access document sources for grain: `len(src)` documents, `src[i]` -> `str`.

Three kinds, picked by `data.source`:
- builtin: the stdlib corpus built by `corpus.py` (ArrayRecord, cached).
- text: your files. `data.train_files` / `data.valid_files` are globs (`~` expanded, `**` allowed).
  `.jsonl`: one document per line, from its `text` field; any other file (`.txt`, ...): one
  document per file, UTF-8. Files are indexed up front (byte offsets, not text) so errors surface
  before training. With no `valid_files`, documents are held out by a sha1 hash of their path
  (`file` or `file:line`, relative to the common folder of all files), `valid_percent` percent,
  at least one document on each side.
- tfds: a TFDS dataset prepared as ArrayRecord, read with `tfds.data_source`.
Problems a user can fix raise `DataError` naming the config key, file and line.
"""

from __future__ import annotations

import functools
import glob
import json
import os
from pathlib import Path
from typing import Literal, Protocol

import numpy as np

from radial_jax.config import DataConfig
from radial_jax.data import corpus
from radial_jax.errors import UserError

Split = Literal["train", "valid"]


class DataError(UserError, ValueError):
    """A data problem a user can fix; the message names the file (and line) and what to do."""


class Source(Protocol):
    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> str: ...


def _as_text(value) -> str:
    if isinstance(value, np.ndarray):
        value = value.item()
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


# --------------------------------------------------------------------------- builtin


class BuiltinSource:
    """One split of the stdlib corpus; `path(i)` names the document (e.g. `stdlib/json/decoder.py`)."""

    def __init__(self, records, text_bytes: int):
        self._records = records
        self.text_bytes = text_bytes

    def __len__(self) -> int:
        return len(self._records)

    def __getitem__(self, index: int) -> str:
        return _as_text(self._records[int(index)]["text"])

    def path(self, index: int) -> str:
        return _as_text(self._records[int(index)]["path"])


@functools.lru_cache(maxsize=4)
def _builtin_builder(cache_dir: str, valid_percent: float):
    return corpus.corpus_builder(cache_dir, valid_percent)  # builds or reuses once per process


def builtin_source(cfg: DataConfig, split: Split) -> BuiltinSource:
    try:
        builder = _builtin_builder(cfg.cache_dir, cfg.valid_percent)
    except OSError as e:
        raise DataError(f"data.cache_dir={cfg.cache_dir!r}: cannot build or read the builtin corpus "
                        f"there ({e.strerror or e}: {e.filename or cfg.cache_dir}); set data.cache_dir "
                        "to a writable folder") from None
    tfds_split = corpus.SPLITS[split]
    src = BuiltinSource(corpus.corpus_split(builder, split),
                        int(builder.info.metadata["text_bytes"][tfds_split]))
    if not len(src):
        raise DataError(f"the builtin corpus has no {split} documents at data.valid_percent="
                        f"{cfg.valid_percent:g}; raise data.valid_percent")
    return src


# --------------------------------------------------------------------------- text files


class TextSource:
    """Documents in text files, located by (file, byte offset, byte length); read on access."""

    def __init__(self, files: list[str], file_ids: np.ndarray, offsets: np.ndarray,
                 lengths: np.ndarray, jsonl: np.ndarray, keys: list[str]):
        self.files, self.keys = files, keys
        self._file_ids, self._offsets, self._lengths, self._jsonl = file_ids, offsets, lengths, jsonl

    def __len__(self) -> int:
        return len(self._file_ids)

    @property
    def text_bytes(self) -> int:
        """Bytes on disk of the documents (whole JSON lines for .jsonl)."""
        return int(self._lengths.sum())

    def __getitem__(self, index: int) -> str:
        f = int(self._file_ids[index])
        with open(self.files[f], "rb") as fh:
            fh.seek(int(self._offsets[index]))
            raw = fh.read(int(self._lengths[index]))
        return json.loads(raw)["text"] if self._jsonl[f] else raw.decode("utf-8")

    def subset(self, indices) -> TextSource:
        indices = np.asarray(indices, dtype=np.int64)
        return TextSource(self.files, self._file_ids[indices], self._offsets[indices],
                          self._lengths[indices], self._jsonl, [self.keys[i] for i in indices])


def _expand_globs(patterns: list[str], key: str) -> list[str]:
    files: set[str] = set()
    for pattern in patterns:
        path = os.path.expanduser(pattern)
        if glob.has_magic(path):
            matched = [p for p in glob.glob(path, recursive=True) if os.path.isfile(p)]
            if not matched:
                raise DataError(f"data.{key}: no file matches {pattern!r} "
                                f"(relative paths are from {os.getcwd()})")
            files.update(matched)
        elif os.path.isdir(path):
            raise DataError(f"data.{key}: {pattern!r} is a folder; name files with a glob such as "
                            f"'{pattern.rstrip('/')}/**/*.txt'")
        elif not os.path.isfile(path):
            raise DataError(f"data.{key}: file not found: {pattern!r} "
                            f"(relative paths are from {os.getcwd()})")
        else:
            files.add(path)
    if not files:
        raise DataError(f"data.{key} is empty; list globs of .txt or .jsonl files")
    return sorted(os.path.abspath(p) for p in files)


def _index_jsonl(path: str, out: list) -> None:
    """Append (offset, length, line number) of each non-blank line, checking it has a `text` string."""
    offset = 0
    with open(path, "rb") as fh:
        for lineno, line in enumerate(fh, 1):
            start, offset = offset, offset + len(line)
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except UnicodeDecodeError:
                raise DataError(f"{path}:{lineno}: not valid UTF-8; re-encode the file as UTF-8") from None
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{lineno}: not a JSON object ({e.msg}); each line of a .jsonl "
                                "file must be one object like {\"text\": \"...\"}") from None
            if not isinstance(record, dict) or "text" not in record:
                have = f"keys: {', '.join(map(str, record))}" if isinstance(record, dict) else \
                    f"a {type(record).__name__}"
                raise DataError(f"{path}:{lineno}: no \"text\" field ({have}); each line of a .jsonl "
                                "file must be an object with a \"text\" string")
            if not isinstance(record["text"], str):
                raise DataError(f"{path}:{lineno}: \"text\" is a {type(record['text']).__name__}, "
                                "not a string")
            if record["text"]:
                out.append((start, len(line), lineno))


_TEXT_CACHE: dict[tuple, TextSource] = {}


def text_source(patterns: list[str], key: str) -> TextSource:
    """Index every document in the files matched by `patterns` (config key `data.<key>`).

    Indexes are cached per process while the matched files keep their size and mtime.
    """
    files = _expand_globs(patterns, key)
    stamp = (key, tuple((f, os.stat(f).st_size, os.stat(f).st_mtime_ns) for f in files))
    if stamp not in _TEXT_CACHE:
        if len(_TEXT_CACHE) >= 8:
            _TEXT_CACHE.pop(next(iter(_TEXT_CACHE)))
        _TEXT_CACHE[stamp] = _index_files(files, key)
    return _TEXT_CACHE[stamp]


def _index_files(files: list[str], key: str) -> TextSource:
    root = os.path.commonpath([os.path.dirname(f) for f in files])
    jsonl = np.array([f.endswith(".jsonl") for f in files])
    docs: list[tuple[int, int, int, str]] = []  # (file id, byte offset, byte length, hold-out key)
    undecodable = []
    for i, path in enumerate(files):
        rel = Path(os.path.relpath(path, root)).as_posix()
        try:
            if jsonl[i]:
                lines: list = []
                _index_jsonl(path, lines)
                docs += [(i, start, length, f"{rel}:{lineno}") for start, length, lineno in lines]
                continue
            raw = Path(path).read_bytes()
        except OSError as e:
            raise DataError(f"data.{key}: cannot read {path} ({e.strerror}); make it readable by this "
                            "user, or leave it out of the globs") from None
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            undecodable.append(path)
            continue
        if text.strip():
            docs.append((i, 0, len(raw), rel))
    if undecodable:
        print(f"warning: data.{key}: skipped {len(undecodable)} of {len(files)} files that are not "
              f"valid UTF-8 (first: {undecodable[0]}); re-encode them to include them", flush=True)
    if not docs:
        raise DataError(f"data.{key}: the {len(files)} matched files hold no documents (all empty"
                        f"{' or not UTF-8' if undecodable else ''}): {', '.join(files[:3])}"
                        f"{' ...' if len(files) > 3 else ''}")
    file_ids, offsets, lengths, keys = zip(*docs, strict=True)
    return TextSource(files, np.array(file_ids, np.int32), np.array(offsets, np.int64),
                      np.array(lengths, np.int64), jsonl, list(keys))


def hold_out(src: TextSource, split: Split, valid_percent: float) -> TextSource:
    """The train or valid part of `src`, held out by path hash with at least one document each."""
    if len(src) < 2:
        raise DataError(f"data.train_files holds {len(src)} document ({src.files[0]}), too few to "
                        "hold out a validation split; set data.valid_files, or give more documents "
                        "(one per .txt file, one per .jsonl line)")
    valid = corpus.held_out_indices(src.keys, valid_percent)
    valid_set = set(valid)
    keep = valid if split == "valid" else [i for i in range(len(src)) if i not in valid_set]
    return src.subset(sorted(keep))


# --------------------------------------------------------------------------- tfds


class TfdsSource:
    """One split of a prepared TFDS dataset, its `text_key` feature as the document."""

    def __init__(self, records, text_key: str):
        self._records, self._key = records, text_key

    def __len__(self) -> int:
        return len(self._records)

    def __getitem__(self, index: int) -> str:
        return _as_text(self._records[int(index)][self._key])


def tfds_source(cfg: DataConfig, split: Split) -> TfdsSource:
    import tensorflow_datasets as tfds

    split_key = "tfds_train_split" if split == "train" else "tfds_valid_split"
    tfds_split = getattr(cfg, split_key)
    data_dir = os.path.expanduser(cfg.tfds_data_dir) if cfg.tfds_data_dir else None
    where = f"data_dir {data_dir!r}" if data_dir else "the TFDS default data_dir ($TFDS_DATA_DIR or " \
        "~/tensorflow_datasets; set data.tfds_data_dir)"
    try:
        records = tfds.data_source(cfg.tfds_name, split=tfds_split, data_dir=data_dir, download=False)
    except Exception as e:  # TFDS raises several types for "not there"; all mean the same to a user
        said = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if said.startswith("Unknown split"):
            raise DataError(f"data.{split_key}={tfds_split!r}: dataset {cfg.tfds_name!r} has no such "
                            f"split ({said})") from None
        raise DataError(
            f"data.tfds_name={cfg.tfds_name!r} is not a dataset prepared as ArrayRecord in {where} "
            f"(TFDS: {said}). Prepare it first, e.g. `tfds build {cfg.tfds_name} "
            f"--file_format=array_record{f' --data_dir={data_dir}' if data_dir else ''}` or "
            "`builder.download_and_prepare()` on a builder made with file_format='array_record'"
        ) from None
    features = sorted(records.dataset_info.features.keys())
    if cfg.tfds_text_key not in features:
        raise DataError(f"data.tfds_text_key={cfg.tfds_text_key!r} is not a feature of "
                        f"{cfg.tfds_name!r}; available features: {', '.join(features)}")
    src = TfdsSource(records, cfg.tfds_text_key)
    probe = np.unique(np.linspace(0, len(src) - 1, num=min(len(src), 64)).astype(int)) if len(src) else []
    if not any(src[i] for i in probe):
        raise DataError(f"data.{split_key}={tfds_split!r} of {cfg.tfds_name!r}: "
                        + (f"the {len(probe)} documents sampled from {cfg.tfds_text_key!r} are all empty"
                           if len(src) else "no examples"))
    return src


# --------------------------------------------------------------------------- entry point


def make_source(cfg: DataConfig, split: Split) -> Source:
    """The documents of `split` ("train" or "valid") for `cfg.source`."""
    if split not in ("train", "valid"):
        raise ValueError(f"split must be 'train' or 'valid', got {split!r}")
    if cfg.source == "builtin":
        return builtin_source(cfg, split)
    if cfg.source == "tfds":
        return tfds_source(cfg, split)
    if cfg.source == "text":
        if not cfg.train_files:
            raise DataError("data.source=text needs data.train_files (a list of globs)")
        if cfg.valid_files:
            return text_source(cfg.train_files if split == "train" else cfg.valid_files,
                               "train_files" if split == "train" else "valid_files")
        return hold_out(text_source(cfg.train_files, "train_files"), split, cfg.valid_percent)
    raise ValueError(f"unknown data.source {cfg.source!r}")
