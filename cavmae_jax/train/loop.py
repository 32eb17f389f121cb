"""The training loop, top to bottom: build -> init or restore -> steps -> log/checkpoint -> done.

    model, mesh, data iterator, optimizer      (build)
    state = restore(W) or init (+ init_from)   (exact resume: params, Adam, step, RNG, iterator)
    for step: batch -> global array -> jitted step -> every N: metrics, NaN guard, checkpoint
    SIGTERM / preemption: checkpoint now and stop; rerunning with the same W continues.
"""

import dataclasses
import logging
import os
import pathlib
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
import numpy as np

from cavmae_jax import parallel
from cavmae_jax.data import pipeline
from cavmae_jax.models import init_model_params
from cavmae_jax.models.cavmae import CAVMAE, frozen_param_names
from cavmae_jax.models.config import ModelConfig
from cavmae_jax.models.heads import CAVMAEClassifier
from cavmae_jax.train import checkpoint, optim
from cavmae_jax.train import state as state_lib
from cavmae_jax.train import step as step_lib
from cavmae_jax.train.metrics import MetricWriter, check_finite

log = logging.getLogger(__name__)
MODEL_INPUTS = ("audio", "video", "labels")


# ----------------------------------------------------------------------------- building
def pipeline_config(config: ml_collections.ConfigDict, model_cfg: ModelConfig,
                    train: bool = True) -> dict[str, Any]:
    """The Grain pipeline settings of a run config."""
    d = config.data
    stats = "data" if d.use_data_stats else None
    return dict(window_length=model_cfg.audio_length,
                audio_mean=stats or d.audio_mean, audio_std=stats or d.audio_std,
                worker_count=d.worker_count,
                balanced_sampling=d.balanced_sampling and train,
                augment=d.augment.to_dict() if train else {})


def build_model(config: ml_collections.ConfigDict, model_cfg: ModelConfig,
                metadata: dict | None = None) -> CAVMAE:
    """CAVMAE for pretraining, CAVMAEClassifier for finetuning (label_dim from the data)."""
    if config.task == "pretrain":
        return CAVMAE(model_cfg)
    label_dim = config.finetune.label_dim or len((metadata or {}).get("labels", []))
    if label_dim < 1:
        raise ValueError("finetuning needs labels: set config.finetune.label_dim or convert the "
                         "data with --labels")
    return CAVMAEClassifier(model_cfg, label_dim=label_dim, pooling=config.finetune.pooling)


def build_optimizer(config: ml_collections.ConfigDict, model_cfg: ModelConfig,
                    steps_per_epoch: int, total_steps: int):
    """(tx, schedule); the fixed sin-cos tables are frozen unless trainable_pos_embed."""
    optim_cfg = config.optim.to_dict()
    optim_cfg["freeze_patterns"] = tuple(optim_cfg["freeze_patterns"]) + tuple(
        f"^{name}$" for name in frozen_param_names(model_cfg))
    optim_cfg["head_patterns"] = tuple(optim_cfg["head_patterns"])
    return optim.build_optimizer(optim_cfg, steps_per_epoch, total_steps)


def merge_init(fresh: Any, loaded: Any) -> Any:
    """`fresh` params with every leaf that `loaded` has (same path and shape) copied in.

    Lets a classifier start from a pretraining checkpoint (decoder unused, head kept fresh),
    like the official `load_state_dict(strict=False)`, but naming what was skipped.
    """
    fresh_flat = dict(jax.tree_util.tree_flatten_with_path(fresh)[0])
    loaded_flat = dict(jax.tree_util.tree_flatten_with_path(loaded)[0])
    name = lambda p: "/".join(str(getattr(k, "key", k)) for k in p)
    out, kept_fresh = [], []
    for path, value in fresh_flat.items():
        if path in loaded_flat:
            if loaded_flat[path].shape != value.shape:
                raise ValueError(f"init_from: {name(path)} has shape {loaded_flat[path].shape}, "
                                 f"the model expects {value.shape}")
            out.append(loaded_flat[path])
        else:
            kept_fresh.append(name(path))
            out.append(value)
    unused = sorted(name(p) for p in loaded_flat if p not in fresh_flat)
    log.info("init_from: %d tensors loaded; kept fresh: %s; unused: %d (%s)",
             len(fresh_flat) - len(kept_fresh), kept_fresh or "-", len(unused),
             ", ".join(unused[:8]) + (" ..." if len(unused) > 8 else ""))
    treedef = jax.tree.structure(fresh)
    return jax.tree.unflatten(treedef, out)


def weight_averaging(config: ml_collections.ConfigDict) -> bool:
    """Whether the run keeps the official average of end-of-epoch params (finetuning)."""
    return config.finetune.wa_end > 0


@dataclasses.dataclass
class Run:
    """Everything the loop (and evaluation) builds from a config."""

    model: CAVMAE
    mesh: jax.sharding.Mesh
    tx: Any
    schedule: Any
    abstract_state: Any  # ShapeDtypeStructs with the mesh's shardings
    state_shardings: Any
    steps_per_epoch: int
    total_steps: int
    metadata: dict


