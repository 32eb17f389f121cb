"""The run: what a Config builds — model, mesh, optimizer, shardings and the jitted step.

The training loop, evaluation, the tests and the benchmarks all build it the same way:

    run = Run.build(cfg)                        # cfg: cavmae_jax.config.Config
    state = run.init_state()                    # fresh, or params from cfg.train.init_from
    state, metrics = run.train_step(state, run.global_batch(host_batch), log_step)

`load_checkpoint(path)` reads any checkpoint — a run folder (its latest step), a step
directory or a params directory — with the config saved in it, and only its params.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np

from cavmae_jax import config as config_lib
from cavmae_jax import parallel
from cavmae_jax.config import Config
from cavmae_jax.models import init_model_params
from cavmae_jax.models.cavmae import CAVMAE, frozen_param_names
from cavmae_jax.models.heads import CAVMAEClassifier
from cavmae_jax.train import checkpoint, optim
from cavmae_jax.train import state as state_lib
from cavmae_jax.train import step as step_lib

log = logging.getLogger(__name__)
MODEL_INPUTS = ("audio", "video", "labels")
PyTree = Any


def build_model(cfg: Config) -> CAVMAE | CAVMAEClassifier:
    """CAVMAE for pretraining, CAVMAEClassifier for finetuning (needs a resolved label_dim)."""
    if cfg.task == "pretrain":
        return CAVMAE(cfg.model)
    if cfg.finetune.label_dim < 1:
        raise config_lib.ConfigError("finetuning needs labels: set config.finetune.label_dim "
                                     "or convert the data with --labels")
    return CAVMAEClassifier(cfg.model, label_dim=cfg.finetune.label_dim,
                            pooling=cfg.finetune.pooling)


def resolve_config(cfg: Config, metadata: Mapping[str, Any], num_devices: int) -> Config:
    """Fills in what the data or the devices decide: label_dim 0, negative_groups 0, and
    clip_moments (from data.moments_per_clip) when the in-clip loss is on."""
    if cfg.task == "finetune" and cfg.finetune.label_dim == 0 and metadata.get("labels"):
        cfg = cfg.replace(finetune=dataclasses.replace(
            cfg.finetune, label_dim=len(metadata["labels"])))
    if cfg.model.negative_groups == 0:
        cfg = cfg.replace(model=cfg.model.replace(negative_groups=num_devices))
    if cfg.model.in_clip_loss_weight > 0:  # the in-clip loss groups the batch by clip
        if cfg.data.moments_per_clip < 2:
            raise config_lib.ConfigError(
                "config.model.in_clip_loss_weight > 0 needs several moments of a clip in a "
                "batch: set config.data.moments_per_clip >= 2")
        cfg = cfg.replace(model=cfg.model.replace(clip_moments=cfg.data.moments_per_clip))
    group = cfg.train.global_batch_size // max(cfg.model.negative_groups, 1)
    if cfg.data.moments_per_clip > 1 and group % cfg.data.moments_per_clip:
        raise config_lib.ConfigError(
            f"negative groups of {group} examples split the {cfg.data.moments_per_clip} moments "
            "of a clip (config.data.moments_per_clip): make the group size "
            "(config.train.global_batch_size / config.model.negative_groups) a multiple of it")
    return cfg


def merge_init(fresh: PyTree, loaded: PyTree) -> PyTree:
    """`fresh` params with every leaf that `loaded` has (same path and shape) copied in.

    Lets a classifier start from a pretraining checkpoint (decoder unused, head kept fresh),
    like the official `load_state_dict(strict=False)`, but naming what was skipped.
    """
    fresh_flat = dict(jax.tree_util.tree_flatten_with_path(fresh)[0])
    loaded_flat = dict(jax.tree_util.tree_flatten_with_path(loaded)[0])
    name = optim.param_path
    out, kept_fresh = [], []
    for path, value in fresh_flat.items():
        if path in loaded_flat:
            if tuple(loaded_flat[path].shape) != tuple(value.shape):
                raise ValueError(f"init_from: {name(path)} has shape {loaded_flat[path].shape}, "
                                 f"the model expects {value.shape}")
            out.append(loaded_flat[path])
        else:
            kept_fresh.append(name(path))
            out.append(value)
    unused = sorted(name(p) for p in loaded_flat if p not in fresh_flat)
    log.info("init_from: %d tensors loaded; kept fresh: %s; unused: %d%s",
             len(fresh_flat) - len(kept_fresh), kept_fresh or "-", len(unused),
             f" ({', '.join(unused[:8])}{' ...' if len(unused) > 8 else ''})" if unused else "")
    return jax.tree.unflatten(jax.tree.structure(fresh), out)


@dataclasses.dataclass
class Run:
    """Everything built from a Config; `config` has label_dim / negative_groups resolved."""

    config: Config
    model: CAVMAE | CAVMAEClassifier
    mesh: jax.sharding.Mesh
    metadata: dict
    steps_per_epoch: int
    total_steps: int
    tx: Any
    schedule: Any
    abstract_state: Any  # ShapeDtypeStructs carrying the mesh's shardings
    state_shardings: Any

    @classmethod
    def build(cls, cfg: Config, devices: Sequence[jax.Device] | None = None,
              metadata: Mapping[str, Any] | None = None) -> Run:
        """Model, mesh (over `devices`, default all), optimizer and sharded abstract state.

        `metadata`: the data's metadata.json (read from cfg.data.dir when None).
        """
        mesh = parallel.make_mesh(cfg.mesh.data, cfg.mesh.fsdp, devices)
        if metadata is None:
            from cavmae_jax.data import pipeline

            config_lib.require_data(cfg)
            metadata = pipeline.load_metadata(cfg.data.dir)
        cfg = resolve_config(cfg, metadata, mesh.devices.size)
        model = build_model(cfg)
        split = metadata.get("splits", {}).get(cfg.data.train_split, {})
        clips_per_batch = cfg.train.global_batch_size // cfg.data.moments_per_clip
        steps_per_epoch = max(1, int(split.get("num_records", 0)) // clips_per_batch)
        total_steps = cfg.train.num_steps or cfg.train.num_epochs * steps_per_epoch
        # The fixed sin-cos tables are parameters (as in the official state dict) that never
        # train: this is the one place they are kept out of the optimizer.
        optim_cfg = dataclasses.replace(cfg.optim, freeze_patterns=tuple(
            cfg.optim.freeze_patterns) + tuple(f"^{n}$" for n in frozen_param_names(cfg.model)))
        tx, schedule = optim.build_optimizer(optim_cfg, steps_per_epoch, total_steps)
        run = cls(cfg, model, mesh, dict(metadata), steps_per_epoch, total_steps, tx, schedule,
                  None, None)
        abstract = jax.eval_shape(run._fresh_state)
        shardings = parallel.tree_shardings(abstract, mesh)
        run.state_shardings = shardings
        run.abstract_state = jax.tree.map(
            lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract, shardings)
        return run

    # -- state ----------------------------------------------------------------------------------
    @property
    def weight_averaging(self) -> bool:
        """Whether the run keeps the official average of end-of-epoch params (finetuning)."""
        return self.config.task == "finetune" and self.config.finetune.wa_end > 0

    def _fresh_state(self) -> state_lib.TrainState:
        params = init_model_params(self.model, jax.random.PRNGKey(self.config.train.seed))
        return self.state_from_params(params)

    def state_from_params(self, params: PyTree) -> state_lib.TrainState:
        return state_lib.create(params, self.tx, self.config.train.seed, self.weight_averaging)

    @property
    def abstract_params(self) -> PyTree:
        return self.abstract_state.params

    def init_state(self) -> state_lib.TrainState:
        """Fresh state on the mesh; params from config.train.init_from when given."""
        state = jax.jit(self._fresh_state, out_shardings=self.state_shardings)()
        if not self.config.train.init_from:
            return state
        loaded = load_checkpoint(self.config.train.init_from)
        log.info("init_from %s (%s)", self.config.train.init_from, loaded.describe())
        params = merge_init(jax.device_get(state.params), jax.device_get(loaded.params))
        params = jax.device_put(params, self.state_shardings.params)
        return jax.jit(self.state_from_params, out_shardings=self.state_shardings)(params)

    # -- steps ----------------------------------------------------------------------------------
    @functools.cached_property
    def train_step(self):
        """jit((state, batch, log_step) -> (state, metrics)) with the run's shardings."""
        ft = self.config.finetune
        step = step_lib.make_train_step(self.model, self.tx, self.schedule, self.config.task,
                                        ft.mode, ft.loss)
        return jax.jit(step, in_shardings=(self.state_shardings,
                                           parallel.batch_sharding(self.mesh),
                                           parallel.replicated(self.mesh)),
                       out_shardings=(self.state_shardings, None), donate_argnums=0)

    @functools.cached_property
    def add_to_average(self):
        return jax.jit(state_lib.add_to_average, in_shardings=(self.state_shardings,),
                       out_shardings=self.state_shardings, donate_argnums=0)

    def global_batch(self, host: Mapping[str, np.ndarray]) -> dict[str, jax.Array]:
        """A pipeline batch (this process's rows) -> the model inputs as global arrays."""
        return parallel.host_batch_to_global({k: host[k] for k in MODEL_INPUTS}, self.mesh)

    def params_on_mesh(self, params: PyTree) -> PyTree:
        """Host or device params placed with the run's param shardings."""
        return jax.device_put(params, self.state_shardings.params)


