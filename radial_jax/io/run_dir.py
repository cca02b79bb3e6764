"""A run directory (`radial train`'s config.yaml + orbax checkpoints/) as a model: its config with
overrides, and the parameters of one checkpoint, restored alone (the optimizer state stays on disk)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
from flax import nnx

from radial_jax.config import Config, load_config
from radial_jax.errors import NotFoundError
from radial_jax.model.build import abstract_model
from radial_jax.train.checkpoint import Checkpointer, CheckpointError


def read_run(run_dir: Path, overrides=(), step: int | None = None
             ) -> tuple[Config, nnx.GraphDef, Any, int]:
    """(config, graphdef, params, step) of the run's newest (or given) checkpoint. The config is the
    run's own `config.yaml` with `overrides` applied (e.g. another data source)."""
    cfg = load_config(run_dir / "config.yaml", overrides)
    ckpt = Checkpointer(run_dir / "checkpoints", keep=cfg.train.keep_checkpoints, async_save=False,
                        read_only=True)
    steps = ckpt.all_steps()
    step = step if step is not None else ckpt.latest_step()
    if step is None:
        raise NotFoundError(f"no checkpoint in {ckpt.directory}; train first with `radial train`")
    if step not in steps:
        raise NotFoundError(f"no checkpoint for step {step} in {ckpt.directory}; it has steps "
                                f"{', '.join(map(str, sorted(steps))) or 'none'}")
    graphdef, abstract = abstract_model(cfg)
    one = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])  # whatever mesh saved it
    abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=one), abstract)
    try:
        params = ckpt.restore_params(step, abstract)
    except CheckpointError as e:
        others = sorted((s for s in steps if s != step), reverse=True)
        hint = (f"; pick another with --step (steps {', '.join(map(str, others))}), or run `radial "
                f"train` on this run dir, which resumes from the newest intact one" if others else
                "; no other checkpoint is left")
        raise CheckpointError(f"{e}{hint}") from None
    finally:
        ckpt.close()
    return cfg, graphdef, params, step
