"""The base config every recipe starts from: model, data, optimizer, training, mesh, eval.

Every field exists here with its type, so `--config.section.key=value` overrides are checked by
ml_collections (an unknown key or a wrong type fails at start-up), and `validate` checks the
combinations once more before anything is built.
"""

import dataclasses

import ml_collections

from cavmae_jax.models.config import ModelConfig
from cavmae_jax.train.optim import OPTIM_DEFAULTS

TASKS = ("pretrain", "finetune")


def model_config(**overrides) -> ml_collections.ConfigDict:
    """All ModelConfig fields (defaults = the released Sync model) with `overrides`."""
    return ml_collections.ConfigDict(dataclasses.asdict(ModelConfig(**overrides)))


def get_base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.task = "pretrain"  # 'pretrain' (MAE + InfoNCE) | 'finetune' (classification)
    c.model = model_config()

    c.data = ml_collections.ConfigDict()
    c.data.dir = ""  # output directory of data_prep.convert
    c.data.train_split = "train"
    c.data.eval_split = "test"
    c.data.audio_mean = -5.081  # official normalization constants ...
    c.data.audio_std = 4.4849
    c.data.use_data_stats = False  # ... or the train split's mean/std from metadata.json
    c.data.worker_count = 0  # Grain worker processes (0: in-process, fastest on few cores)
    c.data.balanced_sampling = False  # official class-balanced draws (AS-2M, VGGSound finetune)
    c.data.augment = ml_collections.ConfigDict()
    c.data.augment.noise = False  # noise + circular time roll (official CAV-MAE: on)
    c.data.augment.freqm = 0  # SpecAugment frequency-mask width (official finetune: 48)
    c.data.augment.timem = 0  # SpecAugment time-mask width (official finetune: 192)
    c.data.augment.mixup = 0.0  # mixup probability (official finetune: 0.5)
    c.data.augment.label_smooth = 0.0  # official finetune: 0.1
    c.data.augment.crop_and_flip = False  # RandomResizedCrop + horizontal flip (Sync option)

    c.optim = ml_collections.ConfigDict(dict(OPTIM_DEFAULTS))
    c.optim.head_patterns = list(OPTIM_DEFAULTS["head_patterns"])
    c.optim.freeze_patterns = list(OPTIM_DEFAULTS["freeze_patterns"])

    c.train = ml_collections.ConfigDict()
    c.train.global_batch_size = 48
    c.train.num_epochs = 25
    c.train.num_steps = 0  # > 0 overrides num_epochs
    c.train.seed = 0
    c.train.log_every = 50
    c.train.checkpoint_every = 1000
    c.train.keep_checkpoints = 3
    c.train.async_checkpoints = True
    c.train.init_from = ""  # params directory (ours or converted official) to start from
    c.train.negatives = "global"  # 'global' | 'local' (per-device sub-batch, official DP)

    c.finetune = ml_collections.ConfigDict()
    c.finetune.mode = "multimodal"  # classifier mode used for training and eval
    c.finetune.loss = "bce"  # 'bce' (multi-label, mAP) | 'ce' (single-label, accuracy)
    c.finetune.pooling = "mean"  # 'mean' (official) | 'global' (Sync global tokens)
    c.finetune.label_dim = 0  # 0: the number of labels in the data's metadata.json
    c.finetune.wa_start = 0  # weight averaging over epochs [wa_start, wa_end]; 0 = off
    c.finetune.wa_end = 0

    c.mesh = ml_collections.ConfigDict()
    c.mesh.data = -1  # -1: all devices not used by fsdp
    c.mesh.fsdp = 1

    c.eval = ml_collections.ConfigDict()
    c.eval.strategy = "diagonal_mean"  # 'diagonal_mean' | 'diagonal_max' | 'mean' | 'max'
    c.eval.num_clips = 0  # 0: all clips; N: the first N (official --nums_samples)
    c.eval.batch_size = 32
    c.eval.middle_frame_only = False  # CAV-MAE protocol: one middle frame, full audio
    return c


def shrink_to_local(c: ml_collections.ConfigDict) -> None:
    """The `:local` variant of a recipe: a tiny ViT and a few steps, same code paths."""
    c.model.update(embed_dim=64, num_heads=4, modality_specific_depth=2, joint_depth=1,
                   decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=4)
    if c.model.num_register_tokens:
        c.model.num_register_tokens = 2
    c.train.update(global_batch_size=8, num_steps=20, log_every=5, checkpoint_every=10)


def validate(c: ml_collections.ConfigDict) -> ModelConfig:
    """Checks the combinations ml_collections cannot; returns the ModelConfig. Raises ValueError
    naming the bad key."""
    if c.task not in TASKS:
        raise ValueError(f"config.task must be one of {TASKS}, got {c.task!r}")
    fields = {f.name for f in dataclasses.fields(ModelConfig)}
    unknown = sorted(set(c.model) - fields)
    if unknown:
        raise ValueError(f"unknown config.model key(s) {unknown}; known: {sorted(fields)}")
    try:
        model = ModelConfig(**c.model.to_dict())
    except ValueError as e:
        raise ValueError(f"config.model: {e}") from e
    if c.train.global_batch_size < 1:
        raise ValueError("config.train.global_batch_size must be >= 1")
    if c.train.negatives not in ("global", "local"):
        raise ValueError("config.train.negatives must be 'global' or 'local'")
    if c.finetune.loss not in ("bce", "ce"):
        raise ValueError("config.finetune.loss must be 'bce' or 'ce'")
    if c.eval.strategy not in ("diagonal_mean", "diagonal_max", "mean", "max"):
        raise ValueError(f"config.eval.strategy {c.eval.strategy!r} is not an aggregation")
    if not c.data.dir:
        raise ValueError("config.data.dir is empty: point it at a data_prep.convert output "
                         "directory (--config.data.dir=DIR)")
    return model
