"""The training loop: build everything from a Config, resume if the run dir has checkpoints, train,
evaluate, log and checkpoint. The math lives in step.py; this file only orchestrates."""

from __future__ import annotations

import contextlib
import time

import jax

from radial_jax.config import Config
from radial_jax.data.pipeline import describe, make_eval_batches, make_iterator
from radial_jax.data.tokenizer import tokenizer_for
from radial_jax.model.build import abstract_model, build_model
from radial_jax.model.flops import describe_flops
from radial_jax.parallel.distributed import PeerWatch, abandon, heartbeat_timeout, wait_for_lost
from radial_jax.parallel.plan import ShardingPlan
from radial_jax.train.checkpoint import Checkpointer
from radial_jax.train.guard import check_resume, describe_changes, record_changes
from radial_jax.train.heatmap import write_heatmap
from radial_jax.train.init import train_state_init
from radial_jax.train.metrics import MetricWriter, console_line, say
from radial_jax.train.nonfinite import NonFiniteError, enforce, new_tally, take, tally
from radial_jax.train.optimizer import lr_schedule, make_optimizer
from radial_jax.train.perf import peak_flops, perf_metrics
from radial_jax.train.preflight import check_free_space, prepare_run_dir
from radial_jax.train.signals import Interrupted, StopRequest
from radial_jax.train.step import make_eval_step, make_train_step, summarize_eval
from radial_jax.train.summary import run_summary

# Words of the runtime's errors when a peer cannot be reached (gloo on CPU, NCCL, the coordinator).
_COMMUNICATION = ("Gloo", "NCCL", "onnection", "peer", "UNAVAILABLE", "DEADLINE_EXCEEDED")


@contextlib.contextmanager
def _on_collective_failure(message):
    """In a multi-process run, an error from a step whose peer is gone (a collective that failed)
    ends the process with `message(lost)` once the coordination service names the lost process;
    other errors are raised as they are."""
    try:
        yield
    except Exception as e:  # the runtime raises JaxRuntimeError or ValueError, by backend
        if jax.process_count() == 1 or not any(w in str(e) for w in _COMMUNICATION):
            raise
        lost = wait_for_lost(heartbeat_timeout() + 10)
        if not lost:
            raise
        abandon(message(lost))


def evaluate(eval_step, params, batches: list[dict]) -> dict[str, float]:
    return summarize_eval([jax.device_get(eval_step(params, b)) for b in batches])


