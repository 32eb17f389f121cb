"""The pipelines' settings: `PipelineConfig` (what to read and how), `AugmentConfig`, and
`DataConfig`, the `data` section of a run's config (a PipelineConfig plus where the data is).

`make_config` builds a PipelineConfig from a dataclass, a mapping or an ml_collections
ConfigDict plus keyword overrides, and names any unknown key. `data/pipeline.py` takes the
result; a `DataConfig` is a PipelineConfig, so a run passes its `data` section unchanged.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from cavmae_jax import audio, video
from cavmae_jax.data import augment

DEFAULT_WINDOW_LENGTH = 416  # the released Sync model's 4 s windows


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """Train-time augmentations (all off by default; official values in the comments).

    CAV-MAE pretraining: noise=True. CAV-MAE finetuning: noise=True, mixup=0.5, freqm=48,
    timem=192, label_smooth=0.1. Sync: none implemented officially (crop_and_flip optional).
    """

    noise: bool = False  # noise + circular time roll after normalization
    freqm: int = 0  # SpecAugment frequency-mask parameter (0 = off)
    timem: int = 0  # SpecAugment time-mask parameter (0 = off)
    mixup: float = 0.0  # probability of mixing with a uniformly drawn other clip
    mixup_alpha: float = augment.MIXUP_ALPHA  # lambda ~ Beta(alpha, alpha)
    label_smooth: float = 0.0  # official target smoothing (mixed and unmixed)
    crop_and_flip: bool = False  # Sync's RandomResizedCrop + RandomHorizontalFlip
    crop_scale: tuple[float, float] = augment.CROP_SCALE
    crop_ratio: tuple[float, float] = augment.CROP_RATIO
    flip_prob: float = 0.5


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    """What the pipelines read and how; every field has a working default."""

    window_length: int = DEFAULT_WINDOW_LENGTH  # L audio frames per window; 1024 = CAV-MAE
    num_frames: int | None = None  # expected N (checked against metadata.json), None = any
    audio_mean: float = audio.FBANK_MEAN  # official normalization constants ...
    audio_std: float = audio.FBANK_STD
    use_data_stats: bool = False  # ... or metadata.json's train-split fbank mean / std
    eval_frame: int | None = None  # eval frame k; None = N // 2 (Sync: 8; CAV-MAE N=10: 5)
    image_size: int = video.IMAGE_SIZE
    augment: AugmentConfig = AugmentConfig()
    pad_eval: bool = True  # pad eval/retrieval so all processes yield equal batch counts
    balanced_sampling: bool = False  # train: the official class-balanced draws (data/sampling.py)
    # train: M distinct moments (frame k + its window) of each clip per batch, next to each other;
    # the clip's other moments become in-batch negatives. 1 = the official one k per clip.
    moments_per_clip: int = 1
    worker_count: int = 0  # Grain worker processes (0: threads in this process; fastest on CPU)
    worker_buffer_size: int = 2  # batches buffered per worker
    read_threads: int = 2  # threads per process producing batches
    prefetch_buffer_size: int = 4  # batches prefetched per process


def _as_dict(config: Any) -> dict[str, Any]:
    """Mapping or ml_collections ConfigDict (not a Mapping subclass) -> plain nested dict."""
    return config.to_dict() if hasattr(config, "to_dict") else dict(config)


def make_config(config: PipelineConfig | Mapping[str, Any] | None = None,
                **overrides: Any) -> PipelineConfig:
    """PipelineConfig from a dataclass, a mapping / ml_collections ConfigDict, plus overrides.

    `augment` may be an AugmentConfig or a mapping of its fields; an `augment` mapping in
    `overrides` updates the base config's augment fields instead of replacing them. Unknown
    keys raise ValueError naming them.
    """
    if config is None:
        fields: dict[str, Any] = {}
    elif isinstance(config, PipelineConfig):
        fields = dataclasses.asdict(config)
    else:
        fields = _as_dict(config)
    base_aug = fields.get("augment")
    fields.update(overrides)
    new_aug = overrides.get("augment")
    if base_aug is not None and new_aug is not None and not isinstance(new_aug, AugmentConfig):
        if isinstance(base_aug, AugmentConfig):
            base_aug = dataclasses.asdict(base_aug)
        fields["augment"] = {**_as_dict(base_aug), **_as_dict(new_aug)}
    known = {f.name for f in dataclasses.fields(PipelineConfig)}
    if isinstance(config, DataConfig) or not isinstance(config, PipelineConfig):
        for key in _DATA_ONLY:  # where the data is, not how it is read
            fields.pop(key, None)
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ValueError(f"unknown pipeline config key(s) {unknown}; known: {sorted(known)}")
    aug = fields.get("augment", AugmentConfig())
    if not isinstance(aug, AugmentConfig):
        aug = _as_dict(aug)
        aug_known = {f.name for f in dataclasses.fields(AugmentConfig)}
        bad = sorted(set(aug) - aug_known)
        if bad:
            raise ValueError(f"unknown augment config key(s) {bad}; known: {sorted(aug_known)}")
        aug = AugmentConfig(**{k: (tuple(v) if isinstance(v, list) else v)
                               for k, v in aug.items()})
    fields["augment"] = aug
    cfg = PipelineConfig(**fields)
    if cfg.window_length <= 0:
        raise ValueError(f"window_length must be positive, got {cfg.window_length}")
    if cfg.image_size <= 0:
        raise ValueError(f"image_size must be positive, got {cfg.image_size}")
    if not 0.0 <= cfg.augment.mixup <= 1.0:
        raise ValueError(f"augment.mixup is a probability, got {cfg.augment.mixup}")
    if cfg.moments_per_clip < 1:
        raise ValueError(f"moments_per_clip must be >= 1, got {cfg.moments_per_clip}")
    if cfg.moments_per_clip > 1 and cfg.augment.mixup > 0:
        raise ValueError("moments_per_clip > 1 does not combine with augment.mixup (a mixed "
                         "example has no single moment); set one of them off")
    return cfg


_DATA_ONLY = ("dir", "train_split", "eval_split")


@dataclasses.dataclass(frozen=True)
class DataConfig(PipelineConfig):
    """The `data` section of a run's config: where the records are, and how to read them.

    `window_length` 0 means the model's `audio_length`, and `image_size` 0 the model's
    `img_size` (the only sizes the model accepts); the config tree fills them in when it is built.
    """

    dir: str = ""  # output folder of data_prep.convert, or a TFDS build's versioned folder
    train_split: str = "train"
    eval_split: str = "test"
    window_length: int = 0
    image_size: int = 0
