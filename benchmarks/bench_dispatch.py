"""Time gather/combine (forward + backward) against one-hot einsum dispatch, on the local backend.

Usage: python benchmarks/bench_dispatch.py [--repeats 20]. Prints one JSON line per config, then a
table. Informational only: nothing here asserts a time.

Shape letters: B batch, S sequence, P pool layers, C capacity per layer, D model width.
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp

from radial_jax.model import dispatch as dsp

CONFIGS = [  # (B, S, P, D, capacity_factor)
    (8, 256, 4, 256, 1.0),
    (8, 512, 4, 256, 1.25),
    (4, 1024, 8, 256, 1.0),
]


def _time(fn, *args, repeats: int) -> float:
    """Median seconds per call of a jitted fn, after one compile-and-warm call."""
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def _onehot_BxSxPxC(d: dsp.Dispatch, s: int) -> jax.Array:
    return jax.nn.one_hot(d.idx_BxPxC, s, axis=1, dtype=jnp.float32) * d.ok_BxPxC[:, None]


def bench(b: int, s: int, p: int, dim: int, factor: float, repeats: int) -> dict:
    c = dsp.capacity(s, p, factor)
    k_choice, k_prio, k_h = jax.random.split(jax.random.key(0), 3)
    choice_BxSx1 = jax.random.randint(k_choice, (b, s, 1), 0, p + 1)
    priority_BxSx1 = jax.random.uniform(k_prio, (b, s, 1))
    h_BxSxD = jax.random.normal(k_h, (b, s, dim))
    plan = jax.jit(dsp.plan_token_choice, static_argnums=(2, 3))
    d = plan(choice_BxSx1, priority_BxSx1, p, c)

    def loss_gather(h_BxSxD, d):
        buf_BxPxCxD = dsp.gather_tokens(h_BxSxD, d)
        return jnp.sum(dsp.combine(h_BxSxD, jnp.tanh(buf_BxPxCxD), d) ** 2)

    def loss_onehot(h_BxSxD, m_BxSxPxC):
        buf_BxPxCxD = jnp.einsum("bspc,bsd->bpcd", m_BxSxPxC, h_BxSxD)
        return jnp.sum((h_BxSxD + jnp.einsum("bspc,bpcd->bsd", m_BxSxPxC, jnp.tanh(buf_BxPxCxD))) ** 2)

    m_BxSxPxC = jax.jit(_onehot_BxSxPxC, static_argnums=1)(d, s)
    return {
        "B": b, "S": s, "P": p, "C": c, "D": dim, "capacity_factor": factor,
        "plan_ms": 1e3 * _time(plan, choice_BxSx1, priority_BxSx1, p, c, repeats=repeats),
        "gather_fwd_bwd_ms": 1e3 * _time(jax.jit(jax.value_and_grad(loss_gather)), h_BxSxD, d,
                                         repeats=repeats),
        "onehot_fwd_bwd_ms": 1e3 * _time(jax.jit(jax.value_and_grad(loss_onehot)), h_BxSxD, m_BxSxPxC,
                                         repeats=repeats),
        "backend": jax.default_backend(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    rows = [bench(*cfg, repeats=args.repeats) for cfg in CONFIGS]
    for row in rows:
        print(json.dumps(row))
    cols = ["B", "S", "P", "C", "D", "plan_ms", "gather_fwd_bwd_ms", "onehot_fwd_bwd_ms"]
    print(" | ".join(f"{col:>17}" for col in cols))
    for row in rows:
        print(" | ".join(f"{row[col]:>17.3f}" if isinstance(row[col], float) else f"{row[col]:>17}"
                         for col in cols))


if __name__ == "__main__":
    main()
