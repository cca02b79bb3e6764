"""Model FLOP utilisation: the FLOPs the model does per token against one device's peak.

The peak comes from `train.peak_tflops` when set, else from the chips table (parallel/chips.py) by
the device kind, else (CPU, or a chip not in the table) from a float32 matmul probe, measured once
per device kind and process and cached in a JSON file beside the data cache.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp

from radial_jax.config import Config
from radial_jax.model.flops import active_train_flops, flops_per_token
from radial_jax.parallel.chips import chip_for_device_kind

_PROBED: dict[str, float] = {}


def probe_peak_flops(n: int = 1024, reps: int = 8) -> float:
    """FLOP/s of a jitted n x n float32 matmul on the default device (best of `reps`)."""
    a = jnp.ones((n, n), jnp.float32)
    mm = jax.jit(lambda x: x @ x)
    mm(a).block_until_ready()
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        mm(a).block_until_ready()
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def peak_flops(cfg: Config, device=None) -> tuple[float, str]:
    """(peak FLOP/s of one device, where the figure comes from)."""
    if cfg.train.peak_tflops > 0:
        return cfg.train.peak_tflops * 1e12, "train.peak_tflops"
    device = device or jax.devices()[0]
    chip = chip_for_device_kind(device.device_kind)
    if chip is not None:
        return chip.peak_bf16_flops, f"{chip.name} bf16 peak (parallel/chips.py)"
    kind = f"{device.platform}:{device.device_kind}"
    if kind not in _PROBED:
        cache = Path(cfg.data.cache_dir).expanduser() / "peak_flops.json"
        known = json.loads(cache.read_text()) if cache.exists() else {}
        if kind not in known:
            known[kind] = probe_peak_flops()
            cache.parent.mkdir(parents=True, exist_ok=True)
            cache.write_text(json.dumps(known, indent=2))
        _PROBED[kind] = known[kind]
    return _PROBED[kind], f"float32 matmul probe ({kind}, cached in {cfg.data.cache_dir}/peak_flops.json)"


def perf_metrics(cfg: Config, tokens_per_s: float, n_devices: int, peak: float,
                 active_depth: float | None = None) -> dict[str, float]:
    """perf/model_tflops_per_device (radial: the active FLOPs of its routes), perf/mfu against `peak`,
    and perf/compiled_tflops_per_device (what the static shapes compute, counted analytically)."""
    per_device = tokens_per_s / n_devices
    model = active_train_flops(cfg, active_depth) * per_device
    return {"perf/model_tflops_per_device": model / 1e12, "perf/mfu": model / peak,
            "perf/compiled_tflops_per_device": flops_per_token(cfg).train * per_device / 1e12}
