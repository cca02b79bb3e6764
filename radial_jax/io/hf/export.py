"""A dense model as a Hugging Face checkpoint: Llama (Qwen2), GPT-2 or OPT, whichever holds its options;
the architecture it was imported from goes first, so an imported model goes back to its own class."""

from __future__ import annotations

import numpy as np

from radial_jax.config import Config
from radial_jax.io.hf.common import HFError
from radial_jax.io.hf.gpt2 import gpt2_misfits, to_gpt2
from radial_jax.io.hf.llama import llama_misfits, to_llama
from radial_jax.io.hf.opt import opt_misfits, to_opt

# family: (what of our config it cannot hold, the writer); tried in this order
FAMILIES = {"llama": (llama_misfits, to_llama), "gpt2": (gpt2_misfits, to_gpt2), "opt": (opt_misfits, to_opt)}
FAMILY_OF = {"llama": "llama", "mistral": "llama", "qwen2": "llama", "gpt2": "gpt2", "opt": "opt"}


def to_hf(cfg: Config, flat: dict[str, np.ndarray], prefer: str | None = None
          ) -> tuple[dict, dict[str, np.ndarray]]:
    """(config.json, tensors with HF names) of a dense model; `prefer` (an HF model_type) is tried
    first. HFError naming, for every architecture, the options it cannot hold."""
    if cfg.model.kind != "dense":
        raise HFError("the Llama, GPT-2 and OPT layouts have no router or pool: radial models export as "
                      "transformers remote code (io/hf_radial)")
    first = FAMILY_OF.get(prefer or "")
    order = ([first] if first else []) + [f for f in FAMILIES if f != first]
    reasons = {}
    for family in order:
        misfits, write = FAMILIES[family]
        reasons[family] = misfits(cfg)
        if not reasons[family]:
            config, tensors = write(cfg, flat)
            config.update(torch_dtype="float32", dtype="float32")
            return config, tensors
    raise HFError("no Hugging Face architecture holds this dense model: "
                  + "; ".join(f"{f} cannot take {', '.join(why)}" for f, why in reasons.items())
                  + "; export it with --format safetensors")
