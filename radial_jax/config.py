"""Typed, validated run configuration.

A config is a YAML file that may name a `base:` file to inherit from (a path relative to itself),
plus command-line overrides `section.key=value`. The result is a frozen dataclass tree; anything
unknown, mistyped or out of range fails here, before JAX compiles anything, with a message that
names the file, the key, the value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from radial_jax.axes import MESH_AXES, parse_rule_overrides
from radial_jax.errors import UserError

BYTE_VOCAB_SIZE = 258  # the default `bytes` tokenizer's ids: 256 bytes, BOS, EOS (data/tokenizer.py)


class ConfigError(UserError, ValueError):
    """A config problem a user can fix; the message says where and how."""


def _f(default: Any, help: str, *, lo: float | None = None, hi: float | None = None,
       lo_open: bool = False) -> Any:
    """A field with a one-line meaning and an optional allowed range [lo, hi] (or (lo, hi])."""
    meta = {"help": help, "lo": lo, "hi": hi, "lo_open": lo_open}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


def _count(default: int, help: str) -> Any:
    """A field counting something, so at least 1."""
    return _f(default, help, lo=1)


@dataclass(frozen=True)
class RunConfig:
    dir: str = _f("runs/default", "where checkpoints, metrics and TensorBoard events go")
    seed: int = _f(0, "seed for parameter init and data order", lo=0)


@dataclass(frozen=True)
class ModelConfig:
    kind: Literal["dense", "radial"] = _f("dense", "dense baseline or radial (routed pool) model")
    vocab_size: int = _f(BYTE_VOCAB_SIZE, "output vocabulary; must cover the tokenizer's", lo=2)
    d_model: int = _count(256, "residual stream width")
    n_layers: int = _count(4, "dense model: number of blocks")
    n_heads: int = _count(4, "attention query heads")
    n_kv_heads: int = _count(4, "key/value heads (grouped-query attention); divides n_heads")
    head_dim: int = _f(0, "per-head width; 0 means d_model // n_heads", lo=0)
    d_ff: int = _f(0, "SwiGLU hidden width; 0 means 8/3 * d_model rounded up to a multiple of 64", lo=0)
    rope_theta: float = _f(10000.0, "RoPE base", lo=1.0)
    norm_eps: float = _f(1e-6, "RMSNorm / LayerNorm epsilon", lo=0.0, lo_open=True)
    tie_embeddings: bool = _f(True, "share the input embedding with the output head")
    init_std: float = _f(0.02, "std of normal initialisers", lo=0.0, lo_open=True)
    dtype: Literal["float32", "bfloat16"] = _f("float32", "compute dtype (params stay float32)")
    # Architecture options (imported GPT-2 / OPT / Qwen2 checkpoints); the defaults are Llama-style.
    norm: Literal["rms", "layer"] = _f("rms", "RMSNorm, or LayerNorm with a bias (GPT-2, OPT)")
    mlp: Literal["swiglu", "gelu", "gelu_tanh", "relu"] = _f(
        "swiglu", "MLP: gated SwiGLU, or a plain one with this activation (GPT-2 gelu_tanh, OPT relu)")
    qkv_bias: bool = _f(False, "biases on the query/key/value projections (Qwen2, GPT-2, OPT)")
    out_bias: bool = _f(False, "bias on the attention output projection (GPT-2, OPT)")
    mlp_bias: bool = _f(False, "biases on the MLP projections (GPT-2, OPT)")
    positions: Literal["rope", "learned"] = _f("rope", "RoPE in attention, or a learned table added to "
                                                       "the embedding (GPT-2, OPT)")
    max_positions: int = _count(2048, "learned positions: table size; data.seq_len must not exceed it")
    # Radial model (model.kind: radial).
    pool_size: int = _count(4, "radial: P, number of pool layers")
    steps: int = _count(4, "radial: T, routing steps = the deepest a token can go")
    prefix_layers: int = _f(0, "radial: dense blocks every token runs before routing", lo=0)
    capacity_factor: float = _f(1.0, "radial: C = ceil(capacity_factor * seq_len / pool_size)",
                                lo=0.0, lo_open=True)
    kv_skip: Literal["mask", "carry"] = _f(
        "mask", "radial: at a step, positions not processed are masked or carry their latest K/V")
    remat: Literal["none", "block", "dots", "offload"] = _f(
        "none", "what each block (prefix blocks and pool layers) keeps for the backward pass: block "
                "recomputes everything (least memory, about one more forward pass), dots keeps the weight "
                "matmuls' outputs, offload keeps them in host memory (model/remat.py)")
    pool_gather: Literal["once", "per_step"] = _f(
        "once", "radial: FSDP gathers the pool's weights once per train step (kept for the whole step) "
                "or at every routing step (less memory, T times the collectives)")
    scan_layers: bool = _f(
        False, "run the dense blocks, the radial prefix blocks and the routing steps as scans: compile "
               "time and program size stay flat in depth (same parameters, same results)")


@dataclass(frozen=True)
class RouterConfig:
    hidden: int = _count(64, "router MLP hidden width")
    per_step: bool = _f(True, "one router per routing step (else one router + a step embedding)")
    init: Literal["sequential", "uniform", "random"] = _f(
        "sequential", "logit bias at init: toward step t -> layer t, flat, or none")
    init_bias: float = _f(2.0, "size of the sequential init bias", lo=0.0)
    skip_bias: float = _f(0.0, "extra logit bias for the skip choice at init")


@dataclass(frozen=True)
class RoutingConfig:
    policy: Literal["token_choice", "expert_choice", "fixed"] = _f(
        "token_choice", "token picks a layer (causal), layer picks tokens (MoD), or step t -> layer t")
    top_k: int = _count(1, "token_choice: layers per token per step")
    reuse: Literal["allow", "forbid"] = _f("allow", "may a token visit the same pool layer twice")
    skip: Literal["allow", "forbid", "learned"] = _f(
        "allow", "may a token skip a step (forbid: depth is set by capacity alone, overflow still passes "
                 "through; learned: as forbid in training, while P(skip) learns to predict capacity's "
                 "verdict, and at inference, with no capacity, a token skips when P(skip) > 0.5)")
    skip_predict_weight: float = _f(0.1, "skip: learned: weight of the skip predictor's cross-entropy",
                                    lo=0.0)
    order: Literal["free", "monotonic"] = _f("free", "monotonic: layer index never decreases")
    schedule: Literal["free", "sequential"] = _f(
        "free", "sequential: step t may use only pool layer t mod P, and runs only that layer (the fixed "
                "block order of Mixture-of-Depths)")
    route_every: int = _count(
        1, "route only every k-th step (steps k-1, 2k-1, ...); the others run every token through their "
           "scheduled layer with gate 1 (Mixture-of-Depths: 2); needs schedule: sequential")
    early_exit: bool = _f(False, "a token not processed at a step is not processed at any later step "
                                 "(Mixture-of-Recursions: the router sets each token's number of recursions)")
    load_balance_weight: float = _f(0.01, "Switch load-balance loss weight", lo=0.0)
    z_loss_weight: float = _f(1e-3, "router z-loss weight", lo=0.0)
    compute_weight: float = _f(0.0, "weight of the compute-target loss (0 = off)", lo=0.0)
    compute_target: float = _f(0.5, "target mean active fraction of routed steps", lo=0.0, hi=1.0)
    balance_rate: float = _f(
        0.0, "aux-loss-free balancing (DeepSeek-V3): each training step moves a per-layer bias on "
             "the layer choice by this much against the layer's load error (0 = off)", lo=0.0)
    gate: Literal["prob", "straight_through"] = _f(
        "prob", "block delta scale: the router probability, or 1 with the probability's gradient")


@dataclass(frozen=True)
class DataConfig:
    source: Literal["builtin", "text", "tfds"] = _f(
        "builtin", "embedded stdlib corpus, your text files, or a prepared TFDS dataset")
    seq_len: int = _f(256, "tokens per packed row", lo=2)
    batch_size: int = _count(16, "global batch size in rows")
    tokenizer: str = _f("bytes", "bytes (256 byte ids + BOS + EOS), or the path of a Hugging Face "
                                 "tokenizer.json")
    cache_dir: str = _f("~/.cache/radial_jax", "where the builtin corpus is built and cached")
    train_files: list = _f([], "text source: globs of .txt (one doc per file) or .jsonl (`text` field)")
    valid_files: list = _f([], "text source: globs for the validation split")
    tfds_name: str = _f("", "tfds source: dataset name, e.g. my_corpus or my_corpus/config:1.0.0")
    tfds_data_dir: str = _f("", "tfds source: data_dir holding the prepared dataset ('' = TFDS default)")
    tfds_text_key: str = _f("text", "tfds source: feature holding the text")
    tfds_train_split: str = _f("train", "tfds source: training split")
    tfds_valid_split: str = _f("validation", "tfds source: validation split")
    valid_percent: float = _f(5.0, "builtin source: percent of documents (by path hash) held out",
                              lo=0.0, hi=50.0, lo_open=True)
    shuffle_seed: int = _f(0, "seed of the per-epoch document shuffle", lo=0)
    shuffle_rows: int = _f(2048, "train: packed rows mixed in a shuffle window, so a batch draws "
                                 "on many documents (0 = off)", lo=0)
    streams: int = _f(0, "data streams the batch is dealt from; a run resumes on any process count "
                         "dividing it (0 = one per process of the run that starts it)", lo=0)


@dataclass(frozen=True)
class TrainConfig:
    steps: int = _count(1000, "optimizer steps")
    lr: float = _f(3e-3, "peak learning rate", lo=0.0, lo_open=True)
    warmup_steps: int = _f(100, "linear warmup steps", lo=0)
    min_lr_ratio: float = _f(0.1, "final lr as a fraction of the peak (cosine decay)", lo=0.0, hi=1.0)
    weight_decay: float = _f(0.1, "AdamW decoupled weight decay, matrices only", lo=0.0)
    b1: float = _f(0.9, "Adam beta1", lo=0.0, hi=1.0)
    b2: float = _f(0.95, "Adam beta2", lo=0.0, hi=1.0)
    eps: float = _f(1e-8, "Adam epsilon", lo=0.0, lo_open=True)
    grad_clip: float = _f(1.0, "global-norm gradient clipping (0 = off)", lo=0.0)
    log_every: int = _count(10, "steps between metric lines")
    eval_every: int = _count(200, "steps between validation evals (and at the end)")
    eval_batches: int = _count(8, "validation batches per eval")
    checkpoint_every: int = _count(200, "steps between checkpoints (and at the end)")
    keep_checkpoints: int = _count(3, "checkpoints kept")
    on_nonfinite: Literal["skip", "stop"] = _f(
        "skip", "a step with NaN/inf loss or gradients: skip its update (counted) or stop the run")
    max_nonfinite: int = _count(10, "skip: stop anyway after this many non-finite steps in a row")
    peak_tflops: float = _f(0.0, "peak TFLOP/s of one device for perf/mfu (0 = the chip's from "
                                 "parallel/chips.py; on CPU, measured once by a matmul probe)", lo=0.0)


@dataclass(frozen=True)
class MeshConfig:
    data: int = _f(-1, "data-parallel devices: the batch is split, parameters replicated (-1 = the rest)",
                   lo=-1)
    fsdp: int = _f(1, "fully sharded data parallel: batch split, params and optimizer state split on embed",
                   lo=-1)
    tensor: int = _f(1, "tensor parallel: attention heads, MLP width and vocabulary split", lo=-1)
    pool: int = _f(1, "pool (layer) parallel: the radial pool's layers live on different devices", lo=-1)
    rules: Literal["auto", "data_parallel", "fsdp", "fsdp_tensor", "pool_parallel"] = _f(
        "auto", "logical -> mesh axis rules preset; auto picks from the axes that are > 1")
    rules_override: list = _f([], "rules replaced or added, `logical=mesh_axis[+axis]` or `logical=none`")


@dataclass(frozen=True)
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    router: RouterConfig = field(default_factory=RouterConfig)
    routing: RoutingConfig = field(default_factory=RoutingConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    mesh: MeshConfig = field(default_factory=MeshConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


# --------------------------------------------------------------------------- loading


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        doc = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: a config must be a mapping of sections, got {type(doc).__name__}")
    return doc


def _merge(base: dict, top: dict, origin: dict, src: str, prefix: str = "") -> None:
    """Deep-merge `top` into `base` in place, recording which file set each leaf key."""
    for k, v in top.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            _merge(base[k], v, origin, src, key + ".")
        else:
            base[k] = v
            origin[key] = src
            if isinstance(v, dict):
                for sub in _leaf_keys(v, key + "."):
                    origin[sub] = src


def _leaf_keys(d: dict, prefix: str) -> list[str]:
    out = []
    for k, v in d.items():
        out.extend(_leaf_keys(v, f"{prefix}{k}.") if isinstance(v, dict) else [f"{prefix}{k}"])
    return out


def _load_chain(path: Path, origin: dict, seen: tuple = ()) -> dict:
    path = path.expanduser()
    if path.resolve() in seen:
        raise ConfigError(f"{path}: `base:` inheritance loops back on itself ({' -> '.join(map(str, seen))})")
    doc = _read_yaml(path)
    base_ref = doc.pop("base", None)
    merged: dict = {}
    if base_ref is not None:
        if not isinstance(base_ref, str):
            raise ConfigError(f"{path}: `base:` must be a path string, got {base_ref!r}")
        base_path = (path.parent / base_ref)
        if not base_path.is_file():
            raise ConfigError(f"{path}: base config not found: {base_path}")
        merged = _load_chain(base_path, origin, seen + (path.resolve(),))
    _merge(merged, doc, origin, str(path))
    return merged


def parse_override(text: str) -> tuple[str, Any]:
    """`model.d_model=128` -> ("model.d_model", 128); the value is read as YAML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.key=value (e.g. train.steps=200)")
    key, raw = text.split("=", 1)
    key = key.strip()
    if key.count(".") != 1 or not all(key.split(".")):
        raise ConfigError(f"override {text!r}: key must be section.key, e.g. model.d_model")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key, value


