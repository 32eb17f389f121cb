"""The CAV-MAE / CAV-MAE Sync encoder-decoder: ONE Linen module, chosen by `ModelConfig`.

Data flow (official token order; audio is [B, T, 128] time-major, video [B, H, W, 3]):

  audio -> [B, 128, T, 1] -> patches (frequency-major: token = f * T/16 + t) + pos + modality
  video -> patches (row-major) + pos + modality
  (pretrain) mask each modality from explicit noise
  (Sync)     prepend the global token, append the register tokens
  blocks_a / blocks_v (plain norms) -> drop registers
  joint pass 1: blocks_u on [audio patches, video patches] (joint norms) -> norm -> decoder
  joint pass 2/3: blocks_u on each modality with its own norms (+ optional contrastive heads)
                  -> norm_a / norm_v -> global token (Sync) or token mean (CAV-MAE) -> InfoNCE
                  (Sync pretraining: the last block computes the global token only)

One deliberate difference: with joint_depth > 1 the joint blocks are applied cumulatively in the
modality passes; the official loop (`for blk in blocks_u: ca = blk(a, 'a')`) keeps only the last
block's output. With one joint layer, the official default, both are identical.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from cavmae_jax import losses
from cavmae_jax.models import masking, posemb
from cavmae_jax.models.config import ModelConfig
from cavmae_jax.models.layers import Block, PatchEmbed, dense, layer_norm, patchify

_normal_002 = nn.initializers.normal(stddev=0.02)


def _fixed_table(table: np.ndarray):
    """Param initializer returning a precomputed (sin-cos) table."""
    return lambda rng, shape, dtype=jnp.float32: jnp.asarray(table, dtype).reshape(shape)


def audio_to_image(audio: jax.Array) -> jax.Array:
    """[B, T, F] time-major fbank -> [B, F, T, 1] image (rows = frequency), as the official code."""
    return jnp.transpose(audio, (0, 2, 1))[..., None]


def compute_dtype(config: ModelConfig):
    return jnp.bfloat16 if config.dtype == "bfloat16" else jnp.float32


class CAVMAE(nn.Module):
    """CAV-MAE (arch='cavmae') and CAV-MAE Sync (arch='sync').

    Methods for `model.apply({'params': p}, ..., method=...)`:
      features(audio, video) -> patches_a, patches_v, global_a, global_v (no masking)
      pretrain(audio, video, noise_a, noise_v) -> losses, c_acc, predictions and masks
    `pretrain` also sows encoder internals into the 'intermediates' collection.
    """

    config: ModelConfig
    with_decoder: bool = True  # False for the classifier, which has no decoder params

    def setup(self):
        c = self.config
        dt = compute_dtype(c)
        block = Block
        if c.remat:
            policy = getattr(jax.checkpoint_policies, c.remat_policy)
            block = nn.remat(Block, static_argnums=(2,), policy=policy)

        def make_block(name: str, heads: int) -> nn.Module:
            return block(num_heads=heads, mlp_ratio=c.mlp_ratio, dtype=dt,
                         attention_impl=c.attention_impl, name=name)

        d = c.embed_dim
        fa, ta = c.audio_grid
        fv, tv = c.video_grid
        self.patch_embed_a = PatchEmbed(d, c.patch_size, dt, name="patch_embed_a")
        self.patch_embed_v = PatchEmbed(d, c.patch_size, dt, name="patch_embed_v")
        self.modality_a = self.param("modality_a", _normal_002, (1, 1, d))
        self.modality_v = self.param("modality_v", _normal_002, (1, 1, d))
        self.pos_embed_a = self.param(
            "pos_embed_a", _fixed_table(posemb.sincos_2d(d, fa, ta)), (1, fa * ta, d))
        self.pos_embed_v = self.param(
            "pos_embed_v", _fixed_table(posemb.sincos_2d(d, fv, tv)), (1, fv * tv, d))
        if c.global_tokens:
            self.cls_token_a = self.param("cls_token_a", _normal_002, (1, 1, d))
            self.cls_token_v = self.param("cls_token_v", _normal_002, (1, 1, d))
        if c.num_register_tokens:
            # Audio rows first, then visual; the official init is torch.randn (std 1).
            self.register_tokens = self.param(
                "register_tokens", nn.initializers.normal(1.0), (2 * c.num_register_tokens, d))
        self.blocks_a = [make_block(f"blocks_a_{i}", c.num_heads)
                         for i in range(c.modality_specific_depth)]
        self.blocks_v = [make_block(f"blocks_v_{i}", c.num_heads)
                         for i in range(c.modality_specific_depth)]
        self.blocks_u = [make_block(f"blocks_u_{i}", c.num_heads) for i in range(c.joint_depth)]
        if c.contrastive_heads:
            # (sic) the official attribute name is misspelled; we keep it for checkpoints.
            self.head_a = [make_block(f"constrative_head_audio_{i}", c.num_heads) for i in range(2)]
            self.head_v = [make_block(f"constrative_head_visual_{i}", c.num_heads)
                           for i in range(2)]
        self.norm_a = layer_norm("norm_a", dt)
        self.norm_v = layer_norm("norm_v", dt)
        self.norm = layer_norm("norm", dt)
        if self.with_decoder:
            self._setup_decoder(make_block, dt)
        if c.learnable_temperature:
            self.logit_scale = self.param(
                "logit_scale", nn.initializers.constant(np.log(1.0 / c.temperature)), ())

    def _setup_decoder(self, make_block, dt):
        c = self.config
        dd = c.decoder_embed_dim
        fa, ta = c.audio_grid
        fv, tv = c.video_grid
        self.decoder_embed = dense(dd, "decoder_embed", dt)
        self.mask_token = self.param("mask_token", _normal_002, (1, 1, dd))
        self.decoder_modality_a = self.param("decoder_modality_a", _normal_002, (1, 1, dd))
        self.decoder_modality_v = self.param("decoder_modality_v", _normal_002, (1, 1, dd))
        self.decoder_pos_embed_a = self.param(
            "decoder_pos_embed_a", _fixed_table(posemb.sincos_2d(dd, fa, ta)), (1, fa * ta, dd))
        self.decoder_pos_embed_v = self.param(
            "decoder_pos_embed_v", _fixed_table(posemb.sincos_2d(dd, fv, tv)), (1, fv * tv, dd))
        self.decoder_blocks = [make_block(f"decoder_blocks_{i}", c.decoder_num_heads)
                               for i in range(c.decoder_depth)]
        self.decoder_norm = layer_norm("decoder_norm", dt)
        self.decoder_pred_a = dense(c.patch_size**2, "decoder_pred_a", dt)
        self.decoder_pred_v = dense(c.patch_size**2 * c.in_chans, "decoder_pred_v", dt)

    # ---------------------------------------------------------------- helpers
    def _dtype(self):
        return compute_dtype(self.config)

    def _param(self, value: jax.Array, trainable: bool = True) -> jax.Array:
        value = value if trainable else jax.lax.stop_gradient(value)
        return value.astype(self._dtype())

    def _check_inputs(self, audio: jax.Array, video: jax.Array):
        c = self.config
        if audio.ndim != 3 or audio.shape[1:] != (c.audio_length, c.num_mel_bins):
            raise ValueError(f"audio must be [B, {c.audio_length}, {c.num_mel_bins}] (time-major "
                             f"fbank), got {audio.shape}")
        want_v = (c.img_size, c.img_size, c.in_chans)
        if video.ndim != 4 or video.shape[1:] != want_v:
            hint = " (channels-last; transpose NCHW inputs)" if video.shape[1:2] == (3,) else ""
            raise ValueError(f"video must be [B, {', '.join(map(str, want_v))}]{hint}, "
                             f"got {video.shape}")
        if audio.shape[0] != video.shape[0]:
            raise ValueError(f"batch sizes differ: audio {audio.shape[0]}, video {video.shape[0]}")

    def _embed(self, audio: jax.Array, video: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Patch tokens with positional and modality embeddings: [B, La, D], [B, Lv, D]."""
        self._check_inputs(audio, video)
        tr = self.config.trainable_pos_embed
        a = self.patch_embed_a(audio_to_image(audio))
        a = a + self._param(self.pos_embed_a, tr)
        a = a + self._param(self.modality_a)
        v = self.patch_embed_v(video)
        v = v + self._param(self.pos_embed_v, tr)
        v = v + self._param(self.modality_v)
        return a, v

    def _unimodal(self, x: jax.Array, modality: str) -> jax.Array:
        """[global] + tokens + [registers] -> modality blocks -> registers dropped."""
        c = self.config
        b, _, d = x.shape
        r = c.num_register_tokens
        if c.global_tokens:
            g = self.cls_token_a if modality == "a" else self.cls_token_v
            x = jnp.concatenate([jnp.broadcast_to(self._param(g), (b, 1, d)), x], axis=1)
        if r:
            rows = self.register_tokens[:r] if modality == "a" else self.register_tokens[r:]
            x = jnp.concatenate([x, jnp.broadcast_to(self._param(rows)[None], (b, r, d))], axis=1)
        for blk in self.blocks_a if modality == "a" else self.blocks_v:
            x = blk(x, None)
        return x[:, : x.shape[1] - r] if r else x

    def _modality_joint(self, x: jax.Array, modality: str, global_only: bool = False
                        ) -> jax.Array:
        """Joint blocks with the modality's norms (+ contrastive heads), then norm_a / norm_v.

        `global_only`: the last block computes only the global token's output, [B, 1, D] (it
        still attends to every token), for pretraining's contrastive loss, which uses nothing
        else; the same values, without ~3 % of the Sync step's FLOPs.
        """
        blocks = [(blk, modality) for blk in self.blocks_u]
        if self.config.contrastive_heads:
            blocks += [(blk, None) for blk in (self.head_a if modality == "a" else self.head_v)]
        for i, (blk, norms) in enumerate(blocks):
            last = i == len(blocks) - 1
            x = blk.first_tokens(x, norms, 1) if global_only and last else blk(x, norms)
        return (self.norm_a if modality == "a" else self.norm_v)(x)

    def _split_global(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(patch tokens [B, L, D], global vector [B, D]): the global token, or the token mean."""
        if self.config.global_tokens:
            return x[:, 1:], x[:, 0]
        return x, jnp.mean(x, axis=1)

    def _contrastive_tokens(self, a: jax.Array, v: jax.Array) -> dict[str, jax.Array]:
        """global_a/v and, where needed, tokens_a/v from the modality-specific outputs a, v.

        The contrastive loss needs the patch tokens only for CAV-MAE's token mean and Sync's
        local loss; otherwise the modality passes compute just the global tokens (unless
        intermediates are collected: the parity tests compare the patch tokens too).
        """
        c = self.config
        global_only = (c.global_tokens and not c.global_local_losses
                       and not self.is_mutable_collection("intermediates"))
        out = {}
        for m, tokens in (("a", a), ("v", v)):
            tokens, out[f"global_{m}"] = self._split_global(
                self._modality_joint(tokens, m, global_only))
            if not global_only:
                out[f"tokens_{m}"] = tokens
        return out

    # ---------------------------------------------------------------- public
    def features(self, audio: jax.Array, video: jax.Array) -> dict[str, jax.Array]:
        """Unmasked retrieval features, as the official `forward_feat` (before L2 normalization).

        audio [B, T, 128], video [B, H, W, 3] -> patches_a [B, La, D], patches_v [B, Lv, D],
        global_a [B, D], global_v [B, D] (Sync: the global tokens; CAV-MAE: the token means).
        """
        a, v = self._embed(audio, video)
        a = self._modality_joint(self._unimodal(a, "a"), "a")
        v = self._modality_joint(self._unimodal(v, "v"), "v")
        patches_a, global_a = self._split_global(a)
        patches_v, global_v = self._split_global(v)
        out = dict(patches_a=patches_a, patches_v=patches_v, global_a=global_a, global_v=global_v)
        return {k: val.astype(jnp.float32) for k, val in out.items()}

    def encode(self, audio: jax.Array, video: jax.Array, noise_a: jax.Array,
               noise_v: jax.Array) -> dict[str, jax.Array]:
        """Masked encoder pass: joint latent for the decoder and per-modality contrastive tokens.

        Returns latent, mask_a/v, ids_restore_a/v, global_a/v and, unless only the global tokens
        are needed (Sync without global_local_losses, intermediates not collected), the patch
        tokens tokens_a/v.
        """
        c = self.config
        a, v = self._embed(audio, video)
        ma = masking.mask_tokens(a, noise_a, c.mask_ratio_a)
        mv = masking.mask_tokens(v, noise_v, c.mask_ratio_v)
        a = self._unimodal(ma.tokens, "a")
        v = self._unimodal(mv.tokens, "v")
        skip = 1 if c.global_tokens else 0
        x = jnp.concatenate([a[:, skip:], v[:, skip:]], axis=1)  # global tokens excluded
        for blk in self.blocks_u:
            x = blk(x, None)
        latent = self.norm(x)
        out = dict(latent=latent, mask_a=ma.mask, mask_v=mv.mask, ids_restore_a=ma.ids_restore,
                   ids_restore_v=mv.ids_restore)
        if not c.contrastive_unmasked:  # else pretrain takes them from the unmasked inputs
            out.update(self._contrastive_tokens(a, v))
        return out

    def decode(self, latent: jax.Array, ids_restore_a: jax.Array,
               ids_restore_v: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Joint latent of visible tokens -> per-patch predictions [B, La, p*p], [B, Lv, p*p*3]."""
        c = self.config
        la = c.num_patches_a
        keep_a = masking.num_kept(la, c.mask_ratio_a)
        x = self.decoder_embed(latent)
        mask_token = self._param(self.mask_token)
        a = masking.unshuffle(x[:, :keep_a], mask_token, ids_restore_a)
        v = masking.unshuffle(x[:, keep_a:], mask_token, ids_restore_v)
        x = jnp.concatenate([a, v], axis=1)
        tr = c.trainable_pos_embed
        pos = jnp.concatenate([self._param(self.decoder_pos_embed_a, tr),
                               self._param(self.decoder_pos_embed_v, tr)], axis=1)
        x = x + pos
        modality = jnp.concatenate(
            [jnp.broadcast_to(self._param(self.decoder_modality_a), (1, la, x.shape[-1])),
             jnp.broadcast_to(self._param(self.decoder_modality_v),
                              (1, c.num_patches_v, x.shape[-1]))], axis=1)
        x = x + modality
        for blk in self.decoder_blocks:
            x = blk(x, None)
        x = self.decoder_norm(x)
        return self.decoder_pred_a(x[:, :la]), self.decoder_pred_v(x[:, la:])

    def pretrain(self, audio: jax.Array, video: jax.Array, noise_a: jax.Array,
                 noise_v: jax.Array) -> dict[str, jax.Array]:
        """Masked reconstruction + contrastive pretraining forward.

        audio [B, T, 128], video [B, H, W, 3], noise_a [B, La], noise_v [B, Lv] in [0, 1).
        Returns loss, loss_mae, loss_mae_a, loss_mae_v, loss_c, c_acc (scalars), pred_a
        [B, La, p*p], pred_v [B, Lv, p*p*3], mask_a [B, La], mask_v [B, Lv].
        """
        c = self.config
        enc = self.encode(audio, video, noise_a, noise_v)
        for name in ("latent", "ids_restore_a", "ids_restore_v", "tokens_a", "tokens_v",
                     "global_a", "global_v"):
            if name in enc:
                self.sow("intermediates", name, enc[name])
        out: dict[str, Any] = dict(mask_a=enc["mask_a"], mask_v=enc["mask_v"])
        zero = jnp.zeros((), jnp.float32)
        if c.mae_loss_weight != 0 or self.is_initializing():
            pred_a, pred_v = self.decode(enc["latent"], enc["ids_restore_a"], enc["ids_restore_v"])
            p = c.patch_size
            loss_mae_a = losses.mae_loss(patchify(audio_to_image(audio), p), pred_a,
                                         enc["mask_a"], c.norm_pix_loss)
            loss_mae_v = losses.mae_loss(patchify(video, p), pred_v, enc["mask_v"],
                                         c.norm_pix_loss)
            out.update(pred_a=pred_a.astype(jnp.float32), pred_v=pred_v.astype(jnp.float32))
        else:
            loss_mae_a = loss_mae_v = zero
        loss_mae = c.mae_loss_weight * (loss_mae_a + loss_mae_v)

        temperature = jnp.exp(-self.logit_scale) if c.learnable_temperature else c.temperature

        def nce(rep_a, rep_v):
            self.sow("intermediates", "contrastive_in_a", rep_a)
            self.sow("intermediates", "contrastive_in_v", rep_v)
            return losses.info_nce(rep_a, rep_v, temperature, c.contrastive_direction,
                                   c.negative_groups)

        if c.contrast_loss_weight != 0 and c.contrastive_unmasked:
            a, v = self._embed(audio, video)
            enc.update(self._contrastive_tokens(self._unimodal(a, "a"), self._unimodal(v, "v")))
        if c.contrast_loss_weight != 0:
            # What is contrasted: the global tokens (Sync), else the mean of the patch tokens
            # (which the modality passes skip computing when nothing needs them).
            def token_means():
                return jnp.mean(enc["tokens_a"], 1), jnp.mean(enc["tokens_v"], 1)

            rep_a, rep_v = ((enc["global_a"], enc["global_v"]) if c.global_tokens
                            else token_means())
            nce_value, c_acc = nce(rep_a, rep_v)
            if c.global_tokens and c.global_local_losses:
                local_nce, local_acc = losses.info_nce(*token_means(), temperature,
                                                       c.contrastive_direction, c.negative_groups)
                nce_value, c_acc = (nce_value + local_nce) / 2, (c_acc + local_acc) / 2
            self.sow("intermediates", "nce_unweighted", nce_value)
        else:
            nce_value, c_acc = zero, zero
        loss_c = c.contrast_loss_weight * nce_value
        if (c.contrast_loss_weight != 0 and c.in_clip_loss_weight > 0
                and not self.is_initializing()):  # init runs on a batch of 1
            # Each clip's moments are consecutive: one negative group per clip.
            if c.clip_moments < 2:
                raise ValueError("in_clip_loss_weight > 0 needs clip_moments >= 2 (training "
                                 "sets it from config.data.moments_per_clip)")
            in_clip, _ = losses.info_nce(rep_a, rep_v, temperature, c.contrastive_direction,
                                         rep_a.shape[0] // c.clip_moments)
            out.update(loss_c_in_clip=c.contrast_loss_weight * c.in_clip_loss_weight * in_clip)
            loss_c = loss_c + out["loss_c_in_clip"]
        out.update(loss=loss_mae + loss_c, loss_mae=loss_mae, loss_mae_a=loss_mae_a,
                   loss_mae_v=loss_mae_v, loss_c=loss_c, c_acc=c_acc)
        return out

    def __call__(self, audio, video, noise_a, noise_v):
        return self.pretrain(audio, video, noise_a, noise_v)


def init_params(config: ModelConfig, rng: jax.Array, batch_size: int = 1) -> dict:
    """Fresh parameters (official init) for `config`, created in one jitted call."""
    # Params do not depend on negative_groups, and a batch of 1 cannot be split into groups.
    model = CAVMAE(config.replace(negative_groups=1))
    audio = jnp.zeros((batch_size, config.audio_length, config.num_mel_bins), jnp.float32)
    video = jnp.zeros((batch_size, config.img_size, config.img_size, config.in_chans), jnp.float32)
    noise_a = jnp.zeros((batch_size, config.num_patches_a), jnp.float32)
    noise_v = jnp.zeros((batch_size, config.num_patches_v), jnp.float32)
    init = jax.jit(lambda r: model.init(r, audio, video, noise_a, noise_v,
                                        method=CAVMAE.pretrain)["params"])
    return init(rng)


def frozen_param_names(config: ModelConfig) -> tuple[str, ...]:
    """Top-level params the optimizer must leave untouched (the fixed sin-cos tables)."""
    if config.trainable_pos_embed:
        return ()
    return ("pos_embed_a", "pos_embed_v", "decoder_pos_embed_a", "decoder_pos_embed_v")
