"""ModelConfig: every option of the official constructors and forward calls that matters.

One frozen dataclass describes CAV-MAE (`arch='cavmae'`), CAV-MAE Sync (`arch='sync'`) and the
classifier built on their encoder. `from_official_kwargs` maps the official constructor's keyword
arguments onto it, so `convert.load_torch_model(sd, arch=..., **kwargs)` reads like the PyTorch
call.
"""

import dataclasses
from typing import Any

ARCHS = ("cavmae", "sync")
MASK_MODES = ("unstructured", "time", "freq", "tf")
DTYPES = ("float32", "bfloat16")
# With remat: what each block keeps for the backward pass (names of jax.checkpoint_policies).
REMAT_POLICIES = ("nothing_saveable", "dots_saveable", "dots_with_no_batch_dims_saveable")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    arch: str = "sync"
    # Inputs.
    audio_length: int = 416  # fbank frames per audio input (any multiple of the patch size)
    num_mel_bins: int = 128
    img_size: int = 224
    patch_size: int = 16
    in_chans: int = 3
    # Encoder.
    embed_dim: int = 768
    num_heads: int = 12
    mlp_ratio: float = 4.0
    modality_specific_depth: int = 11
    joint_depth: int = 1  # official: 12 - modality_specific_depth
    # Decoder.
    decoder_embed_dim: int = 512
    decoder_depth: int = 8
    decoder_num_heads: int = 16
    # Sync additions.
    global_tokens: bool = True  # official `cls_token`
    num_register_tokens: int = 8  # released Sync model; the official constructor default is 4
    contrastive_heads: bool = False
    global_local_losses: bool = False
    # Training objective.
    norm_pix_loss: bool = False
    trainable_pos_embed: bool = False  # official `tr_pos`
    mask_ratio_a: float = 0.75
    mask_ratio_v: float = 0.75
    mask_mode: str = "unstructured"  # audio only; video is always unstructured
    temperature: float = 0.05
    learnable_temperature: bool = False
    contrastive_direction: str = "video_to_audio"  # official single direction
    # >1: per-group negatives; 0: one group per device, the official DataParallel's per-GPU
    # negatives (the run sets the device count when it builds the model).
    negative_groups: int = 1
    mae_loss_weight: float = 1.0
    contrast_loss_weight: float = 0.01
    # True: the contrastive loss embeds the unmasked inputs in a second encoder pass (as
    # retrieval does); the official code takes them from the masked reconstruction pass.
    contrastive_unmasked: bool = False
    # > 0: adds this weight times a second InfoNCE over each clip's own moments (the batch holds
    # groups of `clip_moments` consecutive moments of one clip): only in-clip negatives, so only
    # timing separates them. The official objective has no such term.
    in_clip_loss_weight: float = 0.0
    # Moments of one clip per group of the batch, for the in-clip loss; training fills it in
    # from config.data.moments_per_clip.
    clip_moments: int = 0
    # Numerics and memory.
    dtype: str = "float32"  # compute dtype; params are always float32
    remat: bool = False  # recompute each block's activations in the backward pass
    remat_policy: str = "nothing_saveable"  # what remat keeps; one of REMAT_POLICIES
    attention_impl: str = "xla"  # "xla" or "fused" (jax.nn.dot_product_attention)

    def __post_init__(self):
        def need(cond: bool, msg: str):
            if not cond:
                raise ValueError(f"ModelConfig: {msg}")

        need(self.arch in ARCHS, f"arch must be one of {ARCHS}, got {self.arch!r}")
        p = self.patch_size
        need(self.audio_length > 0 and self.audio_length % p == 0,
             f"audio_length must be a positive multiple of patch_size {p}, got {self.audio_length}")
        need(self.num_mel_bins % p == 0, f"num_mel_bins must be a multiple of {p}")
        need(self.img_size % p == 0, f"img_size must be a multiple of {p}")
        need(self.embed_dim % 4 == 0 and self.decoder_embed_dim % 4 == 0,
             "embed_dim and decoder_embed_dim must be multiples of 4 (sin-cos tables)")
        need(self.embed_dim % self.num_heads == 0, "embed_dim must be divisible by num_heads")
        need(self.decoder_embed_dim % self.decoder_num_heads == 0,
             "decoder_embed_dim must be divisible by decoder_num_heads")
        need(self.modality_specific_depth >= 0 and self.joint_depth >= 1,
             "need modality_specific_depth >= 0 and joint_depth >= 1")
        need(self.mask_mode in MASK_MODES, f"mask_mode must be one of {MASK_MODES}")
        need(self.dtype in DTYPES, f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        need(0 <= self.mask_ratio_a < 1 and 0 <= self.mask_ratio_v < 1,
             "mask ratios must be in [0, 1)")
        for name, length, ratio in (("audio", self.num_patches_a, self.mask_ratio_a),
                                    ("video", self.num_patches_v, self.mask_ratio_v)):
            need(int(length * (1 - ratio)) >= 1,
                 f"mask ratio {ratio} keeps no {name} token out of {length}")
        need(self.num_register_tokens >= 0, "num_register_tokens must be >= 0")
        need(self.temperature > 0, "temperature must be > 0")
        need(self.in_clip_loss_weight >= 0, "in_clip_loss_weight must be >= 0")
        need(self.clip_moments >= 0, "clip_moments must be >= 0")
        need(self.negative_groups >= 0, "negative_groups must be >= 0 (0: one per device)")
        need(self.attention_impl in ("xla", "fused"), "attention_impl must be 'xla' or 'fused'")
        need(self.remat_policy in REMAT_POLICIES,
             f"remat_policy must be one of {REMAT_POLICIES}, got {self.remat_policy!r}")
        if self.arch == "cavmae":
            need(not self.global_tokens and self.num_register_tokens == 0
                 and not self.contrastive_heads and not self.global_local_losses,
                 "arch='cavmae' has no global/register tokens or contrastive heads; "
                 "set global_tokens=False, num_register_tokens=0")
        need(not self.global_local_losses or self.global_tokens,
             "global_local_losses needs global_tokens=True")

    # Derived sizes.
    @property
    def audio_grid(self) -> tuple[int, int]:
        """(frequency patches, time patches) of the audio patch grid."""
        return self.num_mel_bins // self.patch_size, self.audio_length // self.patch_size

    @property
    def video_grid(self) -> tuple[int, int]:
        return self.img_size // self.patch_size, self.img_size // self.patch_size

    @property
    def num_patches_a(self) -> int:
        return self.audio_grid[0] * self.audio_grid[1]

    @property
    def num_patches_v(self) -> int:
        return self.video_grid[0] * self.video_grid[1]

    def replace(self, **changes: Any) -> "ModelConfig":
        return dataclasses.replace(self, **changes)


# Official constructor argument -> ModelConfig field.
_OFFICIAL_RENAMES = {"cls_token": "global_tokens", "tr_pos": "trainable_pos_embed"}
# Official arguments that do not change the computation we reproduce.
_OFFICIAL_IGNORED = ("total_frame", "norm_layer", "multi_ratio_masking", "keep_register_tokens",
                     "label_dim")


def from_official_kwargs(arch: str, **kwargs: Any) -> ModelConfig:
    """ModelConfig from the official constructor's keyword arguments (defaults included).

    arch: 'cavmae' (CAVMAE), 'sync' (CAV-MAE Sync CAVMAE) or 'cavmae_ft' (CAVMAEFT encoder).
    """
    if arch == "sync":
        # The official Sync constructor's own defaults (not the released model's).
        base = dict(arch="sync", audio_length=1024, global_tokens=False, num_register_tokens=4,
                    contrastive_heads=True)
    elif arch in ("cavmae", "cavmae_ft"):
        base = dict(arch="cavmae", audio_length=1024, global_tokens=False,
                    num_register_tokens=0, contrastive_heads=False)
        if arch == "cavmae_ft":
            base["trainable_pos_embed"] = True
    else:
        raise ValueError(f"arch must be 'cavmae', 'sync' or 'cavmae_ft', got {arch!r}")
    if kwargs.get("keep_register_tokens"):
        raise ValueError("keep_register_tokens=True is a broken path in the official code "
                         "(it slices by num_patches under masking); it is not supported")
    if kwargs.get("multi_ratio_masking"):
        raise ValueError("multi_ratio_masking is not supported; set mask_ratio_a/v instead")
    fields = {f.name for f in dataclasses.fields(ModelConfig)}
    for key, value in kwargs.items():
        if key in _OFFICIAL_IGNORED:
            continue
        if key == "modality_specific_depth":
            base["modality_specific_depth"] = value
            base["joint_depth"] = 12 - value  # the official total depth is hard-coded to 12
            continue
        name = _OFFICIAL_RENAMES.get(key, key)
        if name not in fields:
            raise ValueError(f"unknown official constructor argument {key!r}")
        base[name] = value
    return ModelConfig(**base)