def _number_or_same(value: Any) -> Any:
    """YAML 1.1 reads `1e-3` as a string; users mean a number."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def load_config(path: str | Path | None = None, overrides: list[str] | tuple = ()) -> Config:
    """Read a YAML file (with its `base:` chain), apply `section.key=value` overrides, validate."""
    origin: dict[str, str] = {}
    raw = _load_chain(Path(path), origin) if path is not None else {}
    return from_dict(apply_overrides(raw, overrides, origin), origin)


def apply_overrides(raw: dict, overrides, origin: dict | None = None) -> dict:
    """`raw` (nested dicts, changed in place) with each `section.key=value` set; `origin` records them."""
    for text in overrides:
        key, value = parse_override(text)
        section, name = key.split(".")
        raw.setdefault(section, {})
        if not isinstance(raw[section], dict):
            raise ConfigError(f"command line: section {section!r} is not a mapping in the config file")
        raw[section][name] = value
        if origin is not None:
            origin[key] = "command line"
    return raw


def from_dict(raw: dict, origin: dict | None = None) -> Config:
    """Build and validate a Config from nested dicts (as saved in a run dir)."""
    origin = origin or {}
    sections = {f.name: f for f in dataclasses.fields(Config)}
    built = {}
    for sec_name, sec_val in raw.items():
        if sec_name not in sections:
            where = _where(origin, sec_name)
            raise ConfigError(f"{where}unknown section {sec_name!r}{_suggest(sec_name, sections)}")
        if not isinstance(sec_val, dict):
            raise ConfigError(f"{_where(origin, sec_name)}section {sec_name!r} must be a mapping, "
                              f"got {sec_val!r}")
        built[sec_name] = build_checked(sections[sec_name].default_factory, sec_val, origin,
                                        f"{sec_name}.")
    cfg = Config(**built)
    _check_cross_fields(cfg)
    return cfg


def _where(origin: dict | str, key: str) -> str:
    if isinstance(origin, str):  # one file set every key
        return f"{origin}: "
    src = origin.get(key) or next((v for k, v in origin.items() if k.startswith(key + ".")), None)
    return f"{src}: " if src else ""


def _closest(name: str, valid) -> str | None:
    """The valid name a typo most likely meant: a close spelling, else a shared prefix."""
    close = difflib.get_close_matches(name, list(valid), n=1, cutoff=0.5)
    if close:
        return close[0]
    prefixed = [v for v in valid if name.startswith(v) or v.startswith(name)]
    return max(prefixed, key=len) if prefixed else None


def _suggest(name: str, valid) -> str:
    close = _closest(name, valid)
    return f"; did you mean {close!r}?" if close else f"; valid: {', '.join(sorted(valid))}"


def build_checked(cls: type, values: dict, origin: dict | str, prefix: str = "") -> Any:
    """The frozen dataclass `cls` from a mapping, checked as config sections are: an unknown key names
    the closest valid one; each value is checked against its field's type and range (nested
    dataclasses, lists of them, and `dict` fields too). Messages name keys `prefix + name` and where
    they came from: `origin` maps keys to files, or is the one file that set them all."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in values.items():
        key = f"{prefix}{name}"
        if name not in fields:
            close = _closest(str(name), fields)
            hint = f"; did you mean '{prefix}{close}'?" if close else \
                f"; valid keys{' in ' + prefix[:-1] if prefix else ''}: {', '.join(fields)}"
            raise ConfigError(f"{_where(origin, key)}unknown key '{key}'{hint}")
        kwargs[name] = _check_value(key, value, hints[name], fields[name].metadata, origin)
    return cls(**kwargs)


