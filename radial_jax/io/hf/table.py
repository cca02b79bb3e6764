"""Name tables between our parameters and a Hugging Face checkpoint, read in both directions.

An architecture lists `Rule`s: an HF tensor name, the names of our tensors it holds (GPT-2's fused
c_attn holds three), and a `Codec` whose `load` makes ours from theirs and `save` theirs from ours.
Import (`load_tensors`) and export (`save_tensors`) walk the same list, so a name or a layout is
written once per architecture. Config fields go the same way through `KeyMap`s.

Shapes (letters): D model width, H heads (query or key/value, as the rule says), K head width, F MLP
width. Ours: q/k/v [D, H, K], out [H, K, D], MLP [in, out]; a torch Linear is [out, in], a GPT-2
Conv1D [in, out].
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from radial_jax.io.tensors import ExportError

Arrays = list[np.ndarray]


@dataclass(frozen=True)
class Codec:
    """Theirs -> ours (`load`: one array in, one per our name out) and ours -> theirs (`save`)."""

    load: Callable[[np.ndarray], Arrays]
    save: Callable[[Arrays], np.ndarray]


@dataclass(frozen=True)
class Rule:
    theirs: str
    ours: tuple[str, ...]
    codec: Codec
    optional: bool = False  # skipped where the source side lacks it (router parts some configs have)


SAME = Codec(lambda x: [x], lambda xs: xs[0])
TRANSPOSED = Codec(lambda x: [x.T], lambda xs: xs[0].T)  # torch Linear [out, in] <-> ours [in, out]


def heads_in(h: int) -> Codec:
    """q/k/v projection: Linear [H*K, D] <-> ours [D, H, K]."""
    return Codec(lambda x: [x.T.reshape(x.shape[1], h, -1)], lambda xs: xs[0].reshape(xs[0].shape[0], -1).T)


def heads_bias(h: int) -> Codec:
    """q/k/v bias: [H*K] <-> ours [H, K]."""
    return Codec(lambda x: [x.reshape(h, -1)], lambda xs: xs[0].reshape(-1))


def heads_out(h: int) -> Codec:
    """Attention output projection: Linear [D, H*K] <-> ours [H, K, D]."""
    return Codec(lambda x: [x.T.reshape(h, -1, x.shape[0])], lambda xs: xs[0].reshape(-1, xs[0].shape[-1]).T)


def conv_heads_out(h: int) -> Codec:
    """GPT-2's c_proj: Conv1D [H*K, D] <-> ours [H, K, D]."""
    return Codec(lambda x: [x.reshape(h, -1, x.shape[1])], lambda xs: xs[0].reshape(-1, xs[0].shape[-1]))


def fused_qkv(h: int) -> Codec:
    """GPT-2's c_attn: Conv1D [D, 3*H*K] (bias [3*H*K]) <-> ours q, k, v [D, H, K] (biases [H, K])."""
    def load(x):
        return [p.reshape(*x.shape[:-1], h, -1) for p in np.split(x, 3, axis=-1)]

    return Codec(load, lambda xs: np.concatenate([x.reshape(*x.shape[:-2], -1) for x in xs], -1))


def offset_rows(n: int) -> Codec:
    """A position table whose first `n` rows ours lacks (OPT's offset 2); export writes them as zeros."""
    def save(xs):
        return np.concatenate([np.zeros((n, *xs[0].shape[1:]), np.float32), xs[0]])

    return Codec(lambda x: [x[n:]], save)


def rule(theirs: str, ours: str | Iterable[str], codec: Codec = SAME, optional: bool = False) -> Rule:
    return Rule(theirs, (ours,) if isinstance(ours, str) else tuple(ours), codec, optional)


def load_tensors(rules: Iterable[Rule], get: Callable[[str], np.ndarray], has: Callable[[str], bool]
                 ) -> dict[str, np.ndarray]:
    """Our tensors from theirs (`get` a tensor by HF name)."""
    out: dict[str, np.ndarray] = {}
    for r in rules:
        if not (r.optional and not has(r.theirs)):
            out.update(zip(r.ours, r.codec.load(get(r.theirs)), strict=True))
    return out


def save_tensors(rules: Iterable[Rule], flat: dict[str, np.ndarray], prefix: str = ""
                 ) -> dict[str, np.ndarray]:
    """Their tensors (float32, contiguous) from our flat params; `prefix` goes before every HF name but
    the output head's (lm_head.weight sits beside the base model in every CausalLM)."""
    out = {}
    for r in rules:
        if r.optional and not all(n in flat for n in r.ours):
            continue
        name = r.theirs if r.theirs.startswith("lm_head.") else prefix + r.theirs
        out[name] = np.ascontiguousarray(r.codec.save([flat[n] for n in r.ours]), np.float32)
    return out


REQUIRED = object()


@dataclass(frozen=True)
class KeyMap:
    """One config field: ours (`section.key`) <-> theirs, with the value HF assumes when it is absent."""

    ours: str
    theirs: str
    default: object = REQUIRED


def load_keys(keys: Iterable[KeyMap], doc: dict, where: str) -> dict[str, dict]:
    """{"model": {...}, ...} from an HF config document; ExportError naming a missing required field."""
    out: dict[str, dict] = {}
    for k in keys:
        value = doc.get(k.theirs)
        if value is None and k.default is REQUIRED:
            raise ExportError(f"{where}: config.json has no {k.theirs!r}")
        section, name = k.ours.split(".")
        out.setdefault(section, {})[name] = k.default if value is None else value
    return out


def save_keys(keys: Iterable[KeyMap], values: dict[str, dict]) -> dict:
    """The HF config fields from our config by section (`common.config_values`)."""
    out = {}
    for k in keys:
        section, name = k.ours.split(".")
        out[k.theirs] = values[section][name]
    return out


def unstack(flat: dict[str, np.ndarray], prefix: str, n: int) -> dict[str, np.ndarray]:
    """`prefix.name` stacked on a leading axis of n -> `prefix.{i}.name` (others unchanged)."""
    out = {k: v for k, v in flat.items() if not k.startswith(prefix + ".")}
    for k, v in flat.items():
        if k.startswith(prefix + "."):
            out.update({f"{prefix}.{i}.{k[len(prefix) + 1:]}": v[i] for i in range(n)})
    return out


def stack(tensors: dict[str, np.ndarray], prefix: str, n: int) -> dict[str, np.ndarray]:
    """The inverse of `unstack`."""
    head = f"{prefix}.0."
    out = {k: v for k, v in tensors.items() if not k.startswith(prefix + ".")}
    for k in tensors:
        if k.startswith(head):
            name = k[len(head):]
            out[f"{prefix}.{name}"] = np.stack([tensors[f"{prefix}.{i}.{name}"] for i in range(n)])
    return out
