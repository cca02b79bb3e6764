"""Accelerator chips' public figures: peak dense bf16 FLOP/s, HBM size and bandwidth, interconnect
bandwidth. Used for MFU (train loop) and for the roofline of `radial compile`.

Every figure is per chip, as its vendor publishes it (sources beside each entry). Interconnect:
the chip's total ICI bandwidth for TPUs (Gbps in Google's tables, converted to bytes/s), NVLink's
total per GPU for H100/H200. These are peaks; real collectives reach a fraction of them.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Chip:
    name: str             # short name, as in topology names (v5p:4x4x4)
    device_kinds: tuple   # jax Device.device_kind strings of this chip (lower case, exact)
    peak_bf16_flops: float  # dense bf16 FLOP/s
    hbm_bytes: float
    hbm_bytes_per_s: float
    ici_bytes_per_s: float  # interconnect between chips of a slice / NVLink domain
    source: str


GiB = 2**30
_GBPS = 1e9 / 8  # Gbit/s -> bytes/s

CHIPS: dict[str, Chip] = {c.name: c for c in (
    Chip("v4", ("tpu v4",), 275e12, 32 * GiB, 1200e9, 2400 * _GBPS,
         "https://cloud.google.com/tpu/docs/v4 (275 TFLOP/s bf16, 32 GiB HBM2 at 1200 GB/s, "
         "ICI 2400 Gbps)"),
    Chip("v5e", ("tpu v5 lite", "tpu v5e"), 197e12, 16 * GiB, 819e9, 1600 * _GBPS,
         "https://cloud.google.com/tpu/docs/v5e (197 TFLOP/s bf16, 16 GiB HBM2 at 819 GB/s, "
         "ICI 1600 Gbps)"),
    Chip("v5p", ("tpu v5", "tpu v5p"), 459e12, 95 * GiB, 2765e9, 4800 * _GBPS,
         "https://cloud.google.com/tpu/docs/v5p (459 TFLOP/s bf16, 95 GiB HBM2e at 2765 GB/s, "
         "ICI 4800 Gbps)"),
    Chip("v6e", ("tpu v6 lite", "tpu v6e"), 918e12, 32 * GiB, 1640e9, 3584 * _GBPS,
         "https://cloud.google.com/tpu/docs/v6e (918 TFLOP/s bf16, 32 GiB HBM at 1640 GB/s, "
         "ICI 3584 Gbps)"),
    Chip("h100", ("nvidia h100 80gb hbm3", "nvidia h100"), 989e12, 80e9, 3.35e12, 900e9,
         "https://www.nvidia.com/en-us/data-center/h100/ (SXM: 989 TFLOP/s dense bf16, 80 GB HBM3 "
         "at 3.35 TB/s, NVLink 900 GB/s)"),
    Chip("h200", ("nvidia h200",), 989e12, 141e9, 4.8e12, 900e9,
         "https://www.nvidia.com/en-us/data-center/h200/ (SXM: 989 TFLOP/s dense bf16, 141 GB "
         "HBM3e at 4.8 TB/s, NVLink 900 GB/s)"),
)}


def chip_for_device_kind(kind: str) -> Chip | None:
    """The chip whose jax `device_kind` this is (e.g. "TPU v5 lite" -> v5e), else None (CPU, or a
    chip not in the table)."""
    kind = kind.strip().lower()
    exact = [c for c in CHIPS.values() if kind in c.device_kinds]
    prefix = [c for c in CHIPS.values() if any(kind.startswith(k + " ") for k in c.device_kinds)]
    return (exact or prefix or [None])[0]