def _check_value(key: str, value: Any, typ: Any, meta: Any, origin: dict | str) -> Any:
    where = _where(origin, key)
    origin_t = typing.get_origin(typ)
    if dataclasses.is_dataclass(typ):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}{key}={value!r} must be a mapping with keys "
                              f"{', '.join(f.name for f in dataclasses.fields(typ))}")
        return build_checked(typ, value, origin, f"{key}.")
    if typ is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}{key}={value!r} must be a mapping")
        return value
    if origin_t is list and typing.get_args(typ) != (str,):  # numbers or dataclasses: check each
        item = typing.get_args(typ)[0]
        if isinstance(value, list):
            return [_check_value(f"{key}[{i}]", v, item, meta, origin) for i, v in enumerate(value)]
        if dataclasses.is_dataclass(item):
            raise ConfigError(f"{where}{key}={value!r} must be a list")
        return [_check_value(key, value, item, meta, origin)]  # one value stands for a list of one
    if origin_t is Literal:
        choices = typing.get_args(typ)
        if value not in choices:
            raise ConfigError(f"{where}{key}={value!r} is not allowed; choose one of "
                              f"{', '.join(map(repr, choices))}")
        return value
    if typ is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}{key}={value!r} must be true or false")
        return value
    if typ is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}{key}={value!r} must be an integer")
    elif typ is float:
        value = _number_or_same(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}{key}={value!r} must be a number")
        if not math.isfinite(value):
            raise ConfigError(f"{where}{key}={value!r} must be finite")
    elif typ is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}{key}={value!r} must be a string")
    elif typ is list or origin_t is list:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{where}{key}={value!r} must be a list of strings")
        return value
    elif isinstance(typ, types.UnionType):  # pragma: no cover - not used by the schema yet
        return value
    lo, hi = meta.get("lo"), meta.get("hi")
    if lo is not None and (value < lo or (meta.get("lo_open") and value == lo)):
        bound = f"> {lo}" if meta.get("lo_open") else f">= {lo}"
        raise ConfigError(f"{where}{key}={value!r} is out of range; it must be {bound}"
                          + (f" and <= {hi}" if hi is not None else ""))
    if hi is not None and value > hi:
        raise ConfigError(f"{where}{key}={value!r} is out of range; it must be <= {hi}")
    return float(value) if typ is float else value


