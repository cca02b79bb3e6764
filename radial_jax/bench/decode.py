"""Benchmark: decode latency per token, radial vs dense, and dense vs Hugging Face transformers.

For each model (default: configs/radial_tiny.yaml and configs/tiny.yaml with random weights, or
trained run directories) it prefills a prompt of Python source (the corpus's style), then times
sampled decoding (temperature 0.8, seeded) the way `radial generate` runs it: jitted
decode-and-sample calls of `burst` tokens (default 8; 1: one call per token), each call's tokens
read back on the host. Windows of all models are interleaved, so changes in machine load hit them
alike, and each starts with an untimed burst, so a model is timed with its weights in the caches
as in continuous generation, not cold from the previous model's window; the table gives the
median and the best window, and radial/dense also paired by round (the median of per-round ratios,
which cancels the machine's drift between rounds); the JSON keeps every window's time. Batch 1
(radial: the lax.switch path, only the chosen layer runs; also the batched path for comparison)
and batch 8.
Reports ms per decode step, tokens/s and the measured mean active depth (blocks run per token).
Then, if transformers and torch import, a Llama model of the dense config's shape (random weights)
decoding with `generate()` on the CPU: its per-token time is (t(N new tokens) - t(1 new token))
/ (N - 1), so prefill is excluded as for ours. Prints a table and JSON; never asserts a time.
`radial bench decode [--burst N] [--out FILE]`.
"""

from __future__ import annotations

import inspect
import json
import os
import platform
import statistics
import textwrap
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from radial_jax.config import Config, ff_dim, head_dim, load_config
from radial_jax.generate.sampling import DEFAULT_BURST, Generator, Sampling, sampling_key
from radial_jax.io.load import load_model
from radial_jax.model.build import build_model
from radial_jax.model.kv_cache import init_cache

DEFAULT_CONFIGS = ("configs/radial_tiny.yaml", "configs/tiny.yaml")
BATCHES = (1, 8)


def prompts(batch: int, length: int) -> list[list[int]]:
    """`batch` byte-token prompts (BOS + Python source from the standard library) of `length`."""
    text = inspect.getsource(json) + inspect.getsource(textwrap)
    data = np.frombuffer(text.encode(), np.uint8).astype(np.int32)
    starts = np.linspace(0, len(data) - length, batch).astype(int)
    return [[256, *data[s:s + length - 1].tolist()] for s in starts]


