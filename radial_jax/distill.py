"""`radial distill`: turn a dense teacher (run, export or Hugging Face directory) into a radial student.

The student's pool starts as the teacher's layers: the first `model.prefix_layers` become its dense
prefix, the remaining L - prefix its pool (P = T = L - prefix), its embedding and final norm are the
teacher's, and its router starts on the sequential schedule (step t -> layer t, `router.init:
sequential`) with skip available. Loss = cross-entropy + kl_weight * KL(teacher || student) (at a
temperature) + the router's auxiliary losses, among them the compute target (`routing.compute_*`).
Every eval reports the student's loss against its mean active depth; the result is written as an
export directory (`radial eval`/`profile`/`generate` take it).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from radial_jax import markdown
from radial_jax.config import Config, ConfigError, from_dict, load_config
from radial_jax.data.pipeline import make_eval_batches, make_iterator
from radial_jax.io.export import write_export
from radial_jax.io.load import Loaded, load_model
from radial_jax.io.tensors import fill_params, flat_params
from radial_jax.model.build import build_model
from radial_jax.train.loss import masked_sum_and_count, token_nll
from radial_jax.train.optimizer import make_optimizer
from radial_jax.train.step import forward, make_eval_step, summarize_eval, train_forward

ARCH_KEYS = ("vocab_size", "d_model", "n_heads", "n_kv_heads", "head_dim", "d_ff", "rope_theta",
             "norm_eps", "tie_embeddings", "norm", "mlp", "qkv_bias", "out_bias", "mlp_bias",
             "positions", "max_positions")


def student_config(teacher: Config, student: Config) -> Config:
    """`student` (radial settings, data, training) with the teacher's architecture and tokenizer:
    prefix = model.prefix_layers teacher layers, P = T = the rest."""
    if teacher.model.kind != "dense":
        raise ConfigError("the teacher must be a dense model (a run, export or Hugging Face directory)")
    raw = student.to_dict()
    n_pool = teacher.model.n_layers - student.model.prefix_layers
    if n_pool < 1:
        raise ConfigError(f"model.prefix_layers={student.model.prefix_layers} leaves no teacher layer for "
                          f"the pool (the teacher has {teacher.model.n_layers})")
    raw["model"].update({k: getattr(teacher.model, k) for k in ARCH_KEYS})
    raw["model"].update(kind="radial", pool_size=n_pool, steps=n_pool, n_layers=teacher.model.n_layers)
    raw["data"]["tokenizer"] = teacher.data.tokenizer
    return from_dict(raw)


def init_student(cfg: Config, teacher: Loaded):
    """(graphdef, params): a fresh radial model whose embedder, prefix and pool hold the teacher's weights."""
    k = cfg.model.prefix_layers
    fresh = flat_params(nnx.split(build_model(cfg), nnx.Param)[1])
    t = flat_params(teacher.params)
    out = {}
    for name, value in fresh.items():
        head, _, rest = name.partition(".")
        if head == "embedder":
            out[name] = t[name]
        elif head == "prefix":
            i, _, leaf = rest.partition(".")
            out[name] = t[f"blocks.{i}.{leaf}"]
        elif head == "pool":
            out[name] = np.stack([t[f"blocks.{k + j}.{rest}"] for j in range(cfg.model.pool_size)])
        else:  # the router: fresh, on the sequential schedule
            out[name] = value
    return fill_params(cfg, out, "student")


def kl_per_token(teacher_BxSxV, student_BxSxV, temperature: float):
    """KL(teacher || student) per token [B, S], at a temperature (scaled by T^2, as in Hinton et al.)."""
    lt = jax.nn.log_softmax(teacher_BxSxV.astype(jnp.float32) / temperature, axis=-1)
    ls = jax.nn.log_softmax(student_BxSxV.astype(jnp.float32) / temperature, axis=-1)
    return (jnp.exp(lt) * (lt - ls)).sum(-1) * temperature**2


def make_distill_step(graphdef, teacher_graphdef, tx, *, kl_weight: float, temperature: float):
    def loss_fn(params, teacher_params, batch):
        logits, metrics, aux_loss = train_forward(graphdef, params, batch)
        t_logits = jax.lax.stop_gradient(forward(teacher_graphdef, teacher_params, batch)[0])
        ce_sum, n = masked_sum_and_count(token_nll(logits, batch["targets"]), batch["loss_mask"])
        kl_sum, _ = masked_sum_and_count(kl_per_token(t_logits, logits, temperature), batch["loss_mask"])
        ce, kl = ce_sum / jnp.maximum(n, 1.0), kl_sum / jnp.maximum(n, 1.0)
        return ce + kl_weight * kl + aux_loss, {"train/ce": ce, "train/kl": kl, **metrics}

    def step(params, opt_state, teacher_params, batch):
        (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, teacher_params, batch)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, {**metrics, "train/loss": loss}

    return step


