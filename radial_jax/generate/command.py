"""`radial generate`: continue a prompt with a trained checkpoint, streaming text to stdout."""

from __future__ import annotations

import codecs
import sys
import time
from typing import TextIO

from radial_jax.config import ConfigError
from radial_jax.generate.sampling import DEFAULT_BURST, Generator, Sampling
from radial_jax.io.load import load_model


def format_depths(pieces: list[str], depths: list[int], max_depth: int, width: int = 100) -> str:
    """`[depth] ...` summary and `'c':3` per generated token, wrapped to `width` columns."""
    mean = sum(depths) / max(len(depths), 1)
    head = (f"[depth] blocks run per generated token (of {max_depth}): mean {mean:.2f} "
            f"({100 * mean / max(max_depth, 1):.0f}%)")
    lines, line = [head], ""
    for piece, d in zip(pieces, depths, strict=True):
        item = f"{piece!r}:{d}"
        if line and len(line) + 1 + len(item) > width:
            lines.append(line)
            line = ""
        line = f"{line} {item}" if line else item
    return "\n".join(lines + ([line] if line else []))


def run_generate(checkpoint: str, prompt: str, *, max_tokens: int = 200, temperature: float = 0.8,
                 top_k: int = 0, top_p: float = 1.0, seed: int = 0, show_depth: bool = False,
                 step: int | None = None, burst: int = DEFAULT_BURST, overrides: list[str] | tuple = (),
                 out: TextIO | None = None) -> int:
    """Print the prompt, then its continuation as it is sampled; with show_depth, the blocks each
    generated token cost. Returns the number of tokens generated."""
    out = out or sys.stdout
    try:
        sampling = Sampling(temperature, top_k, top_p)  # checks the values before loading anything
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if max_tokens < 1:
        raise ConfigError(f"--max-tokens must be >= 1, got {max_tokens}")
    if burst < 1:
        raise ConfigError(f"--burst must be >= 1 tokens per call, got {burst}")
    loaded = load_model(checkpoint, overrides, step)
    cfg, tok = loaded.cfg, loaded.tokenizer
    gen = Generator(cfg, loaded.graphdef, loaded.params, burst=burst)
    utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
    pieces: list[str] = []

    generated: list[int] = []
    shown = [""]  # text already printed, for tokenizers whose tokens are not single bytes

    def on_token(row: int, token: int, depth: int) -> None:
        if tok.name == "bytes":
            text = utf8.decode(bytes([token])) if 0 <= token < 256 else ""
            pieces.append(tok.decode([token]) if 0 <= token < 256 else f"<{token}>")
        else:  # decode the whole continuation and print what is new (merges can change the tail)
            generated.append(token)
            full = tok.decode(generated)
            text = full[len(shown[0]):] if full.startswith(shown[0]) else ""
            shown[0] = full if full.startswith(shown[0]) else shown[0]
            pieces.append(tok.decode([token]))
        out.write(text)
        out.flush()

    out.write(prompt)
    out.flush()
    m = cfg.model
    prompt_ids = tok.encode(prompt, bos=True, eos=False).tolist()
    if m.positions == "learned" and len(prompt_ids) + max_tokens > m.max_positions:
        raise ConfigError(f"prompt ({len(prompt_ids)} tokens) + --max-tokens {max_tokens} exceeds the "
                          f"model's {m.max_positions} learned positions")
    t0 = time.perf_counter()
    result = gen.generate([prompt_ids], max_tokens=max_tokens,
                          sampling=sampling, seed=seed, eos_id=tok.eos_id, on_token=on_token)
    seconds = time.perf_counter() - t0
    out.write(utf8.decode(b"", final=True) + "\n")
    n = len(result.tokens[0])
    if show_depth:
        out.write(format_depths(pieces[:n], result.depth[0], gen.max_depth) + "\n")
    print(f"[{n} tokens in {seconds:.2f}s including compilation; stopped at {result.stop[0]}]",
          file=sys.stderr)
    return n