def _check_cross_fields(cfg: Config) -> None:
    m, d = cfg.model, cfg.data
    _check_mesh(cfg)
    if m.n_heads % m.n_kv_heads:
        raise ConfigError(f"model.n_kv_heads={m.n_kv_heads} must divide model.n_heads={m.n_heads}")
    if m.head_dim == 0 and m.d_model % m.n_heads:
        raise ConfigError(f"model.d_model={m.d_model} is not divisible by model.n_heads={m.n_heads}; "
                          "set model.head_dim explicitly or change one of them")
    if head_dim(m) % 2:
        raise ConfigError(f"head dim {head_dim(m)} must be even for RoPE (model.head_dim / d_model)")
    if m.positions == "learned" and d.seq_len > m.max_positions:
        raise ConfigError(f"data.seq_len={d.seq_len} exceeds model.max_positions={m.max_positions}, the "
                          "size of the learned position table; lower data.seq_len")
    if d.tokenizer == "bytes" and m.vocab_size < BYTE_VOCAB_SIZE:  # a tokenizer.json: data/tokenizer.py
        raise ConfigError(f"model.vocab_size={m.vocab_size} is smaller than the 'bytes' tokenizer's "
                          f"{BYTE_VOCAB_SIZE} ids; set model.vocab_size >= {BYTE_VOCAB_SIZE}")
    if d.source == "text" and not d.train_files:
        raise ConfigError("data.source=text needs data.train_files (a list of globs)")
    if d.source == "tfds" and not d.tfds_name:
        raise ConfigError("data.source=tfds needs data.tfds_name")
    if m.kind == "radial":
        r = cfg.routing
        if r.top_k > m.pool_size:
            raise ConfigError(f"routing.top_k={r.top_k} exceeds model.pool_size={m.pool_size}")
        if r.route_every > 1 and r.schedule != "sequential":
            raise ConfigError(f"routing.route_every={r.route_every} runs unrouted steps through their "
                              "scheduled layer, so it needs routing.schedule=sequential")
        if r.schedule == "sequential" and r.top_k != 1:
            raise ConfigError(f"routing.schedule=sequential leaves one layer per step, so routing.top_k="
                              f"{r.top_k} must be 1")
        if r.schedule == "sequential" and cfg.mesh.pool > 1:
            raise ConfigError(f"routing.schedule=sequential runs one pool layer per step, which cannot be "
                              f"split over mesh.pool={cfg.mesh.pool} devices; set mesh.pool=1")
        if r.schedule == "sequential" and m.scan_layers:
            raise ConfigError("model.scan_layers=true runs every routing step as the same program, but "
                              "routing.schedule=sequential gives each step its own layer (and route_every "
                              "its own rule); set model.scan_layers=false")
        if r.policy == "fixed" and m.steps > m.pool_size:
            raise ConfigError(f"routing.policy=fixed maps step t to layer t, so model.steps={m.steps} "
                              f"must be <= model.pool_size={m.pool_size}")


