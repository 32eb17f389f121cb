"""The run's config: one typed tree whose sections are the constructors' arguments.

    tree = config.base()                    # ml_collections.ConfigDict holding every field
    tree.model.embed_dim = 384              # recipes (configs/*.py) edit it and return it
    cfg = config.build(tree)                # -> Config: frozen dataclasses, validated once

| section    | dataclass                     | consumed by                                   |
|------------|-------------------------------|-----------------------------------------------|
| `model`    | `models.config.ModelConfig`   | `CAVMAE(cfg.model)`, `CAVMAEClassifier`       |
| `data`     | `data.config.DataConfig`      | the Grain pipelines (it is a PipelineConfig)  |
| `optim`    | `train.optim.OptimConfig`     | `optim.build_optimizer(cfg.optim, ...)`       |
| `train`    | `TrainConfig`                 | the training loop and the checkpointer        |
| `finetune` | `FinetuneConfig`              | the classifier and its loss (task='finetune') |
| `mesh`     | `MeshConfig`                  | `parallel.make_mesh`                          |
| `eval`     | `EvalConfig`                  | retrieval / classification evaluation         |

Every field exists in `base()`, so `--config.section.field=value` works for all of them and
ml_collections rejects an unknown key or a wrong type at parse time; `build` checks types,
values and combinations and raises `ConfigError` with one line naming the key. A `Config` turns
back into a plain dict (`to_dict`) for `config.json` and checkpoints, and `from_dict` reads it.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any

import ml_collections

from cavmae_jax.data.config import AugmentConfig, DataConfig
from cavmae_jax.evaluate.retrieval import STRATEGIES
from cavmae_jax.models.config import ModelConfig
from cavmae_jax.train.optim import OptimConfig

TASKS = ("pretrain", "finetune")
CLASSIFIER_MODES = ("multimodal", "audioonly", "videoonly", "missingaudioonly",
                    "missingvideoonly")


class ConfigError(ValueError):
    """A config key with a bad value; the message names `config.section.key`."""


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """How long to train, how often to log, checkpoint and evaluate, and where to start from."""

    global_batch_size: int = 48
    num_epochs: int = 25
    num_steps: int = 0  # > 0 overrides num_epochs
    seed: int = 0
    log_every: int = 50
    checkpoint_every: int = 1000
    keep_checkpoints: int = 3
    async_checkpoints: bool = True
    # A run, a checkpoint step, or a params directory (ours or a converted official model).
    init_from: str = ""
    eval_every: int = 0  # > 0: retrieval on data.eval_split every N steps and at the end

    def __post_init__(self):
        for name in ("global_batch_size", "log_every", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.num_steps < 0 or self.num_epochs < 0 or self.eval_every < 0:
            raise ValueError("num_steps, num_epochs and eval_every must be >= 0")
        if not (self.num_steps or self.num_epochs):
            raise ValueError("set num_steps or num_epochs (both are 0)")


@dataclasses.dataclass(frozen=True)
class FinetuneConfig:
    """The classifier (task='finetune'): its mode, loss, pooling, and weight averaging."""

    mode: str = "multimodal"  # official CAVMAEFT modes, used for training and evaluation
    loss: str = "bce"  # 'bce' (multi-label, mAP) | 'ce' (single-label, accuracy)
    pooling: str = "mean"  # 'mean' (official) | 'global' (Sync global tokens)
    label_dim: int = 0  # 0: the number of labels in the data's metadata.json
    wa_start: int = 0  # average the end-of-epoch params of epochs [wa_start, wa_end]; 0 = off
    wa_end: int = 0

    def __post_init__(self):
        if self.mode not in CLASSIFIER_MODES:
            raise ValueError(f"mode must be one of {CLASSIFIER_MODES}, got {self.mode!r}")
        if self.loss not in ("bce", "ce"):
            raise ValueError(f"loss must be 'bce' or 'ce', got {self.loss!r}")
        if self.pooling not in ("mean", "global"):
            raise ValueError(f"pooling must be 'mean' or 'global', got {self.pooling!r}")


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Device mesh ('data', 'fsdp'): the batch is split over both, params over 'fsdp'."""

    data: int = -1  # -1: all devices not used by fsdp
    fsdp: int = 1


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """Evaluation from a checkpoint, and the periodic retrieval during training."""

    strategy: str = "diagonal_mean"  # how a clip pair's K x K pair similarities are aggregated
    num_clips: int = 0  # 0: all clips; N: the first N (official --nums_samples)
    batch_size: int = 32  # clips per evaluation batch
    middle_frame_only: bool = False  # CAV-MAE protocol: one middle frame, full audio

    def __post_init__(self):
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {self.strategy!r}")
        if self.batch_size < 1 or self.num_clips < 0:
            raise ValueError("batch_size must be >= 1 and num_clips >= 0")


