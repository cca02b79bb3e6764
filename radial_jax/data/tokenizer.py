"""Tokenizers. The default is bytes: ids 0..255 are the UTF-8 bytes, then BOS and EOS; no files needed.
A Hugging Face tokenizer.json (an imported model's own) is the other choice."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np

from radial_jax.config import BYTE_VOCAB_SIZE, Config, ConfigError


class ByteTokenizer:
    """UTF-8 bytes as ids, plus BOS=256 and EOS=257."""

    name = "bytes"
    bos_id = 256
    eos_id = 257
    vocab_size = BYTE_VOCAB_SIZE

    def encode(self, text: str, *, bos: bool = True, eos: bool = True) -> np.ndarray:
        ids = np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int32)
        parts = ([np.array([self.bos_id], np.int32)] if bos else []) + [ids] + (
            [np.array([self.eos_id], np.int32)] if eos else [])
        return np.concatenate(parts)

    def decode(self, ids) -> str:
        data = bytes(int(i) for i in np.asarray(ids).reshape(-1) if 0 <= int(i) < 256)
        return data.decode("utf-8", errors="replace")

    def token_bytes(self) -> np.ndarray:
        """[vocab] number of text bytes each id stands for (0 for specials): for bits per byte."""
        out = np.zeros(self.vocab_size, np.int32)
        out[:256] = 1
        return out


class HFTokenizer:
    """A Hugging Face `tokenizer.json` (through the `tokenizers` library) with our encode/decode API.

    BOS/EOS ids come from the `config.json` beside the file (bos_token_id, eos_token_id), else from
    `tokenizer_config.json` (bos_token, eos_token), else from common special-token names; a tokenizer
    without them adds none."""

    name = "hf"

    def __init__(self, path: str | Path):
        try:
            from tokenizers import Tokenizer
        except ImportError:
            raise ValueError(f"{path}: reading a tokenizer.json needs the `tokenizers` package "
                             "(pip install tokenizers)") from None
        p = Path(path).expanduser()
        if p.is_dir():
            p = p / "tokenizer.json"
        if not p.is_file():
            raise ValueError(f"tokenizer file not found: {p} (data.tokenizer is 'bytes' or the path of "
                             "a tokenizer.json)")
        try:
            self._tok = Tokenizer.from_file(str(p))
        except Exception as e:  # the library raises plain Exceptions for malformed files
            raise ValueError(f"{p}: not a tokenizer.json the `tokenizers` library reads: {e}") from None
        self.path = p
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
        self.bos_id, self.eos_id = self._special_ids(p.parent)

    def _special_ids(self, folder: Path) -> tuple[int | None, int | None]:
        ids: dict[str, int | None] = {"bos": None, "eos": None}
        cfg, tcfg = folder / "config.json", folder / "tokenizer_config.json"
        if cfg.is_file():
            doc = json.loads(cfg.read_text())
            for k in ids:
                v = doc.get(f"{k}_token_id")
                ids[k] = v[0] if isinstance(v, list) and v else v if isinstance(v, int) else None
        if tcfg.is_file():
            doc = json.loads(tcfg.read_text())
            for k in ids:
                tok = doc.get(f"{k}_token")
                tok = tok.get("content") if isinstance(tok, dict) else tok
                if ids[k] is None and isinstance(tok, str):
                    ids[k] = self._tok.token_to_id(tok)
        common = {"bos": ("<s>", "<|begin_of_text|>", "<|endoftext|>", "<bos>"),
                  "eos": ("</s>", "<|end_of_text|>", "<|endoftext|>", "<eos>")}
        for k, names in common.items():
            for name in names:
                if ids[k] is None:
                    ids[k] = self._tok.token_to_id(name)
        return ids["bos"], ids["eos"]

    def encode(self, text: str, *, bos: bool = True, eos: bool = True) -> np.ndarray:
        ids = self._tok.encode(text, add_special_tokens=False).ids
        ids = ([self.bos_id] if bos and self.bos_id is not None else []) + ids + (
            [self.eos_id] if eos and self.eos_id is not None else [])
        return np.asarray(ids, np.int32)

    def decode(self, ids) -> str:
        return self._tok.decode([int(i) for i in np.asarray(ids).reshape(-1)], skip_special_tokens=True)

    def token_bytes(self) -> np.ndarray:
        """[vocab] UTF-8 bytes of each id's text (0 for special tokens): for bits per byte."""
        pieces = self._tok.decode_batch([[i] for i in range(self.vocab_size)], skip_special_tokens=True)
        return np.asarray([len(t.encode("utf-8")) for t in pieces], np.int32)


_TOKENIZERS = {"bytes": ByteTokenizer}


def tokenizer_for(cfg: Config) -> ByteTokenizer | HFTokenizer:
    """`data.tokenizer` of a config, checked against `model.vocab_size` (it must cover every id)."""
    try:
        tok = get_tokenizer(cfg.data.tokenizer)
    except ValueError as e:
        raise ConfigError(f"data.tokenizer={cfg.data.tokenizer!r}: {e}") from None
    if cfg.model.vocab_size < tok.vocab_size:
        raise ConfigError(f"model.vocab_size={cfg.model.vocab_size} is smaller than the "
                          f"{cfg.data.tokenizer!r} tokenizer's {tok.vocab_size} ids; set "
                          f"model.vocab_size >= {tok.vocab_size}")
    return tok


@functools.lru_cache(maxsize=8)
def _hf_tokenizer(path: str) -> HFTokenizer:
    return HFTokenizer(path)


def get_tokenizer(name: str) -> ByteTokenizer | HFTokenizer:
    """'bytes', or the path of a Hugging Face tokenizer.json (or of the folder holding one)."""
    if name in _TOKENIZERS:
        return _TOKENIZERS[name]()
    if name.endswith(".json") or "/" in name or Path(name).expanduser().exists():
        return _hf_tokenizer(str(Path(name).expanduser().absolute()))
    raise ValueError(f"unknown tokenizer {name!r}; choose 'bytes' or give the path of a tokenizer.json")
