"""Classification on top of the CAV-MAE encoder (the official `CAVMAEFT`).

`CAVMAEClassifier` reuses the encoder of `CAVMAE` (same parameter names, no decoder) and adds
`mlp_head_0` (LayerNorm, eps 1e-5) and `mlp_head_1` (Linear to `label_dim`). The five official
modes pool as follows (`pooling='mean'`, the official head):

  multimodal        joint blocks on [audio, video] -> norm -> mean over all tokens (each modality
                    weighted by its token count, as in the official code)
  audioonly         joint blocks with audio norms -> norm_a -> mean
  videoonly         joint blocks with video norms -> norm_v -> mean
  missingaudioonly  (mean of the joint-norm pass + mean of the audio-norm pass) / 2
  missingvideoonly  likewise for video

`pooling='global'` (Sync encoders with global tokens, our addition) uses the normed global tokens
of the modality passes instead: multimodal averages the audio and visual global vectors.
"""

import jax
import jax.numpy as jnp

from cavmae_jax.models.cavmae import CAVMAE
from cavmae_jax.models.layers import dense, layer_norm

MODES = ("multimodal", "audioonly", "videoonly", "missingaudioonly", "missingvideoonly")
POOLINGS = ("mean", "global")


class CAVMAEClassifier(CAVMAE):
    """Encoder + LayerNorm/Linear head.  classify(audio, video, mode) -> logits [B, label_dim]."""

    with_decoder: bool = False
    label_dim: int = 527
    pooling: str = "mean"

    def setup(self):
        super().setup()
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {self.pooling!r}")
        if self.pooling == "global" and not self.config.global_tokens:
            raise ValueError("pooling='global' needs a model with global_tokens=True")
        self.mlp_head_0 = layer_norm("mlp_head_0", self._dtype())
        self.mlp_head_1 = dense(self.label_dim, "mlp_head_1", self._dtype())

    def _joint(self, x: jax.Array) -> jax.Array:
        """Joint blocks with the joint norms, then `norm`."""
        for blk in self.blocks_u:
            x = blk(x, None)
        return self.norm(x)

    def _pool_modality(self, tokens: jax.Array, modality: str) -> jax.Array:  # -> [B, D]
        patches, global_vec = self._split_global(self._modality_joint(tokens, modality))
        return global_vec if self.pooling == "global" else jnp.mean(patches, axis=1)

    def _pool_joint(self, tokens: jax.Array) -> jax.Array:  # -> [B, D]
        skip = 1 if self.config.global_tokens else 0
        return jnp.mean(self._joint(tokens[:, skip:]), axis=1)

    def classify(self, audio: jax.Array, video: jax.Array, mode: str = "multimodal") -> jax.Array:
        """audio [B, T, 128], video [B, H, W, 3] -> logits [B, label_dim] (float32)."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if self.is_initializing():  # create every parameter whatever the mode
            for m in ("audioonly", "videoonly"):
                self._classify(audio, video, m)
        return self._classify(audio, video, mode)

    def _classify(self, audio: jax.Array, video: jax.Array, mode: str) -> jax.Array:
        a, v = self._embed(audio, video)
        if mode in ("multimodal", "audioonly", "missingaudioonly"):
            a = self._unimodal(a, "a")
        if mode in ("multimodal", "videoonly", "missingvideoonly"):
            v = self._unimodal(v, "v")
        if mode == "multimodal":
            if self.pooling == "global":
                pooled = (self._pool_modality(a, "a") + self._pool_modality(v, "v")) / 2
            else:
                skip = 1 if self.config.global_tokens else 0
                pooled = jnp.mean(self._joint(jnp.concatenate([a[:, skip:], v[:, skip:]], 1)), 1)
        elif mode == "audioonly":
            pooled = self._pool_modality(a, "a")
        elif mode == "videoonly":
            pooled = self._pool_modality(v, "v")
        elif mode == "missingaudioonly":
            pooled = (self._pool_joint(a) + self._pool_modality(a, "a")) / 2
        else:
            pooled = (self._pool_joint(v) + self._pool_modality(v, "v")) / 2
        return self.mlp_head_1(self.mlp_head_0(pooled)).astype(jnp.float32)

    def __call__(self, audio, video, mode: str = "multimodal"):
        return self.classify(audio, video, mode)


def init_classifier_params(model: CAVMAEClassifier, rng: jax.Array, batch_size: int = 1) -> dict:
    """Fresh parameters for a classifier (every mode's parameters created)."""
    c = model.config
    audio = jnp.zeros((batch_size, c.audio_length, c.num_mel_bins), jnp.float32)
    video = jnp.zeros((batch_size, c.img_size, c.img_size, c.in_chans), jnp.float32)
    init = jax.jit(lambda r: model.init(r, audio, video, "multimodal",
                                        method=CAVMAEClassifier.classify)["params"])
    return init(rng)


__all__ = ["CAVMAEClassifier", "MODES", "init_classifier_params"]
