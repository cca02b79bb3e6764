"""The message a finished run ends with: how it did, where its files are, and what to try next."""

from __future__ import annotations

import shlex
from pathlib import Path

from radial_jax.config import Config

GENERATE_PROMPT = "def parse(self, text):"


def run_summary(cfg: Config, run_dir: Path, last: dict[str, float], elapsed_s: float,
                checkpoints: Path) -> str:
    """Lines for the console: eval loss and (radial) mean active depth of the last eval, the files a
    newcomer opens (metrics, routing heatmap, TensorBoard) and the `radial generate` command to try."""
    m = cfg.model
    lines = [f"done in {elapsed_s:.0f}s. run dir: {run_dir}"]
    if "eval/loss" in last:
        lines.append(f"  eval loss:    {last['eval/loss']:.4f} nats/token "
                     f"({last['eval/bits_per_byte']:.3f} bits/byte)")
    if m.kind == "radial" and "eval/active_depth" in last:
        lines.append(f"  active depth: {last['eval/active_depth']:.2f} blocks per token on average "
                     f"(at most {m.prefix_layers + m.steps}: {m.prefix_layers} prefix + {m.steps} "
                     f"routing steps over a pool of {m.pool_size})")
    lines.append(f"  metrics:      {run_dir / 'metrics.jsonl'}")
    lines.append(f"  checkpoints:  {checkpoints}")
    heatmap = run_dir / "routing_heatmap.png"
    if m.kind == "radial" and heatmap.exists():
        lines.append(f"  routing:      {heatmap}  (which pool layer each token ran at each step)")
    lines.append(f"  tensorboard:  tensorboard --logdir {shlex.quote(str(run_dir / 'tensorboard'))}")
    depth = " --show-depth" if m.kind == "radial" else ""
    lines.append(f"  try:          radial generate --checkpoint {shlex.quote(str(run_dir))} "
                 f"--prompt {shlex.quote(GENERATE_PROMPT)}{depth}")
    return "\n".join(lines)