def _check_mesh(cfg: Config) -> None:
    """Axis sizes are >= 1 or -1 (at most one); pool parallelism splits the pool evenly; overrides parse."""
    mesh = cfg.mesh
    sizes = {a: getattr(mesh, a) for a in MESH_AXES}
    for axis, size in sizes.items():
        if size == 0 or size < -1:
            raise ConfigError(f"mesh.{axis}={size} must be a device count >= 1, or -1 for the rest")
    rest = [a for a, s in sizes.items() if s == -1]
    if len(rest) > 1:
        raise ConfigError(f"only one mesh axis may be -1 (the rest of the devices); got "
                          f"{', '.join(f'mesh.{a}=-1' for a in rest)}")
    if cfg.model.kind == "radial" and mesh.pool > 1 and cfg.model.pool_size % mesh.pool:
        raise ConfigError(f"mesh.pool={mesh.pool} must divide model.pool_size={cfg.model.pool_size} "
                          "(each device group holds an equal share of the pool layers)")
    try:
        parse_rule_overrides(mesh.rules_override)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def head_dim(m: ModelConfig) -> int:
    return m.head_dim or m.d_model // m.n_heads


def ff_dim(m: ModelConfig) -> int:
    if m.d_ff:
        return m.d_ff
    return int(math.ceil(8 * m.d_model / 3 / 64) * 64)


def describe_keys() -> dict[str, str]:
    """Every config key with its meaning; `base.yaml` and the README mirror this."""
    out = {}
    for sec in dataclasses.fields(Config):
        for f in dataclasses.fields(sec.default_factory):  # type: ignore[arg-type]
            out[f"{sec.name}.{f.name}"] = f.metadata.get("help", "")
    return out