def _evaluate(eval_step, params, batches) -> dict[str, float]:
    return summarize_eval([jax.device_get(eval_step(params, b)) for b in batches])


def distill(teacher_path: str, config_path: str, overrides=(), *, kl_weight: float = 1.0,
            temperature: float = 1.0, log=print) -> dict:
    """Distil; writes run.dir (export layout + distill.json); returns the report."""
    teacher = load_model(teacher_path)
    cfg = student_config(teacher.cfg, load_config(config_path, overrides))
    graphdef, params = init_student(cfg, teacher)
    tx = make_optimizer(cfg.train, cfg.routing.balance_rate)
    opt_state = tx.init(params)
    step_fn = jax.jit(make_distill_step(graphdef, teacher.graphdef, tx, kl_weight=kl_weight,
                                        temperature=temperature), donate_argnums=(0, 1))
    tok = teacher.tokenizer
    eval_batches = make_eval_batches(cfg.data, tok, cfg.train.eval_batches)
    student_eval = jax.jit(make_eval_step(graphdef, tok.token_bytes()))
    teacher_eval = _evaluate(jax.jit(make_eval_step(teacher.graphdef, tok.token_bytes())), teacher.params,
                             eval_batches)
    m = cfg.model
    log(f"teacher: {teacher.cfg.model.n_layers} layers, eval loss {teacher_eval['eval/loss']:.4f}; student: "
        f"prefix {m.prefix_layers} + pool {m.pool_size} x {m.steps} steps")

    rows = []

    def evaluate(step: int) -> None:
        e = _evaluate(student_eval, params, eval_batches)
        row = {"step": step, "loss": e["eval/loss"], "perplexity": e["eval/perplexity"],
               "active_depth": e["eval/active_depth"], "active_fraction": e["eval/active_fraction"],
               "drop_rate": e["eval/drop_rate"],
               "loss_vs_teacher": e["eval/loss"] / teacher_eval["eval/loss"] - 1.0}
        rows.append(row)
        log(f"eval at step {step}: loss {row['loss']:.4f} ({100 * row['loss_vs_teacher']:+.1f}% vs teacher) "
            f"| active depth {row['active_depth']:.2f} of {m.prefix_layers + m.pool_size} "
            f"(fraction {row['active_fraction']:.3f}) | drop {row['drop_rate']:.3f}")

    it = make_iterator(cfg.data, "train", tokenizer=tok, seed=cfg.run.seed)
    evaluate(0)
    t0 = time.perf_counter()
    for step in range(1, cfg.train.steps + 1):
        params, opt_state, metrics = step_fn(params, opt_state, teacher.params, next(it))
        if step % cfg.train.log_every == 0 or step == cfg.train.steps:
            mt = jax.device_get(metrics)
            log(f"step {step}/{cfg.train.steps} | loss {float(mt['train/loss']):.4f} | ce "
                f"{float(mt['train/ce']):.4f} | kl {float(mt['train/kl']):.4f} | active fraction "
                f"{float(mt['route/active_fraction']):.3f} | {time.perf_counter() - t0:.0f}s")
        if step % cfg.train.eval_every == 0 or step == cfg.train.steps:
            evaluate(step)
    out = Path(cfg.run.dir).expanduser()
    write_export(cfg, params, out, step=cfg.train.steps, origin=f"distilled from {teacher_path}",
                 tokenizer=tok)
    report = {"teacher": str(teacher_path), "teacher_eval": {"loss": teacher_eval["eval/loss"],
                                                             "perplexity": teacher_eval["eval/perplexity"]},
              "kl_weight": kl_weight, "temperature": temperature,
              "student": {"prefix_layers": m.prefix_layers, "pool_size": m.pool_size, "steps": m.steps,
                          "compute_target": cfg.routing.compute_target,
                          "compute_weight": cfg.routing.compute_weight},
              "evals": rows}
    (out / "distill.json").write_text(json.dumps(report, indent=2) + "\n")
    log(table(report))
    return report


def table(report: dict) -> str:
    """Markdown: eval loss against mean active depth, per eval, with the teacher's loss."""
    rows = [(r["step"], f"{r['loss']:.4f}", f"{100 * r['loss_vs_teacher']:+.1f}%", f"{r['active_depth']:.2f}",
             f"{r['active_fraction']:.3f}", f"{r['drop_rate']:.3f}") for r in report["evals"]]
    header = ("step", "eval loss", "vs teacher", "active depth", "active fraction", "drop rate")
    return "\n".join([f"teacher eval loss {report['teacher_eval']['loss']:.4f}", "",
                      *markdown.table(header, rows)])
