"""The `radial` command: `radial train CONFIG [key=value ...]`, `radial eval --checkpoint RUN_DIR`."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import jax

from radial_jax.analysis.profile import parse_thresholds, run_profile
from radial_jax.analysis.ratios import RATIOS
from radial_jax.analysis.trend import run_trend
from radial_jax.aot import command as aot_command
from radial_jax.bench import decode as bench_decode
from radial_jax.bench import decode_variants as bench_variants
from radial_jax.bench import train_step as bench_train
from radial_jax.config import ConfigError, load_config
from radial_jax.data.pipeline import make_eval_batches
from radial_jax.distill import distill
from radial_jax.errors import UserError
from radial_jax.generate.command import run_generate
from radial_jax.io.export import FORMATS, export
from radial_jax.io.load import load_model
from radial_jax.parallel.distributed import initialize, resolve_launch
from radial_jax.sweep import run as sweep_run
from radial_jax.sweep.report import write_report
from radial_jax.sweep.spec import load_sweep
from radial_jax.train.loop import evaluate, train
from radial_jax.train.step import make_eval_step


def _cmd_train(args) -> int:
    cfg = load_config(args.config, args.overrides)
    initialize(resolve_launch(args.coordinator, args.num_processes, args.process_id,
                              auto=args.distributed))  # before JAX touches a device
    train(cfg, resume_command=shlex.join(["radial", "train", args.config, *args.overrides]))
    return 0


def _cmd_eval(args) -> int:
    loaded = load_model(args.checkpoint, args.overrides, args.step)
    cfg, tok = loaded.cfg, loaded.tokenizer
    if args.inference and cfg.model.kind != "radial":
        raise ConfigError(f"--inference routes a radial model as decoding does; {args.checkpoint} holds "
                          f"a {cfg.model.kind} model: drop the flag")
    batches = make_eval_batches(cfg.data, tok, args.batches or cfg.train.eval_batches)
    step_fn = make_eval_step(loaded.graphdef, tok.token_bytes(), inference=args.inference)
    out = evaluate(jax.jit(step_fn), loaded.params, batches)
    out = {"step": loaded.step, "source": cfg.data.source, "inference_routing": args.inference, **out}
    print(json.dumps(out, indent=2))
    return 0


def _cmd_profile(args) -> int:
    if bool(args.checkpoint) == bool(args.trend):
        raise ConfigError("radial profile: give --checkpoint DIR (one model) or --trend DIR1 DIR2 ... "
                          "(median ratio against model size), not both or neither")
    if args.trend:  # `--trend a b key=value`: nargs="+" takes the overrides too
        moved = [x for x in args.trend if "=" in x and not Path(x).exists()]
        trend_dirs = [x for x in args.trend if x not in moved]
        report, paths = run_trend(trend_dirs, [*args.overrides, *moved], out_dir=args.out or "trend",
                                  n_batches=args.batches, ratio=args.ratio)
        print(report["_table"])
        print("\nwrote " + ", ".join(str(p) for p in paths.values()))
        return 0
    try:
        thresholds = parse_thresholds(args.oracle)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    report, paths = run_profile(args.checkpoint, args.overrides, out_dir=args.out,
                                n_batches=args.batches, thresholds=thresholds, step=args.step,
                                ratio=args.ratio)
    print(report["_table"])
    print("\nwrote " + ", ".join(str(p) for p in paths.values()))
    return 0


def _cmd_generate(args) -> int:
    run_generate(args.checkpoint, args.prompt, max_tokens=args.max_tokens, temperature=args.temperature,
                 top_k=args.top_k, top_p=args.top_p, seed=args.seed, show_depth=args.show_depth,
                 step=args.step, burst=args.burst, overrides=args.overrides)
    return 0


def _cmd_export(args) -> int:
    files = export(args.checkpoint, args.out, fmt=args.format, step=args.step)
    print(json.dumps({k: str(v) for k, v in files.items()}, indent=2))
    return 0


def _cmd_distill(args) -> int:
    distill(args.teacher, args.config, args.overrides, kl_weight=args.kl_weight,
            temperature=args.temperature)
    return 0


def _move_overrides(args) -> None:
    """`--configs a.yaml model.d_model=64` gives both words to --configs (nargs="+"): move the
    section.key=value ones to the overrides, where they were meant to go."""
    for name in ("configs", "checkpoint"):
        items = getattr(args, name)
        if items:
            moved = [x for x in items if "=" in x and not Path(x).exists()]
            setattr(args, name, [x for x in items if x not in moved] or None)
            args.overrides = [*args.overrides, *moved]


def _cmd_bench(args) -> int:
    _move_overrides(args)
    if args.windows < 1:
        raise SystemExit(f"--windows must be >= 1, got {args.windows}")
    if args.burst not in (1, 2, 4, 8, 16):  # a window is 16 tokens: a whole number of bursts
        raise SystemExit(f"--burst must be 1, 2, 4, 8 or 16 (a window is 16 tokens), got {args.burst}")
    if args.what == "decode":
        bench_decode.run(args.configs, args.overrides, args.out, checkpoints=args.checkpoint,
                         windows=args.windows, burst=args.burst,
                         batches=tuple(args.batch_sizes or bench_decode.BATCHES),
                         transformers=not args.no_transformers)
        return 0
    if args.what == "decode-variants":
        if bool(args.checkpoint) == bool(args.configs) or len(args.checkpoint or args.configs) != 1:
            raise SystemExit("decode-variants times one radial model: give one --checkpoint RUN_DIR or "
                             "one --configs CONFIG")
        args.batch_sizes = args.batch_sizes or [1]
        if len(args.batch_sizes) != 1:
            raise SystemExit(f"decode-variants times one batch size; got --batch-sizes {args.batch_sizes}")
        bench_variants.run((args.checkpoint or [None])[0], (args.configs or [None])[0],
                           args.overrides, args.out, windows=args.windows, burst=args.burst,
                           batch=args.batch_sizes[0])
        return 0
    if args.what == "train":
        bench_train.run(args.configs or bench_train.DEFAULT_CONFIGS, args.overrides, args.out,
                        steps=args.steps)
        return 0
    raise SystemExit(f"unknown benchmark {args.what!r}")


def _cmd_compile(args) -> int:
    n = aot_command.needs_cpu_reexec(args.topology)
    if n is not None:
        argv = ["compile", args.config, "--topology", args.topology, "--slices", str(args.slices),
                *(["--out", args.out] if args.out else []), *(["--hlo", args.hlo] if args.hlo else []),
                *args.overrides]
        return aot_command.reexec_with_cpu_devices(n, argv)
    aot_command.run(args.config, args.topology, args.slices, args.out, args.overrides, hlo=args.hlo)
    return 0


def _cmd_sweep(args) -> int:
    sweep = load_sweep(args.file)
    out = Path(args.out) if args.out else sweep.default_out
    if args.emit:
        print("\n".join(sweep_run.emit_commands(sweep, out, args.arms)))
    elif args.dry_run:
        print(sweep_run.format_plan(sweep_run.plan_rows(sweep, out, args.arms)))
    else:
        sweep_run.run_sweep(sweep, out, only=args.arms)
    return 0


def _cmd_report(args) -> int:
    paths = write_report(args.dir, args.out)
    print(paths["md"].read_text())
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


class _IntermixedParser(argparse.ArgumentParser):
    """A subcommand whose overrides may follow its options: `CONFIG --topology T key=value ...`."""

    _inner = False

    def parse_known_args(self, args=None, namespace=None):
        if self._inner:  # parse_known_intermixed_args calls back into this method
            return super().parse_known_args(args, namespace)
        self._inner = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._inner = False


def _model_command(sub, name: str, fn, help: str, *, batches: bool = False,
                   overrides: str | None = "section.key=value applied to the model's config",
                   required: bool = True) -> argparse.ArgumentParser:
    """A subcommand reading one model (see radial_jax.io): --checkpoint, --step, and optionally
    --batches (eval batches) and config overrides."""
    p = sub.add_parser(name, help=help)
    p.add_argument("--checkpoint", required=required, help="run, export or Hugging Face directory")
    p.add_argument("--step", type=int, default=None, help="checkpoint step of a run (default: newest)")
    if batches:
        p.add_argument("--batches", type=int, default=0, help="eval batches (default: train.eval_batches)")
    if overrides:
        p.add_argument("overrides", nargs="*", help=overrides)
    p.set_defaults(fn=fn)
    return p


def _burst_option(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--burst", type=int, default=8,
                        help=f"{what} (default 8; 1: one call per token, each paying dispatch and readback)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="radial", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a model from a config file (resumes if the run dir has "
                                      "checkpoints)")
    t.add_argument("config", help="YAML config, e.g. configs/tiny.yaml")
    t.add_argument("overrides", nargs="*", help="section.key=value, e.g. train.steps=200")
    t.add_argument("--coordinator", metavar="HOST:PORT",
                   help="multi-process run: process 0's address (also RADIAL_COORDINATOR)")
    t.add_argument("--num-processes", type=int, metavar="N", help="multi-process run: process count")
    t.add_argument("--process-id", type=int, metavar="I", help="multi-process run: this process")
    t.add_argument("--distributed", action="store_true",
                   help="join a multi-process run that JAX detects itself (TPU pod, SLURM, ...)")
    t.set_defaults(fn=_cmd_train)

    e = _model_command(sub, "eval", _cmd_eval, batches=True,
                       help="validation loss, perplexity and bits per byte of a checkpoint")
    e.add_argument("--inference", action="store_true",
                   help="radial: route as decoding does (no capacity; with routing.skip=learned the "
                        "skip predictor decides), to see the loss and depth a deployed model has")

    pr = _model_command(sub, "profile", _cmd_profile, batches=True, required=False,
                        help="residual ratios and oracle skipping (dense), residual ratios per routing "
                             "step and pool layer and routing statistics (radial), or with --trend the "
                             "median ratio against model size: JSON, PNG plots and a table",
                        overrides="section.key=value applied to the config, e.g. data.source=text "
                                  "data.valid_files=[...]")
    pr.add_argument("--trend", nargs="+", default=None, metavar="DIR",
                    help="profile several models (run, export or Hugging Face directories) and plot "
                         "their median ratio against parameter count, beside the paper's values")
    pr.add_argument("--ratio", choices=RATIOS, default="stream",
                    help="normalisation: stream = ||f(x)|| / ||x|| (default), output = ||f(x)|| / "
                         "||x + f(x)|| (the paper does not say which it used)")
    pr.add_argument("--out", default=None,
                    help="output folder (default: CHECKPOINT/profile; with --trend: ./trend)")
    pr.add_argument("--oracle", default="0.05", metavar="T1,T2,...",
                    help="oracle skipping thresholds on the residual ratio (default 0.05; 'none' = off)")

    g = _model_command(sub, "generate", _cmd_generate,
                       help="continue a prompt with a trained checkpoint, streaming text")
    g.add_argument("--prompt", required=True, help="text to continue")
    g.add_argument("--max-tokens", type=int, default=200, help="most new tokens (default 200)")
    g.add_argument("--temperature", type=float, default=0.8, help="0 = greedy (default 0.8)")
    g.add_argument("--top-k", type=int, default=0, help="sample from the k likeliest tokens (0 = all)")
    g.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (1.0 = off)")
    g.add_argument("--seed", type=int, default=0, help="sampling seed (same seed, same text)")
    g.add_argument("--show-depth", action="store_true",
                   help="print, per generated token, how many blocks it used")
    _burst_option(g, "tokens decoded per jitted call, streamed together")

    x = _model_command(sub, "export", _cmd_export, overrides=None,
                       help="write a model as safetensors + config.json (no orbax needed to load it); "
                            "--format hf: Hugging Face (dense: Llama/Qwen2/GPT-2/OPT; radial: remote code)")
    x.add_argument("--out", required=True, help="output folder")
    x.add_argument("--format", choices=FORMATS, default="safetensors",
                   help="safetensors: radial_jax layout (default); hf: Llama, Qwen2, GPT-2 or OPT, "
                        "or radial remote code")

    di = sub.add_parser("distill", help="distil a dense model into a radial student whose pool starts as "
                                         "its layers; reports eval loss against mean active depth")
    di.add_argument("--teacher", required=True, help="dense run, export or Hugging Face directory")
    di.add_argument("config", help="student config (radial settings, data, training), e.g. "
                                   "configs/distill_tiny.yaml")
    di.add_argument("overrides", nargs="*", help="section.key=value applied to the student config")
    di.add_argument("--kl-weight", type=float, default=1.0, help="weight of KL(teacher || student)")
    di.add_argument("--temperature", type=float, default=1.0, help="distillation temperature")
    di.set_defaults(fn=_cmd_distill)

    b = sub.add_parser("bench", help="benchmarks: `train` (step time of configs side by side), "
                                     "`decode` (ms per generated token, vs transformers), "
                                     "`decode-variants` (where a radial model's decode time goes)")
    b.add_argument("what", choices=["train", "decode", "decode-variants"], help="which benchmark")
    b.add_argument("--checkpoint", nargs="+", default=None,
                   help="decode, decode-variants: trained run directories to time instead of --configs")
    b.add_argument("--configs", nargs="+", default=None, help="configs to compare")
    b.add_argument("--out", default=None, help="write the JSON report here")
    b.add_argument("--steps", type=int, default=25, help="train: timed steps per config (windows of 5)")
    b.add_argument("--no-transformers", action="store_true",
                   help="decode: skip timing transformers' generate() even where it imports")
    b.add_argument("--windows", type=int, default=15,
                   help="decode, decode-variants: timed windows of 16 tokens per model and batch "
                        "(more: steadier medians)")
    _burst_option(b, "decode, decode-variants: tokens per jitted call, as `radial generate` makes them")
    b.add_argument("--batch-sizes", nargs="+", type=int, default=None,
                   help="decode: batch sizes to time (default 1 8); decode-variants: the one batch "
                        "size (default 1)")
    b.add_argument("overrides", nargs="*", help="section.key=value applied to every config")
    b.set_defaults(fn=_cmd_bench)

    co = sub.add_parser("compile", help="compile the train step ahead of time for a TPU topology (or cpu:N) "
                                        "on this host: memory per device, FLOPs, collectives, roofline MFU")
    co.add_argument("config", help="YAML config, e.g. configs/radial_1b.yaml")
    co.add_argument("--topology", required=True, metavar="NAME",
                    help="TPU slice such as v5p:4x4x4, v5e:16x16, v6e:8x8 (needs pip install '.[tpu]'), "
                         "cpu:N, or local (this host's devices)")
    co.add_argument("--slices", type=int, default=1, help="TPU slices joined by the data-center network")
    co.add_argument("--out", default=None, help="write the JSON report here")
    co.add_argument("--hlo", default=None, help="write the compiled program's HLO text here")
    co.add_argument("overrides", nargs="*", help="section.key=value, e.g. mesh.fsdp=-1 mesh.pool=4")
    co.set_defaults(fn=_cmd_compile)
    co.__class__ = _IntermixedParser

    sw = sub.add_parser("sweep", help="train the arms of a sweep file one after another (resumable), "
                                      "or --dry-run / --emit them")
    sw.add_argument("file", help="sweep file, e.g. configs/sweeps/isoflop_tiny.yaml")
    sw.add_argument("--out", default=None, help="folder of the arms' run dirs (default: runs/sweeps/<file>)")
    sw.add_argument("--arms", nargs="+", default=(), metavar="PATTERN",
                    help="only the arms whose names match a shell-style pattern, e.g. '*_s1_*' "
                         "(several processes may also share one --out: each passes arms another trains)")
    mode = sw.add_mutually_exclusive_group()
    mode.add_argument("--dry-run", action="store_true",
                      help="print each arm's parameters, FLOPs per token, steps and tokens, and stop")
    mode.add_argument("--emit", action="store_true",
                      help="print one `radial train` command per arm (to launch on a cluster), and stop")
    sw.set_defaults(fn=_cmd_sweep)

    rp = sub.add_parser("report", help="compare the runs of a sweep: report.md, report.csv and PNG plots")
    rp.add_argument("dir", help="sweep output folder (the --out of `radial sweep`); only read")
    rp.add_argument("--out", default=None, help="write the page as OUT.md and its figures, CSV and "
                    "inference-depth cache into OUT/ (default: report.md and the rest in DIR)")
    rp.set_defaults(fn=_cmd_report)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except UserError as e:  # carries its own explanation; anything else is a bug: keep the traceback
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code


if __name__ == "__main__":
    sys.exit(main())
