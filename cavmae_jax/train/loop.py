"""The training loop, top to bottom: build -> init or restore -> steps -> log/checkpoint -> done.

    run = Run.build(cfg)                          (model, mesh, optimizer, jitted step)
    state = restore(W) or run.init_state()        (exact resume: params, Adam, step, RNG, iterator;
                                                   a changed model or data setting is refused)
    for step: batch -> global array -> jitted step -> every N: metrics / eval / checkpoint
    a non-finite loss stops the run before anything non-finite is saved
    SIGTERM / preemption: checkpoint now and stop; rerunning with the same W continues.
"""

from __future__ import annotations

import logging
import os
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from cavmae_jax import config as config_lib
from cavmae_jax.config import Config
from cavmae_jax.data import pipeline
from cavmae_jax.train import checkpoint, console, optim
from cavmae_jax.train import state as state_lib
from cavmae_jax.train.metrics import MetricWriter, check_finite
from cavmae_jax.train.run import Run

log = logging.getLogger(__name__)


@jax.jit
def _any_nonfinite(flag: jax.Array, loss: jax.Array) -> jax.Array:
    """flag | loss is NaN/Inf, on device: checked only when the loop logs or saves."""
    return flag | ~jnp.isfinite(loss)


@jax.jit
def _all_finite(tree: Any) -> jax.Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def check_resume(ckpt: checkpoint.Checkpointer, cfg: Config) -> None:
    """Refuses to resume a checkpoint saved with another model or data setting (keys named);
    logs the optimizer / schedule / logging changes it accepts."""
    steps = ckpt.all_steps()
    if not steps:
        return
    try:
        saved = checkpoint.read_config(ckpt.directory / str(steps[-1]))
    except Exception:  # noqa: BLE001 - an unreadable step is reported by the restore
        return
    if saved is None:
        log.warning("checkpoint %d has no saved config (older version): resuming unchecked",
                    steps[-1])
        return
    current = cfg.to_dict()
    refused, allowed = config_lib.split_resume_changes(
        config_lib.from_dict(saved).to_dict(), current)
    if refused:
        raise config_lib.ConfigError(
            f"{ckpt.directory.parent} was trained with other settings: "
            f"{config_lib.format_changes(refused)}; use a new --workdir, or set them back")
    if allowed:
        log.info("resuming with changed settings: %s", config_lib.format_changes(allowed))


def train(cfg: Config, workdir: str | os.PathLike) -> dict[str, float]:
    """Trains (or resumes) into `workdir`; returns the last logged metrics."""
    workdir = pathlib.Path(workdir)
    run = Run.build(cfg)
    cfg = run.config
    data_iter = pipeline.make_train_iterator(
        cfg.data.dir, cfg.data.train_split, global_batch_size=cfg.train.global_batch_size,
        seed=cfg.train.seed, process_index=jax.process_index(),
        process_count=jax.process_count(), config=cfg.data)

    ckpt = checkpoint.Checkpointer(workdir / "checkpoints", cfg.train.keep_checkpoints,
                                   cfg.train.checkpoint_every, cfg.train.async_checkpoints,
                                   config=cfg.to_dict())
    check_resume(ckpt, cfg)
    restored = ckpt.restore_latest(run.abstract_state, data_iter)
    state, start = restored if restored is not None else (run.init_state(), 0)
    console.banner(run, workdir, start)

    evaluator = None
    if cfg.train.eval_every:
        from cavmae_jax.evaluate import run as eval_run

        evaluator = eval_run.RetrievalEvaluator(run)
    writer = MetricWriter(workdir, run.total_steps, resume_step=start)
    writer.write_config(cfg.to_dict())
    ckpt.install_sigterm_handler()
    writer.start_timer(start)
    last: dict[str, float] = {}
    examples, nonfinite = 0, jnp.zeros((), bool)
    try:
        for step in range(start + 1, run.total_steps + 1):
            batch = run.global_batch(next(data_iter))
            log_step = step % cfg.train.log_every == 0 or step == run.total_steps
            state, metrics = run.train_step(state, batch, np.bool_(log_step))
            nonfinite = _any_nonfinite(nonfinite, metrics["loss"])
            examples += cfg.train.global_batch_size
            if log_step:
                metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
                check_finite(metrics, step)
                last = writer.write(step, metrics, num_examples=examples)
                examples = 0
            epoch, end_of_epoch = divmod(step, run.steps_per_epoch)
            if (run.weight_averaging and not end_of_epoch
                    and optim.in_wa_window(epoch, cfg.finetune.wa_start, cfg.finetune.wa_end)):
                state = run.add_to_average(state)  # before the checkpoint, so a resume keeps it
            if evaluator and (step % cfg.train.eval_every == 0 or step == run.total_steps):
                report = evaluator(state.params)
                writer.write(step, evaluator.scalars(report), console=False)
                console.say(f"eval at step {step}: {evaluator.summary(report)}")
            stopping = ckpt.should_stop(step)
            if ckpt.due(step) or stopping or step == run.total_steps:
                _check_state_finite(nonfinite, state, step, ckpt)
            saved = ckpt.save(step, state, data_iter)
            if stopping:
                log.warning("stop requested (SIGTERM/preemption): checkpointing step %d", step)
                if not saved:  # a second save of the same step raises in Orbax
                    ckpt.save(step, state, data_iter, force=True)
                break
        else:  # the run is complete
            if ckpt.latest_step() != run.total_steps:
                ckpt.save(run.total_steps, state, data_iter, force=True)
            if run.weight_averaging:
                save_average(state, workdir, cfg)
    finally:
        ckpt.wait()
        ckpt.close()
        writer.close()
        ckpt.uninstall_sigterm_handler()
    console.say(f"done: step {ckpt.latest_step()} of {run.total_steps} in {workdir}")
    return last


def _check_state_finite(nonfinite: jax.Array, state: state_lib.TrainState, step: int,
                        ckpt: checkpoint.Checkpointer) -> None:
    """Raises before a checkpoint would hold a NaN/Inf loss history or params."""
    if bool(nonfinite) or not bool(_all_finite(state.params)):
        good = ckpt.latest_step()
        raise FloatingPointError(
            f"the loss or the params became NaN/Inf at or before step {step}; nothing "
            f"non-finite was saved (last good checkpoint: {good if good else 'none'}). Lower "
            "optim.lr or set optim.grad_clip_norm, then rerun")


def save_average(state: state_lib.TrainState, workdir: pathlib.Path, cfg: Config) -> None:
    """Writes the weight-averaged params to W/params_averaged (evaluate with --checkpoint)."""
    count = int(state.avg_count)
    wa_start, wa_end = cfg.finetune.wa_start, cfg.finetune.wa_end
    if not count:
        log.warning("weight averaging: no epoch in [%d, %d] was reached; nothing written",
                    wa_start, wa_end)
        return
    checkpoint.save_params(workdir / "params_averaged", state.avg_params,
                           {"source": str(workdir), "averaged_epochs": count,
                            "wa_start": wa_start, "wa_end": wa_end, "config": cfg.to_dict()},
                           overwrite=True)
    log.info("wrote the average of %d epochs' params to %s", count, workdir / "params_averaged")