def build_run(config: ml_collections.ConfigDict, model_cfg: ModelConfig,
              devices: Sequence[jax.Device] | None = None) -> Run:
    """Model, mesh (over `devices`, default all), optimizer and sharded abstract state."""
    mesh = parallel.make_mesh(config.mesh.data, config.mesh.fsdp, devices)
    if config.train.negatives == "local":  # each device's sub-batch = its own negatives
        model_cfg = model_cfg.replace(negative_groups=mesh.devices.size)
    metadata = pipeline.load_metadata(config.data.dir)
    model = build_model(config, model_cfg, metadata)
    splits = metadata.get("splits", {})
    num_train = int(splits.get(config.data.train_split, {}).get("num_records", 0))
    steps_per_epoch = max(1, num_train // config.train.global_batch_size)
    total_steps = config.train.num_steps or config.train.num_epochs * steps_per_epoch
    tx, schedule = build_optimizer(config, model.config, steps_per_epoch, total_steps)

    def init_state():
        params = init_model_params(model, jax.random.PRNGKey(config.train.seed))
        return state_lib.create(params, tx, config.train.seed, weight_averaging(config))

    abstract = jax.eval_shape(init_state)
    shardings = parallel.tree_shardings(abstract, mesh)
    abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                            abstract, shardings)
    return Run(model, mesh, tx, schedule, abstract, shardings, steps_per_epoch, total_steps,
               metadata)


def init_state(config: ml_collections.ConfigDict, run: Run) -> state_lib.TrainState:
    """Fresh state on the mesh; params from config.train.init_from when given."""
    seed = config.train.seed

    def init():
        params = init_model_params(run.model, jax.random.PRNGKey(seed))
        return state_lib.create(params, run.tx, seed, weight_averaging(config))

    state = jax.jit(init, out_shardings=run.state_shardings)()
    if config.train.init_from:
        loaded, meta = checkpoint.load_params(config.train.init_from)
        log.info("init_from %s (%s)", config.train.init_from, meta.get("source", "ours"))
        params = merge_init(jax.device_get(state.params), loaded)
        params = jax.device_put(params, run.state_shardings.params)
        state = jax.jit(lambda p: state_lib.create(p, run.tx, seed, weight_averaging(config)),
                        out_shardings=run.state_shardings)(params)
    return state


# ----------------------------------------------------------------------------- the loop
def train(config: ml_collections.ConfigDict, model_cfg: ModelConfig,
          workdir: str | os.PathLike) -> dict[str, float]:
    """Trains (or resumes) into `workdir`; returns the last logged metrics."""
    workdir = pathlib.Path(workdir)
    run = build_run(config, model_cfg)
    data_iter = pipeline.make_train_iterator(
        config.data.dir, config.data.train_split, global_batch_size=config.train.global_batch_size,
        seed=config.train.seed, process_index=jax.process_index(),
        process_count=jax.process_count(), config=pipeline_config(config, run.model.config))

    ckpt = checkpoint.Checkpointer(workdir / "checkpoints", config.train.keep_checkpoints,
                                   config.train.checkpoint_every, config.train.async_checkpoints)
    restored = ckpt.restore_latest(run.abstract_state, data_iter)
    if restored is not None:
        state, start = restored
        log.info("resumed from step %d", start)
    else:
        state, start = init_state(config, run), 0

    batch_sharding = parallel.batch_sharding(run.mesh)
    train_step = jax.jit(
        step_lib.make_train_step(run.model, run.tx, run.schedule, config.task,
                                 config.finetune.mode, config.finetune.loss),
        in_shardings=(run.state_shardings, batch_sharding, parallel.replicated(run.mesh)),
        out_shardings=(run.state_shardings, None), donate_argnums=0)

    average = jax.jit(state_lib.add_to_average, in_shardings=(run.state_shardings,),
                      out_shardings=run.state_shardings, donate_argnums=0)
    wa_start, wa_end = config.finetune.wa_start, config.finetune.wa_end
    writer = MetricWriter(workdir, run.total_steps)
    writer.write_config(config)
    ckpt.install_sigterm_handler()
    writer.start_timer(start)
    last: dict[str, float] = {}
    examples = 0
    try:
        for step in range(start + 1, run.total_steps + 1):
            host = next(data_iter)
            batch = parallel.host_batch_to_global({k: host[k] for k in MODEL_INPUTS}, run.mesh)
            log_step = step % config.train.log_every == 0 or step == run.total_steps
            state, metrics = train_step(state, batch, np.bool_(log_step))
            examples += config.train.global_batch_size
            if log_step:
                metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
                check_finite(metrics, step)
                last = writer.write(step, metrics, num_examples=examples)
                examples = 0
            epoch, end_of_epoch = divmod(step, run.steps_per_epoch)
            if (weight_averaging(config) and not end_of_epoch
                    and optim.in_wa_window(epoch, wa_start, wa_end)):
                state = average(state)  # before the checkpoint, so a resume keeps it
            saved = ckpt.save(step, state, data_iter)
            if ckpt.should_stop(step):
                log.warning("stop requested (SIGTERM/preemption): checkpointing step %d", step)
                if not saved:  # a second save of the same step raises in Orbax
                    ckpt.save(step, state, data_iter, force=True)
                break
        else:  # the run is complete
            if ckpt.latest_step() != run.total_steps:
                ckpt.save(run.total_steps, state, data_iter, force=True)
            if weight_averaging(config):
                save_average(state, workdir, wa_start, wa_end)
    finally:
        ckpt.wait()
        ckpt.close()
        writer.close()
        ckpt.uninstall_sigterm_handler()
    return last


def save_average(state: state_lib.TrainState, workdir: pathlib.Path, wa_start: int,
                 wa_end: int) -> None:
    """Writes the weight-averaged params to W/params_averaged (evaluate with --checkpoint)."""
    count = int(state.avg_count)
    if not count:
        log.warning("weight averaging: no epoch in [%d, %d] was reached; nothing written",
                    wa_start, wa_end)
        return
    checkpoint.save_params(workdir / "params_averaged", state.avg_params,
                           {"source": str(workdir), "averaged_epochs": count,
                            "wa_start": wa_start, "wa_end": wa_end}, overwrite=True)
    log.info("wrote the average of %d epochs' params to %s", count, workdir / "params_averaged")
