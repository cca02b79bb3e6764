"""Radial models as Hugging Face transformers remote-code directories (`radial export --format hf`).

configuration_radial.py and modeling_radial.py are templates: copied verbatim into the export, never
imported by radial_jax (they import torch and transformers)."""

from radial_jax.io.hf_radial.export import HFRadialError, check_exportable, write_hf_radial

__all__ = ["HFRadialError", "check_exportable", "write_hf_radial"]
