"""`radial export`: write a model as safetensors + config.json, in our layout or Hugging Face's."""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.numpy import save_file

from radial_jax.config import Config
from radial_jax.io.export_dir import WEIGHTS, export_layout
from radial_jax.io.hf.export import to_hf
from radial_jax.io.hf_radial import write_hf_radial
from radial_jax.io.load import load_model
from radial_jax.io.tensors import ExportError, flat_params

FORMATS = ("safetensors", "hf")


def export(src: str | Path, out_dir: str | Path, *, fmt: str = "safetensors",
           step: int | None = None) -> dict[str, Path]:
    """Write the model of a run (or export, or HF) directory to `out_dir`; returns the files written."""
    loaded = load_model(src, step=step)
    return write_export(loaded.cfg, loaded.params, out_dir, fmt=fmt, step=loaded.step, origin=str(src),
                        tokenizer=loaded.tokenizer, arch=loaded.arch)


def write_export(cfg: Config, params, out_dir: str | Path, *, fmt: str = "safetensors",
                 step: int | None = None, origin: str = "", tokenizer=None, arch: str | None = None
                 ) -> dict[str, Path]:
    """safetensors + config.json of a model: our layout (`safetensors`), or Hugging Face's (`hf`): remote
    code for radial models, Llama/Qwen2, GPT-2 or OPT for dense ones (`arch`, the model_type it was
    imported from, first)."""
    tok_file = getattr(tokenizer, "path", None)  # a tokenizer.json travels with the weights
    if fmt == "safetensors":
        config, tensors, metadata = export_layout(cfg, params, step=step, origin=origin,
                                                  tokenizer_file=tok_file, arch=arch)
    elif fmt == "hf" and cfg.model.kind == "radial":  # transformers remote code (docs/hf-export.md)
        return write_hf_radial(cfg, flat_params(params), out_dir, tokenizer=tokenizer)
    elif fmt == "hf":
        config, tensors = to_hf(cfg, flat_params(params), prefer=arch)
        if tokenizer is not None:
            config.update(bos_token_id=tokenizer.bos_id, eos_token_id=tokenizer.eos_id)
        metadata = {"format": "pt"}  # what transformers expects of a safetensors file
    else:
        raise ExportError(f"unknown export format {fmt!r}; choose {' or '.join(FORMATS)}")
    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    files = {"config": out / "config.json", "weights": out / WEIGHTS}
    files["config"].write_text(json.dumps(config, indent=2) + "\n")
    save_file(tensors, str(files["weights"]), metadata=metadata)
    if tok_file is not None and Path(tok_file).resolve() != (out / "tokenizer.json").resolve():
        files["tokenizer"] = out / "tokenizer.json"
        files["tokenizer"].write_bytes(Path(tok_file).read_bytes())
    return files
