"""clip_features on a real mp4 equals the pipeline's retrieval inputs through the model."""

import jax
import numpy as np

from cavmae_jax import inference
from cavmae_jax.data import synthetic
from cavmae_jax.models.cavmae import CAVMAE, init_params
from cavmae_jax.models.config import ModelConfig


def test_clip_features_on_a_real_mp4(tmp_path):
    cfg = synthetic.ClipConfig(duration=3.0)
    clip = synthetic.generate_clip(0, 1, cfg)
    path = tmp_path / "clip.mp4"
    synthetic.write_clip_mp4(path, clip.frames, cfg.fps, clip.audio, cfg.sample_rate)
    audio_in, video_in = inference.clip_inputs(path, num_frames=4, window_length=64)
    assert audio_in.shape == (4, 64, 128) and video_in.shape == (4, 224, 224, 3)
    # 3 s of audio fill 298 of the 1024 fbank frames; the last window lies in the zero padding,
    # which normalizes to (0 + 5.081) / 4.4849.
    np.testing.assert_allclose(audio_in[-1], 5.081 / 4.4849, rtol=1e-6)
    assert audio_in[0].std() > 0.1
    config = ModelConfig(embed_dim=32, num_heads=2, modality_specific_depth=1,
                         decoder_embed_dim=16, decoder_num_heads=2, decoder_depth=1,
                         audio_length=64, num_register_tokens=1)
    model, params = CAVMAE(config), init_params(config, jax.random.key(0))
    feats = inference.clip_features(model, params, path, num_frames=4)
    assert feats["global_a"].shape == (4, 32) and feats["patches_v"].shape == (4, 196, 32)
    direct = model.apply({"params": params}, audio_in, video_in, method=CAVMAE.features)
    np.testing.assert_allclose(feats["global_v"], direct["global_v"], atol=1e-5)
