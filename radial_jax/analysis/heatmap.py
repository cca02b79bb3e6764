"""A picture of routing: for a sample of text, which pool layer each token used at each step."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def routing_heatmap_png(trace_TxS: np.ndarray, labels: list[str], pool_size: int,
                        title: str = "") -> tuple[bytes, int, int]:
    """PNG bytes (and height, width) of a steps x tokens grid coloured by pool layer; white = skipped."""
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
