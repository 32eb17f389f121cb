"""Losses of CAV-MAE / CAV-MAE Sync pretraining and finetuning, in float32.

- `info_nce`: the official contrastive loss. `S = norm(a) @ norm(v).T / tau`; direction
  `video_to_audio` (official default) is `-mean_j log_softmax(S, axis=0)[j, j]`: for each visual
  sample, a softmax over the audio candidates. `negative_groups > 1` splits the batch into that
  many consecutive groups that only see their own negatives and averages their losses: the
  official DataParallel run's per-GPU negatives (it summed the per-GPU losses; we average, which
  only rescales the loss).
- `mae_loss`: per-patch MSE against the patchified input, averaged over removed patches; with
  `norm_pix` the target patch is standardized with its mean and *unbiased* variance (+1e-6).
- `bce_with_logits`, `softmax_cross_entropy`: the finetuning losses (mean reduction).
"""

import jax
import jax.numpy as jnp

DIRECTIONS = ("video_to_audio", "audio_to_video", "both")


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
    """x / max(||x||, eps) along the last axis, as torch.nn.functional.normalize."""
    norm = jnp.sqrt(jnp.sum(jnp.square(x), axis=-1, keepdims=True))
    return x / jnp.maximum(norm, eps)


def _nce_one_way(logits: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Softmax over axis 0 (rows) for each column; diagonal = positives.  logits: [G, N, N]."""
    n = logits.shape[-1]
    logp = jax.nn.log_softmax(logits, axis=1)
    nce = -jnp.mean(jnp.diagonal(logp, axis1=1, axis2=2))
    hits = jnp.argmax(logits, axis=1) == jnp.arange(n)[None, :]  # [G, N]
    return nce, jnp.mean(hits.astype(jnp.float32))


def info_nce(audio: jax.Array, video: jax.Array, temperature: float | jax.Array = 0.05,
             direction: str = "video_to_audio",
             negative_groups: int = 1) -> tuple[jax.Array, jax.Array]:
    """Contrastive loss and accuracy of matching pairs.  audio, video: [B, D] -> (nce, c_acc)."""
    if direction not in DIRECTIONS:
        raise ValueError(f"contrastive direction must be one of {DIRECTIONS}, got {direction!r}")
    b, d = audio.shape
    if b % negative_groups:
        raise ValueError(f"batch {b} is not divisible into {negative_groups} negative groups")
    a = l2_normalize(audio.astype(jnp.float32)).reshape(negative_groups, -1, d)
    v = l2_normalize(video.astype(jnp.float32)).reshape(negative_groups, -1, d)
    logits = jnp.einsum("gid,gjd->gij", a, v) / temperature  # [G, b, b], audio rows
    if direction == "video_to_audio":
        return _nce_one_way(logits)
    if direction == "audio_to_video":
        return _nce_one_way(jnp.swapaxes(logits, 1, 2))
    nce_1, acc_1 = _nce_one_way(logits)
    nce_2, acc_2 = _nce_one_way(jnp.swapaxes(logits, 1, 2))
    return (nce_1 + nce_2) / 2, (acc_1 + acc_2) / 2


def mae_loss(target_patches: jax.Array, pred: jax.Array, mask: jax.Array,
             norm_pix: bool) -> jax.Array:
    """Mean squared error on removed patches.  target, pred: [B, L, P]; mask: [B, L] (1=removed)."""
    target = target_patches.astype(jnp.float32)
    if norm_pix:
        mean = jnp.mean(target, axis=-1, keepdims=True)
        var = jnp.var(target, axis=-1, keepdims=True, ddof=1)  # torch.var: unbiased
        target = (target - mean) / jnp.sqrt(var + 1e-6)
    per_patch = jnp.mean(jnp.square(pred.astype(jnp.float32) - target), axis=-1)  # [B, L]
    return jnp.sum(per_patch * mask) / jnp.sum(mask)


def bce_with_logits(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Mean binary cross-entropy over all B*C entries (torch BCEWithLogitsLoss)."""
    logits = logits.astype(jnp.float32)
    per = jnp.maximum(logits, 0) - logits * targets + jnp.log1p(jnp.exp(-jnp.abs(logits)))
    return jnp.mean(per)


def softmax_cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Mean cross-entropy against (soft) target distributions [B, C]."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return -jnp.mean(jnp.sum(targets * logp, axis=-1))
