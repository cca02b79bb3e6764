"""A radial model as a Hugging Face transformers remote-code directory.

`write_hf_radial` writes config.json (with `auto_map`, so `AutoModelForCausalLM.from_pretrained(dir,
trust_remote_code=True)` finds the classes), configuration_radial.py and modeling_radial.py (copied
verbatim from template/: the one template of the PyTorch model), model.safetensors with torch
names and layouts (layout.py), generation_config.json, and the tokenizer files (tokenizer.py).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from radial_jax.config import Config, ConfigError
from radial_jax.io.hf.common import misfits
from radial_jax.io.hf_radial.layout import FIXED, hf_config, hf_tensors
from radial_jax.io.hf_radial.tokenizer import write_tokenizer_files

# Not a package (no __init__.py): radial_jax never imports these files, which import torch.
TEMPLATE_DIR = Path(__file__).parent / "template"
TEMPLATES = ("configuration_radial.py", "modeling_radial.py")


class HFRadialError(ConfigError):
    """A radial model the transformers export cannot hold; the message names the option."""


def check_exportable(cfg: Config) -> None:
    """HFRadialError naming every option of `cfg` that the PyTorch template does not implement."""
    m, r = cfg.model, cfg.routing
    if m.kind != "radial":
        raise HFRadialError(f"the radial transformers export needs model.kind=radial, got {m.kind!r}")
    unsupported = misfits(m, FIXED)
    if r.policy == "expert_choice":
        unsupported.append("routing.policy='expert_choice' (not causal: it cannot decode token by token)")
    unsupported += [f"routing.{k}={getattr(r, k)!r}" for k, ok in (
        ("schedule", "free"), ("route_every", 1), ("early_exit", False)) if getattr(r, k) != ok]
    if unsupported:
        raise HFRadialError("the radial transformers export (Llama-style blocks, token_choice or fixed "
                            "routing) cannot hold a model with " + ", ".join(unsupported)
                            + "; export it with --format safetensors")


def special_token_ids(tokenizer) -> dict:
    """bos/eos/pad ids for config.json and generation_config.json; pad is EOS when the tokenizer
    has no pad token of its own (a finished sequence in a batch is filled with it)."""
    ids = {"bos_token_id": tokenizer.bos_id, "eos_token_id": tokenizer.eos_id}
    ids["pad_token_id"] = getattr(tokenizer, "pad_id", None) or tokenizer.eos_id
    return {k: v for k, v in ids.items() if v is not None}


def write_hf_radial(cfg: Config, flat: dict[str, np.ndarray], out_dir: str | Path, *,
                    tokenizer=None) -> dict[str, Path]:
    """Write the remote-code directory of a radial model (flat params as export.flat_params makes
    them) to `out_dir`; returns the files written by role."""
    check_exportable(cfg)
    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    files = {"config": out / "config.json", "weights": out / "model.safetensors"}
    ids = {} if tokenizer is None else special_token_ids(tokenizer)
    files["config"].write_text(json.dumps(hf_config(cfg, ids), indent=2) + "\n")
    save_file(hf_tensors(cfg, flat), str(files["weights"]), metadata={"format": "pt"})
    for name in TEMPLATES:
        files[name.removesuffix(".py")] = out / name
        shutil.copyfile(TEMPLATE_DIR / name, out / name)
    if tokenizer is not None:
        files["generation_config"] = out / "generation_config.json"
        files["generation_config"].write_text(json.dumps(special_token_ids(tokenizer), indent=2) + "\n")
        files.update(write_tokenizer_files(tokenizer, out))
    return files