@dataclasses.dataclass(frozen=True)
class Config:
    """The whole run: task and one section per consumer."""

    task: str = "pretrain"  # 'pretrain' (MAE + InfoNCE) | 'finetune' (classification)
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    optim: OptimConfig = OptimConfig()
    train: TrainConfig = TrainConfig()
    finetune: FinetuneConfig = FinetuneConfig()
    mesh: MeshConfig = MeshConfig()
    eval: EvalConfig = EvalConfig()

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict (tuples become lists)."""
        return dataclasses.asdict(self)

    def replace(self, **sections: Any) -> Config:
        """A copy with whole sections replaced, e.g. `cfg.replace(model=cfg.model.replace(...))`."""
        return dataclasses.replace(self, **sections)


SECTIONS = tuple(f.name for f in dataclasses.fields(Config) if f.name != "task")


# ----------------------------------------------------------------------------- the tree
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _optional_type(hint: Any) -> type | None:
    """int for `int | None` (a field that may stay unset), else None."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1 and type(None) in typing.get_args(hint):
            return args[0]
    return None


def _tree(instance: Any) -> ml_collections.ConfigDict:
    """ConfigDict of a dataclass instance: every field, typed (None fields as placeholders)."""
    out = ml_collections.ConfigDict()
    hints = _hints(type(instance))
    for f in dataclasses.fields(instance):
        value = getattr(instance, f.name)
        if dataclasses.is_dataclass(value):
            out[f.name] = _tree(value)
        elif value is None and (kind := _optional_type(hints[f.name])) is not None:
            out[f.name] = ml_collections.config_dict.placeholder(kind)
        else:
            out[f.name] = value
    return out


def base() -> ml_collections.ConfigDict:
    """Every field with its default (the model defaults are the released Sync model)."""
    return to_tree(Config())


def to_tree(cfg: Config) -> ml_collections.ConfigDict:
    """The ConfigDict of a built Config (e.g. to override fields of a checkpoint's config)."""
    return _tree(cfg)


def section_tree(instance: Any) -> ml_collections.ConfigDict:
    """One section's ConfigDict, e.g. `section_tree(ModelConfig(arch='cavmae', ...))`."""
    return _tree(instance)


# ----------------------------------------------------------------------------- building
def _check_type(value: Any, hint: Any, where: str) -> Any:
    """`value` converted to the field's type (int -> float, list -> tuple), or ConfigError."""
    if value is None and _optional_type(hint) is not None:
        return None
    kind = _optional_type(hint) or hint
    origin = typing.get_origin(kind)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config.{where} must be a tuple, got {value!r}")
        args = typing.get_args(kind)
        item = args[0] if args else Any
        return tuple(value if item is Any else _check_type(v, item, where) for v in value)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind in (int, float, str, bool) and not (
            isinstance(value, kind) and not (kind is int and isinstance(value, bool))):
        raise ConfigError(f"config.{where} must be {kind.__name__}, got {value!r}")
    return value


def _make(cls: type, values: Mapping[str, Any], where: str) -> Any:
    """`cls(**values)` with unknown keys, types and the class's own checks as ConfigErrors."""
    hints = _hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise ConfigError(f"unknown key config.{where}.{unknown[0]}; {where} has: "
                          f"{', '.join(names)}")
    kwargs = {}
    for name, value in values.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            if dataclasses.is_dataclass(value):
                value = dataclasses.asdict(value)
            kwargs[name] = _make(hint, dict(value), f"{where}.{name}")
        else:
            kwargs[name] = _check_type(value, hint, f"{where}.{name}")
    try:
        return cls(**kwargs)
    except ValueError as e:
        msg = str(e).removeprefix("ModelConfig: ")
        raise ConfigError(f"config.{where}: {msg}") from None


def _plain(tree: Any) -> dict[str, Any]:
    if isinstance(tree, (ml_collections.ConfigDict, ml_collections.FrozenConfigDict)):
        return tree.to_dict()
    return {k: (_plain(v) if isinstance(v, Mapping) else v) for k, v in dict(tree).items()}