# ----------------------------------------------------------------------------- checkpoints
@dataclasses.dataclass
class Loaded:
    """A checkpoint read by `load_checkpoint`: its config, params and where they came from."""

    config: Config | None  # None: a params directory without one (converted before configs)
    params: PyTree
    kind: str  # 'step' | 'params'
    path: str
    step: int | None
    source: dict  # a params directory's metadata (converted from, averaged epochs, ...)

    def describe(self) -> str:
        if self.kind == "step":
            return f"step {self.step} of {self.path}"
        origin = self.source.get("source")
        return f"params {self.path}" + (f", from {origin}" if origin else "")


def checkpoint_config(kind: str, directory: os.PathLike, source: Mapping[str, Any]
                      ) -> Config | None:
    """The Config saved with a checkpoint (step: its config item; params: its metadata)."""
    if kind == "step":
        saved = checkpoint.read_config(directory)
    else:
        saved = source.get("config")
        if saved is None and "model_config" in source:  # converted official models
            task = "finetune" if source.get("arch") == "cavmae_ft" else "pretrain"
            saved = {"task": task, "model": source["model_config"],
                     "finetune": {"label_dim": int(source.get("label_dim", 0))}}
    return config_lib.from_dict(saved) if saved is not None else None


def load_checkpoint(path: str | os.PathLike, fallback: Config | None = None,
                    devices: Sequence[jax.Device] | None = None) -> Loaded:
    """Config and params of any checkpoint (run folder, step directory, params directory).

    The model is built from the checkpoint's own config (`fallback` only for checkpoints that
    carry none); only the params are read — never the optimizer state, so the optimizer
    settings of the caller do not matter. Params land replicated on `devices` (default all).
    """
    kind, directory, step = checkpoint.resolve(path)
    source = {}
    if kind == "params":
        params, source = checkpoint.load_params(directory)
    cfg = checkpoint_config(kind, directory, source) or fallback
    if kind == "step":
        if cfg is None:
            raise config_lib.ConfigError(
                f"{directory} was saved without its config (an older version); pass the "
                "training config with --config")
        mesh = parallel.make_mesh(-1, 1, devices)
        model = build_model(resolve_config(cfg, {}, mesh.devices.size))
        abstract = jax.eval_shape(lambda: init_model_params(model, jax.random.PRNGKey(0)))
        replicated = parallel.replicated(mesh)
        abstract = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated), abstract)
        try:
            params = checkpoint.restore_params(directory, abstract)
        except ValueError as e:
            raise checkpoint.CheckpointError(
                f"{directory}: its params do not match its saved config "
                f"({checkpoint._one_line(e)})") from None
    elif cfg is not None:
        model = build_model(resolve_config(cfg, {}, 1))
        check_params(params, jax.eval_shape(
            lambda: init_model_params(model, jax.random.PRNGKey(0))), directory)
    return Loaded(cfg, params, kind, str(directory), step, dict(source))


def check_params(params: PyTree, expected: PyTree, where: os.PathLike | str) -> None:
    """Raises CheckpointError naming the missing, unexpected and mis-shaped params."""
    got = {optim.param_path(k): tuple(v.shape)
           for k, v in jax.tree_util.tree_flatten_with_path(params)[0]}
    want = {optim.param_path(k): tuple(v.shape)
            for k, v in jax.tree_util.tree_flatten_with_path(expected)[0]}
    problems = []
    for kind, names in (("missing", sorted(set(want) - set(got))),
                        ("unexpected", sorted(set(got) - set(want)))):
        if names:
            problems.append(f"{len(names)} {kind} ({', '.join(names[:3])}"
                            + (", ..." if len(names) > 3 else "") + ")")
    shapes = [f"{n} {got[n]} vs {want[n]}" for n in sorted(set(got) & set(want))
              if got[n] != want[n]]
    if shapes:
        problems.append(f"{len(shapes)} with another shape ({', '.join(shapes[:2])})")
    if problems:
        raise checkpoint.CheckpointError(
            f"{where}: its params do not match its model config: {'; '.join(problems)}")
