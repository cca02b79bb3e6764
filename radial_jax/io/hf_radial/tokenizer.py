"""Tokenizer files of an exported model, so that `AutoTokenizer.from_pretrained(dir)` encodes text
as `radial generate` does (BOS, then the text's tokens).

A run on a Hugging Face tokenizer.json ships that file. A run on bytes (ids 0..255 the UTF-8 bytes,
then BOS and EOS) ships a tokenizer.json built here with the `tokenizers` library: a byte-level
pre-tokenizer (each byte becomes one printable character), a BPE model with those 256 characters
as its vocabulary at their byte's id and no merges, so every byte stays one token, and <bos>/<eos>
as special tokens at 256/257.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from radial_jax.data.tokenizer import ByteTokenizer

BOS, EOS = "<bos>", "<eos>"


def byte_level_chars() -> list[str]:
    """The character the byte-level pre-tokenizer maps each byte 0..255 to: printable Latin-1
    bytes stand for themselves, the other bytes take code points 256, 257, ... in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = [], 0
    for b in range(256):
        if b in printable:
            chars.append(chr(b))
        else:
            chars.append(chr(256 + extra))
            extra += 1
    return chars


def byte_tokenizer_json(bos_id: int, eos_id: int) -> str:
    """tokenizer.json text of the byte tokenizer (ids = bytes, BOS/EOS special)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

    vocab = {c: b for b, c in enumerate(byte_level_chars())}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    specials = sorted([(bos_id, BOS), (eos_id, EOS)])
    tok.add_special_tokens([AddedToken(name, special=True) for _, name in specials])
    got = {name: tok.token_to_id(name) for _, name in specials}
    if got != {BOS: bos_id, EOS: eos_id}:
        raise ValueError(f"byte tokenizer: special tokens landed at {got}, expected {BOS}={bos_id}, "
                         f"{EOS}={eos_id}")
    tok.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", pair=f"{BOS} $A $B",
                                                       special_tokens=[(BOS, bos_id)])
    return tok.to_str()


def is_byte_tokenizer(path: Path) -> bool:
    """Whether `path` is the tokenizer.json this module writes for the byte tokenizer (so a model
    read back from an export runs on bytes, as it was trained)."""
    want = byte_tokenizer_json(ByteTokenizer.bos_id, ByteTokenizer.eos_id)
    return path.stat().st_size == len(want.encode()) and path.read_text() == want


def write_tokenizer_files(tokenizer, out: Path) -> dict[str, Path]:
    """tokenizer.json and tokenizer_config.json of our tokenizer in `out` (by role)."""
    files = {"tokenizer": out / "tokenizer.json", "tokenizer_config": out / "tokenizer_config.json"}
    path = getattr(tokenizer, "path", None)  # a Hugging Face tokenizer.json
    if path is not None:
        if Path(path).resolve() != files["tokenizer"].resolve():
            shutil.copyfile(path, files["tokenizer"])
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(files["tokenizer"]))
        bos, eos = (None if i is None else tok.id_to_token(i) for i in (tokenizer.bos_id, tokenizer.eos_id))
    else:
        files["tokenizer"].write_text(byte_tokenizer_json(tokenizer.bos_id, tokenizer.eos_id))
        bos, eos = BOS, EOS
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "padding_side": "left",
              "model_max_length": 1_000_000_000}
    config.update({k: v for k, v in (("bos_token", bos), ("eos_token", eos), ("pad_token", eos))
                   if v is not None})
    files["tokenizer_config"].write_text(json.dumps(config, indent=2) + "\n")
    return files