def train(cfg: Config, *, stop_after: int | None = None, resume_command: str | None = None) -> dict:
    """Train (or resume) the run described by `cfg`; returns the last metrics.

    `stop_after` ends this invocation (with a checkpoint) after that many steps, as a preemption
    would; the schedule still runs to `train.steps` when the run is resumed. `resume_command` is
    what to tell the user to run after a SIGTERM/SIGINT (the CLI passes its own command line).
    """
    t = cfg.train
    run_dir = prepare_run_dir(cfg.run.dir)
    lead = jax.process_index() == 0
    ckpt = Checkpointer(run_dir / "checkpoints", keep=t.keep_checkpoints)
    saved = ckpt.newest_config()  # before anything is built: refuse incompatible changes early
    changes = check_resume(saved[1], cfg.to_dict(), step=saved[0], where=ckpt.directory) if saved else {}
    if lead:
        say("resolved config:\n" + "\n".join("  " + line for line in cfg.to_yaml().splitlines()))
        (run_dir / "config.yaml").write_text(cfg.to_yaml())

    plan = ShardingPlan.from_config(cfg)  # the device mesh and logical -> mesh axis rules
    say(plan.describe())
    batch_shape = (cfg.data.batch_size, cfg.data.seq_len)
    shard, n_shards = plan.data_shard(batch_shape)  # which rows of each global batch we load

    tokenizer = tokenizer_for(cfg)
    say(describe(cfg.data))
    # data.streams=0: one stream per batch shard of the run that starts it, kept on resume.
    streams = cfg.data.streams or ckpt.data_streams() or n_shards
    data_iter = make_iterator(cfg.data, "train", tokenizer=tokenizer, seed=cfg.data.shuffle_seed,
                              process_index=shard, process_count=n_shards, streams=streams)
    if streams != n_shards:
        say(f"data: {streams} streams over {n_shards} batch shard{'s' if n_shards > 1 else ''} "
            f"({streams // n_shards} each)")
    eval_host = make_eval_batches(cfg.data, tokenizer, t.eval_batches)
    eval_batches = [plan.batch_from_full(b) for b in eval_host]

    tx = make_optimizer(t, cfg.routing.balance_rate)
    graphdef, _ = abstract_model(cfg)
    init = train_state_init(lambda: build_model(cfg), tx)
    abstract = plan.abstract_state(init)
    n_params = sum(x.size for x in jax.tree.leaves(abstract.params))
    say(f"model: {cfg.model.kind}, {n_params:,} parameters; {describe_flops(cfg)}")
    peak, peak_source = peak_flops(cfg)
    say(f"MFU against {peak / 1e12:.2f} TFLOP/s per device: {peak_source}")
    say(plan.describe_state(abstract.params, abstract))

    check_free_space(run_dir, sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(abstract)),
                     t.keep_checkpoints)
    # Restored straight into this mesh's shardings, whatever mesh saved it; damaged ones skipped.
    start, state, damaged = ckpt.restore_newest(abstract, data_iter)
    if damaged:
        where = ckpt.set_aside(damaged)
        say(f"resuming from step {start}, the newest intact checkpoint; moved the damaged "
            f"checkpoint{'s' if len(damaged) > 1 else ''} (step {', '.join(map(str, damaged))}) to "
            f"{where}")
    if start:
        say(f"resumed from {ckpt.directory / str(start)} (step {start} of {t.steps})")
        if changes:
            say(f"config changed since step {start} (allowed): {describe_changes(changes)}")
            if lead:
                record_changes(run_dir, start, changes)
    else:
        state = plan.init_state(init, abstract)
    if start >= t.steps:
        say(f"run already complete at step {start}; raise train.steps to train further")

    train_step = plan.jit_train_step(make_train_step(graphdef, tx, lr_schedule(t)), abstract,
                                     batch_shape)
    eval_step = plan.jit_eval_step(make_eval_step(graphdef, tokenizer.token_bytes()), abstract.params,
                                   batch_shape)
    writer = MetricWriter(run_dir, enabled=lead, start_step=start)
    if writer.dropped:
        say(f"dropped {writer.dropped} metrics.jsonl rows logged after step {start} by the previous "
            "attempt; they are logged again as training repeats those steps")
    tokens_per_step = cfg.data.batch_size * cfg.data.seq_len
    last: dict[str, float] = {}
    nonfinite = new_tally()  # skipped steps, counted on the device; read where we log
    interval_start, interval_steps, t_begin = time.perf_counter(), 0, time.perf_counter()
    resume = resume_command or f"radial train ... run.dir={run_dir}  (the same config)"
    step = start

    def lost_message(lost: list[int]) -> str:
        latest = max(ckpt.complete_steps(), default=None)
        kept = (f"The newest complete checkpoint is {ckpt.directory / str(latest)} (step {latest}); "
                "the steps after it are trained again" if latest else "No checkpoint was saved yet")
        return (f"lost process {', '.join(map(str, lost))} of {jax.process_count()} at step "
                f"{step}/{t.steps}: it stopped answering the coordination service (killed, crashed or "
                f"its host failed). {kept}. To resume, start every process again with:\n  {resume}")

    with StopRequest() as stop, PeerWatch(lost_message), _on_collective_failure(lost_message):
        for step in range(start + 1, t.steps + 1):
            batch = plan.global_batch(next(data_iter), batch_shape)
            state, metrics = train_step(state, batch)
            nonfinite = tally(nonfinite, metrics.pop("train/nonfinite"), step)
            interval_steps += 1
            is_last = step == t.steps
            pause = stop_after is not None and step - start >= stop_after
            stopping = stop.should_stop(step)  # the same step on every process
            save = step % t.checkpoint_every == 0 or is_last or stopping or pause
            if step % t.log_every == 0 or save:
                values = {k: float(v) for k, v in jax.device_get(metrics).items()}
                counts, nonfinite = take(nonfinite)
                values["train/nonfinite_skipped"] = counts["count"]
                now = time.perf_counter()
                step_time = (now - interval_start) / interval_steps
                values["perf/step_time_s"] = step_time
                values["perf/tokens_per_s"] = tokens_per_step / step_time
                values.update(perf_metrics(cfg, values["perf/tokens_per_s"], plan.mesh.size, peak,
                                           values.get("route/active_depth")))
                interval_start, interval_steps = now, 0
                writer.scalars(step, values)
                last.update(values)
                say(console_line(step, t.steps, values, eta_s=step_time * (t.steps - step)))
                if counts["count"]:
                    say(f"warning: skipped {counts['count']} step(s) with non-finite loss or gradients "
                        f"since the last report (first at step {counts['first']}); their updates were "
                        "not applied")
                    try:
                        latest = ckpt.latest_step()
                        enforce(counts, policy=t.on_nonfinite, max_in_row=t.max_nonfinite,
                                last_good=str(ckpt.directory / str(latest)) if latest else
                                "none (no checkpoint was saved yet)")
                    except NonFiniteError:
                        ckpt.wait()
                        writer.close()
                        raise
            if (step % t.eval_every == 0 and not stopping) or is_last:
                values = evaluate(eval_step, state.params, eval_batches)
                writer.scalars(step, values)
                last.update(values)
                say(f"eval at step {step}: loss {values['eval/loss']:.4f} | "
                    f"ppl {values['eval/perplexity']:.2f} | bpb {values['eval/bits_per_byte']:.3f}")
                if cfg.model.kind == "radial":  # every process computes (params are sharded)
                    write_heatmap(run_dir, writer, step, graphdef, state.params, eval_host[0],
                                  tokenizer)
            if save:
                ckpt.save(step, state, data_iter, cfg.to_dict())
            if pause:
                say(f"stopping after {stop_after} steps as asked (checkpoint at step {step})")
                break
            if stopping:
                ckpt.wait()
                ckpt.close()
                writer.close()
                say(f"interrupted by {stop.reason()} at step {step}/{t.steps}: saved checkpoint "
                    f"{ckpt.directory / str(step)}. To resume where it stopped, run again:\n  "
                    + resume)
                raise Interrupted(stop.signum, step)
    ckpt.wait()
    ckpt.close()
    writer.close()
    if lead:
        say(run_summary(cfg, run_dir, last, time.perf_counter() - t_begin, ckpt.directory))
    return last
