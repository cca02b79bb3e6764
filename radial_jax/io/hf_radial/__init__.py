"""Radial models as Hugging Face transformers remote-code directories (`radial export --format hf`).

template/configuration_radial.py and template/modeling_radial.py are copied verbatim into the
export, never imported by radial_jax (they import torch and transformers; template/ is no package)."""

from radial_jax.io.hf_radial.export import HFRadialError, check_exportable, write_hf_radial

__all__ = ["HFRadialError", "check_exportable", "write_hf_radial"]
