"""A picture of routing, drawn at every eval of a radial run: for a sample of text, which pool layer
each token used at each step, as a TensorBoard image and routing_heatmap.png in the run dir."""

from __future__ import annotations

import io
from functools import partial
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from radial_jax.train.metrics import MetricWriter


@partial(jax.jit, static_argnums=0)
def _route_trace(graphdef, params, tokens, positions, segment_ids):
    """[T, B, S] pool layer each token ran at each step (P = skipped)."""
    _, aux = nnx.merge(graphdef, params)(tokens, positions, segment_ids, return_trace=True)
    return aux.trace_TxBxS


def write_heatmap(run_dir: Path, writer: MetricWriter, step: int, graphdef, params, batch: dict,
                  tokenizer, n_tokens: int = 96) -> Path:
    """Routing of the first `n_tokens` of an eval row, as a TensorBoard image and a PNG in the run dir."""
    trace = np.asarray(_route_trace(graphdef, params, batch["inputs"][:1], batch["positions"][:1],
                                    batch["segment_ids"][:1]))[:, 0, :n_tokens]
    labels = token_labels(np.asarray(batch["inputs"][0, :n_tokens]), tokenizer.decode)
    pool_size = jax.tree.leaves(params["pool"])[0].shape[0]
    png, _, _ = routing_heatmap_png(trace, labels, pool_size,
                                    title=f"routing at step {step} (white = skip)")
    path = run_dir / "routing_heatmap.png"
    if writer.enabled:
        path.write_bytes(png)
    writer.image(step, "route/heatmap", png)
    return path


def routing_heatmap_png(trace_TxS: np.ndarray, labels: list[str], pool_size: int,
                        title: str = "") -> tuple[bytes, int, int]:
    """PNG bytes (and height, width) of a steps x tokens grid coloured by pool layer; white = skipped."""
    import matplotlib  # deferred: a heavy import only radial runs need, once per eval

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    trace = np.asarray(trace_TxS)
    steps, n = trace.shape
    colours = plt.get_cmap("tab10" if pool_size <= 10 else "tab20")(np.arange(pool_size))
    rgb = np.ones((steps, n, 3))
    for p in range(pool_size):
        rgb[trace == p] = colours[p, :3]
    fig, ax = plt.subplots(figsize=(max(6, n * 0.18), 1.2 + 0.35 * steps), dpi=100)
    ax.imshow(rgb, aspect="auto", interpolation="nearest")
    ax.set_yticks(range(steps), [f"step {t}" for t in range(steps)])
    ax.set_xticks(range(n), labels, fontsize=7, fontfamily="monospace")
    depth = (trace < pool_size).sum(0)
    ax.set_title(title or f"routing per token (white = skip); mean depth {depth.mean():.2f}", fontsize=9)
    handles = [plt.Rectangle((0, 0), 1, 1, color=colours[p]) for p in range(pool_size)]
    ax.legend(handles, [f"layer {p}" for p in range(pool_size)], loc="upper left",
              bbox_to_anchor=(1.0, 1.0), fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    h, w = fig.canvas.get_width_height()[::-1]
    plt.close(fig)
    return buf.getvalue(), h, w


def token_labels(ids, decode) -> list[str]:
    """Printable one-character labels for byte tokens (specials as <s>, </s>)."""
    out = []
    for i in np.asarray(ids).tolist():
        text = decode([i]) if i < 256 else ("<s>" if i == 256 else "</s>")
        out.append({"\n": "\\n", " ": "␣", "\t": "\\t"}.get(text, text))
    return out