def build(tree: ml_collections.ConfigDict | Mapping[str, Any] | Config) -> Config:
    """The validated Config of a tree (ConfigDict or dict, any subset of the fields)."""
    if isinstance(tree, Config):
        tree = tree.to_dict()
    values = _plain(tree)
    unknown = sorted(set(values) - {"task", *SECTIONS})
    if unknown:
        raise ConfigError(f"unknown key config.{unknown[0]}; the config has: task, "
                          f"{', '.join(SECTIONS)}")
    task = values.get("task", "pretrain")
    if task not in TASKS:
        raise ConfigError(f"config.task must be one of {TASKS}, got {task!r}")
    hints = _hints(Config)
    sections = {name: _make(hints[name], values.get(name, {}), name) for name in SECTIONS}
    cfg = Config(task=task, **sections)
    if cfg.data.window_length == 0:
        cfg = cfg.replace(data=dataclasses.replace(cfg.data, window_length=cfg.model.audio_length))
    elif cfg.data.window_length != cfg.model.audio_length:
        raise ConfigError(f"config.data.window_length={cfg.data.window_length} differs from "
                          f"config.model.audio_length={cfg.model.audio_length}; leave it 0")
    if cfg.data.image_size == 0:
        cfg = cfg.replace(data=dataclasses.replace(cfg.data, image_size=cfg.model.img_size))
    elif cfg.data.image_size != cfg.model.img_size:
        raise ConfigError(f"config.data.image_size={cfg.data.image_size} differs from "
                          f"config.model.img_size={cfg.model.img_size}; leave it 0")
    if not 0.0 <= cfg.data.augment.mixup <= 1.0:
        raise ConfigError(f"config.data.augment.mixup is a probability, got "
                          f"{cfg.data.augment.mixup}")
    _check_moments(cfg)
    return cfg


def _check_moments(cfg: Config) -> None:
    """data.moments_per_clip M: >= 1, divides the batch, and not with mixup."""
    m = cfg.data.moments_per_clip
    if m < 1:
        raise ConfigError(f"config.data.moments_per_clip must be >= 1, got {m}")
    if m > 1 and cfg.data.augment.mixup > 0:
        raise ConfigError("config.data.moments_per_clip > 1 does not combine with "
                          "config.data.augment.mixup (a mixed example has no single moment)")
    if cfg.train.global_batch_size % m:
        raise ConfigError(f"config.train.global_batch_size={cfg.train.global_batch_size} is not "
                          f"a multiple of config.data.moments_per_clip={m}")


def from_dict(values: Mapping[str, Any]) -> Config:
    """A Config from `Config.to_dict()` output (config.json, a checkpoint's config)."""
    return build(values)


def require_data(cfg: Config) -> None:
    """Raises ConfigError when no data folder is set."""
    if not cfg.data.dir:
        raise ConfigError("config.data.dir is empty: point it at a data_prep.convert output "
                          "folder (--config.data.dir=DIR)")


# ----------------------------------------------------------------------------- comparing
# Fields that say how the data is read or how fast the model runs, not what it computes from:
# changing them on resume is allowed.
RUNTIME_FIELDS = {
    "data": ("dir", "worker_count", "worker_buffer_size", "read_threads",
             "prefetch_buffer_size", "pad_eval"),
    "model": ("dtype", "remat", "remat_policy", "attention_impl"),
}
# Sections whose changes resume accepts (logged): how to optimize, log and evaluate.
RESUMABLE_SECTIONS = ("optim", "train", "mesh", "eval")


def differences(old: Mapping[str, Any], new: Mapping[str, Any],
                prefix: str = "") -> list[tuple[str, Any, Any]]:
    """[(dotted key, old value, new value)] of every leaf that differs between two dicts."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key, "<missing>"), new.get(key, "<missing>")
        name = f"{prefix}{key}"
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            out += differences(a, b, name + ".")
        elif (list(a) if isinstance(a, tuple) else a) != (list(b) if isinstance(b, tuple) else b):
            out.append((name, a, b))
    return out


def split_resume_changes(saved: Mapping[str, Any], current: Mapping[str, Any]
                         ) -> tuple[list[tuple[str, Any, Any]], list[tuple[str, Any, Any]]]:
    """(refused, allowed) changes between a checkpoint's config and the current one."""
    refused, allowed = [], []
    for key, a, b in differences(saved, current):
        section, _, field = key.partition(".")
        if section in RESUMABLE_SECTIONS or field in RUNTIME_FIELDS.get(section, ()):
            allowed.append((key, a, b))
        elif section == "finetune" and field in ("wa_start", "wa_end"):
            allowed.append((key, a, b))
        else:
            refused.append((key, a, b))
    return refused, allowed


def format_changes(changes: list[tuple[str, Any, Any]]) -> str:
    return ", ".join(f"{k}: {a!r} -> {b!r}" for k, a, b in changes)


__all__ = ["AugmentConfig", "Config", "ConfigError", "DataConfig", "EvalConfig",
           "FinetuneConfig", "MeshConfig", "ModelConfig", "OptimConfig", "TrainConfig", "base",
           "build", "from_dict", "to_tree"]