class DecodeTimer:
    """Sampled decoding (temperature 0.8) of one model at one batch size, timed in windows of
    `new_tokens` steps, `burst` steps per jitted call (`Generator.steps`) as `radial generate` makes
    them; the host reads each call's tokens back, as generation does for streaming and EOS.

    `run` interleaves the windows of all timers, so a change in machine load hits them alike."""

    def __init__(self, cfg: Config, graphdef, params, *, batch: int, prompt_len: int, new_tokens: int,
                 windows: int, switch: bool | None = None, warmup: int = 3, step_weights=None,
                 burst: int = DEFAULT_BURST):
        if new_tokens % burst:
            raise ValueError(f"a window's {new_tokens} tokens must be a whole number of bursts of {burst}")
        self.gen = Generator(cfg, graphdef, params, switch=switch, step_weights=step_weights, burst=burst)
        self.batch, self.new_tokens, self.burst = batch, new_tokens, burst
        self.rule = Sampling(temperature=0.8)  # sampled text routes like real use; greedy loops
        self.i = 0
        self.key = sampling_key(0)
        self.cache = init_cache(cfg, batch, prompt_len + (warmup + windows) * burst + windows * new_tokens)
        toks = jnp.asarray(prompts(batch, prompt_len))
        lengths = jnp.full((batch,), prompt_len, jnp.int32)
        self.token, _, self.cache = self.gen.prefill(toks, lengths, self.cache, self.key, self.rule)
        self.times: list[float] = []
        self.cpu_times: list[float] = []
        self.depths: list = []
        for _ in range(warmup):  # compiles the step
            self._burst()

    def _burst(self):
        self.i += self.burst
        self.token, tokens_NxB, depth_NxB, self.cache = self.gen.steps(
            self.token, self.cache, self.key, self.i, self.burst, self.rule)
        np.asarray(tokens_NxB)
        return depth_NxB

    def window(self) -> None:
        """One untimed burst (brings this model's weights back into the CPU caches after the other
        timers' windows: steady-state generation, not the interleaving, is measured), then
        `new_tokens` timed tokens."""
        self._burst()
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(self.new_tokens // self.burst):
            self.depths.append(self._burst())
        self.times.append((time.perf_counter() - t0) / self.new_tokens)
        self.cpu_times.append((time.process_time() - c0) / self.new_tokens)

    def result(self) -> dict:
        mean_depth = float(np.mean(np.asarray(jnp.stack(self.depths))))
        return {**_timing(self.times, self.batch),
                "cpu_window_ms": [round(1e3 * t, 4) for t in self.cpu_times], "mean_active_depth": mean_depth,
                "max_depth": self.gen.max_depth, "active_fraction": mean_depth / self.gen.dense_depth}


def _timing(times_s: list[float], batch: int) -> dict:
    """A timer's per-token figures from its windows' seconds per token."""
    step_s = statistics.median(times_s)
    return {"batch": batch, "ms_per_token": 1e3 * step_s, "ms_min": 1e3 * min(times_s),
            "ms_max": 1e3 * max(times_s), "tokens_per_s": batch / step_s,
            "window_ms": [round(1e3 * t, 4) for t in times_s]}


class TransformersTimer:
    """transformers' LlamaForCausalLM.generate() on the CPU at one batch size and torch thread count,
    timed in windows that `run` interleaves with ours: per token (t(N new) - t(1 new)) / (N - 1).

    threads: torch's intra-op threads; on a busy machine one thread can be ten times faster than
    several spinning ones, so `run` times both and reports each."""

    @staticmethod
    def available() -> bool:
        try:
            import torch  # noqa: F401
            import transformers  # noqa: F401
        except ImportError as e:
            print(f"transformers comparison skipped: {e} (install with `pip install '.[bench]'`)")
            return False
        return True

    def __init__(self, cfg: Config, *, batch: int, prompt_len: int, new_tokens: int, threads: int):
        import torch
        import transformers

        m = cfg.model
        llama = transformers.LlamaConfig(
            vocab_size=m.vocab_size, hidden_size=m.d_model, intermediate_size=ff_dim(m),
            num_hidden_layers=m.n_layers, num_attention_heads=m.n_heads,
            num_key_value_heads=m.n_kv_heads, head_dim=head_dim(m), rms_norm_eps=m.norm_eps,
            rope_theta=m.rope_theta, tie_word_embeddings=m.tie_embeddings,
            max_position_embeddings=prompt_len + new_tokens + 8, hidden_act="silu",
            attention_bias=False, mlp_bias=False)
        self.torch, self.batch, self.new_tokens, self.threads = torch, batch, new_tokens, threads
        torch.manual_seed(0)
        self.model = transformers.LlamaForCausalLM(llama).to(torch.float32).eval()
        self.ids = torch.tensor(prompts(batch, prompt_len), dtype=torch.long)
        self.versions = {"torch": torch.__version__, "transformers": transformers.__version__}
        self.times: list[float] = []
        self._run(new_tokens)  # warm-up

    def _run(self, n: int) -> float:
        torch = self.torch
        torch.set_num_threads(self.threads)
        t0 = time.perf_counter()
        with torch.inference_mode():
            self.model.generate(self.ids, attention_mask=torch.ones_like(self.ids), max_new_tokens=n,
                                min_new_tokens=n, do_sample=True, temperature=0.8, top_k=0, top_p=1.0,
                                use_cache=True, pad_token_id=0, eos_token_id=None)
        return time.perf_counter() - t0

    def window(self) -> None:
        one = min(self._run(1) for _ in range(2))
        self.times.append((self._run(self.new_tokens) - one) / (self.new_tokens - 1))
        time.sleep(0.05)  # torch's OpenMP threads spin a while after work; not into the next timer

    def result(self) -> dict:
        return {**_timing(self.times, self.batch), **self.versions, "torch_threads": self.threads,
                "params": sum(p.numel() for p in self.model.parameters())}


def _models(configs, overrides, checkpoints):
    """(name, cfg, graphdef, params) of each model to time: trained run dirs, then configs (random
    weights; the default pair only when no run dir is given)."""
    if checkpoints:
        for run_dir in checkpoints:
            m = load_model(run_dir, list(overrides))
            yield f"{Path(run_dir).name}@{m.step}", m.cfg, m.graphdef, m.params
        if not configs:
            return
    for path in configs or DEFAULT_CONFIGS:
        cfg = load_config(path, list(overrides))
        graphdef, params = nnx.split(build_model(cfg), nnx.Param)
        yield Path(path).stem, cfg, graphdef, params


def run(configs=None, overrides=(), out: str | None = None, *, checkpoints=None, prompt_len: int = 64,
        new_tokens: int = 16, windows: int = 15, burst: int = DEFAULT_BURST, transformers: bool = True,
        hf_tokens: int = 64, batches: tuple[int, ...] = BATCHES) -> dict:
    """batches: batch sizes to time each model at (batch 1 radial: also the batched path)."""
    if not batches or min(batches) < 1:
        raise ValueError(f"batch sizes must be >= 1, got {batches}")
    timers, dense_cfg = [], None
    for name, cfg, graphdef, params in _models(configs, overrides, checkpoints):
        n_params = sum(x.size for x in jax.tree.leaves(params))
        kind = cfg.model.kind
        paths = [(b, None) for b in batches]
        if kind == "radial" and 1 in batches:
            paths.insert(batches.index(1) + 1, (1, False))  # batch 1 by the batched path, not lax.switch
        for batch, switch in paths:
            path = "all layers" if kind == "dense" else ("switch" if batch == 1 and switch is None
                                                         else "batched")
            row = {"model": name, "kind": kind, "params": n_params, "path": path}
            timers.append((row, DecodeTimer(cfg, graphdef, params, batch=batch, prompt_len=prompt_len,
                                            new_tokens=new_tokens, windows=windows, switch=switch,
                                            burst=burst)))
        if kind == "dense" and dense_cfg is None:
            dense_cfg = cfg
    if transformers and dense_cfg is not None and TransformersTimer.available():
        for threads in sorted({1, _cpus()}):  # timed in the same rounds as ours
            for batch in batches:
                row = {"model": f"transformers Llama, {threads} thread(s)", "kind": "dense",
                       "path": "generate()"}
                timers.append((row, TransformersTimer(dense_cfg, batch=batch, prompt_len=prompt_len,
                                                      new_tokens=hf_tokens, threads=threads)))
    for i in range(windows):
        for _, timer in timers:
            timer.window()
        print(f"  round {i + 1}/{windows}", flush=True)
    rows = [{**row, **timer.result()} for row, timer in timers]
    for r in rows:
        print(f"  {r['model']} batch {r['batch']} {r['path']}: {r['ms_per_token']:.3f} ms/token", flush=True)
    report = {"benchmark": "decode", "device": str(jax.devices()[0].device_kind),
              "platform": platform.processor() or platform.machine(), "cpu_count": _cpus(),
              "jax": jax.__version__, "prompt_len": prompt_len, "new_tokens": new_tokens,
              "burst": burst, "windows": windows, "batches": list(batches), "results": rows, **_ratios(rows)}
    print(format_table(report))
    if out:
        Path(out).write_text(json.dumps(report, indent=2))
        print(f"wrote {out}")
    return report


def _ratios(rows: list[dict]) -> dict:
    """Batch-1 radial / dense latency per radial model, and transformers / ours (dense)."""
    def find(kind, path, batch):  # the fastest such row
        found = [r for r in rows if r["kind"] == kind and r["path"] == path and r["batch"] == batch]
        return min(found, key=lambda r: r["ms_per_token"]) if found else None

    out: dict = {}
    dense = find("dense", "all layers", 1)
    radial = [r for r in rows if r["kind"] == "radial" and r["path"] == "switch"]
    if dense and radial:
        out["radial_over_dense_batch1"] = {
            r["model"]: {"ratio": r["ms_per_token"] / dense["ms_per_token"],
                         "ratio_best": r["ms_min"] / dense["ms_min"],
                         "ratio_paired": _paired_ratio(r["window_ms"], dense["window_ms"]),
                         "ratio_paired_cpu": _paired_ratio(r["cpu_window_ms"], dense["cpu_window_ms"]),
                         "target": 1.2 * r["active_fraction"]} for r in radial}
    batches = sorted({r["batch"] for r in rows})
    for b in batches:  # batched decoding: the target is radial / dense <= 1
        dense_b = find("dense", "all layers", b)
        radial_b = [r for r in rows if r["kind"] == "radial" and r["path"] == "batched" and r["batch"] == b]
        if b > 1 and dense_b and radial_b:
            out[f"radial_over_dense_batch{b}"] = {
                r["model"]: {"ratio": r["ms_per_token"] / dense_b["ms_per_token"],
                             "ratio_best": r["ms_min"] / dense_b["ms_min"],
                             "ratio_paired": _paired_ratio(r["window_ms"], dense_b["window_ms"]),
                             "ratio_paired_cpu": _paired_ratio(r["cpu_window_ms"], dense_b["cpu_window_ms"])}
                for r in radial_b}
    for b in batches:
        hf, ours = find("dense", "generate()", b), find("dense", "all layers", b)
        if hf and ours:
            out[f"transformers_over_ours_batch{b}"] = hf["ms_per_token"] / ours["ms_per_token"]
    return out


def _paired_ratio(a_ms: list[float], b_ms: list[float]) -> float:
    """Median over interleaving rounds of a's window time / b's window time in the same round: a
    change of machine speed between rounds (a shared VM's) cancels within each pair. The same of
    the windows' CPU time (this process's, all threads), which other processes' share of the cores
    does not inflate as it does wall time."""
    return statistics.median(a / b for a, b in zip(a_ms, b_ms, strict=True))


def format_table(report: dict) -> str:
    rows = ["| model | params | batch | path | ms / token (median) | (min) | tokens/s | mean active depth |",
            "|---|---|---|---|---|---|---|---|"]
    for r in report["results"]:
        depth = (f"{r['mean_active_depth']:.2f} / {r['max_depth']}" if "mean_active_depth" in r else "")
        rows.append(f"| {r['model']} | {r['params']:,} | {r['batch']} | {r['path']} | "
                    f"{r['ms_per_token']:.3f} | {r['ms_min']:.3f} | {r['tokens_per_s']:,.0f} | {depth} |")
    rows.append("")
    for model, r in report.get("radial_over_dense_batch1", {}).items():
        rows.append(f"batch 1, {model} / dense ms per token: {r['ratio']:.2f} median, "
                    f"{r['ratio_best']:.2f} best, {r['ratio_paired']:.2f} paired by round, "
                    f"{r['ratio_paired_cpu']:.2f} CPU time paired by round "
                    f"(target <= 1.2 x mean active fraction = {r['target']:.2f})")
    batches = sorted({r["batch"] for r in report["results"]})
    for b in (b for b in batches if b > 1):
        for model, r in report.get(f"radial_over_dense_batch{b}", {}).items():
            rows.append(f"batch {b}, {model} / dense ms per token: {r['ratio']:.2f} median, "
                        f"{r['ratio_best']:.2f} best, {r['ratio_paired']:.2f} paired by round, "
                        f"{r['ratio_paired_cpu']:.2f} CPU time paired by round "
                        "(target <= 1)")
    for b in batches:
        if f"transformers_over_ours_batch{b}" in report:
            rows.append(f"batch {b}, transformers (fastest thread count) / ours (dense) ms per token: "
                        f"{report[f'transformers_over_ours_batch{b}']:.2f}")
    return "\n".join(rows)


def _cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
