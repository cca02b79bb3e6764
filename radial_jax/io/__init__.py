"""Model directories in and out: the one place that knows their formats.

A model directory is one of
  - a run directory: config.yaml + orbax checkpoints/ (`radial train`), read by `run_dir`,
  - an export directory (`radial export --format safetensors`): config.json holding our whole config
    under "radial_jax" + model.safetensors named by parameter path, read and written by `export_dir`,
  - a Hugging Face directory: config.json with a `model_type` + *.safetensors, one module per
    architecture family under `hf/` with one name table for both directions (`radial export --format
    hf` writes dense models as Llama, Qwen2, GPT-2 or OPT), and radial models as transformers remote
    code (`hf_radial/`), which reads back the same way.
`load.load_model(path)` loads any of them; `export.write_export` writes the last two.
"""

from radial_jax.io.load import Loaded, detect, load_model

__all__ = ["Loaded", "detect", "load_model"]
