"""One clip in, model inputs (and features) out: the official preprocessing in one call.

    from cavmae_jax import convert, inference
    model, params = convert.load_torch_model(convert.read_state_dict("cav_mae_sync.pth"),
                                             arch="sync", audio_length=416,
                                             num_register_tokens=8, cls_token=True)
    feats = inference.clip_features(model, params, "clip.mp4")   # global_a [16, 768], ...

The audio of the whole clip becomes a 1024-frame Kaldi fbank, and each of the N frames is
paired with its own window of `model.config.audio_length` frames (Sync) -- or the full fbank
when audio_length is 1024 (CAV-MAE) -- exactly as training and retrieval see them. Skipping
the pad-to-1024-then-window step or using the wrong register count are the usual reasons a
checkpoint "does not work".
"""

import os

import jax
import numpy as np

from cavmae_jax import audio, video
from cavmae_jax.models.cavmae import CAVMAE


def clip_inputs(path: str | os.PathLike, num_frames: int = 16, window_length: int = 416,
                audio_path: str | os.PathLike | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
    """(audio [N, L, 128], video [N, 224, 224, 3]) normalized model inputs for a video file.

    Both are ready for `model.apply` (unlike the Grain pipeline's batches, whose uint8 frames
    the train and eval steps normalize on the device). `audio_path` reads the sound from a
    separate file (e.g. an extracted wav) instead.
    """
    wave = audio.load_audio(audio_path or path)
    fbank, _ = audio.wave_to_fbank(wave)  # [1024, 128], unnormalized
    windows = audio.window_table(num_frames, window_length, fbank.shape[0])
    audio_in = np.stack([fbank[s:e] for s, e in windows])
    frames, _, _ = video.read_frames(path, num_frames)
    return audio.normalize(audio_in).astype(np.float32), video.normalize_image(frames)


def clip_features(model: CAVMAE, params, path: str | os.PathLike, num_frames: int = 16,
                  audio_path: str | os.PathLike | None = None) -> dict[str, np.ndarray]:
    """`model.features` of every (window_k, frame_k) pair of a clip: arrays with leading [N]."""
    audio_in, video_in = clip_inputs(path, num_frames, model.config.audio_length, audio_path)
    out = jax.jit(lambda p, a, v: model.apply({"params": p}, a, v, method=CAVMAE.features))(
        params, audio_in, video_in)
    return {k: np.asarray(v) for k, v in out.items()}


def pair_embed_fn(model: CAVMAE) -> jax.stages.Wrapped:
    """jit((params, audio [n, L, 128] normalized, frames [n, S, S, 3] pixels) -> (global_a
    [n, D], global_v [n, D])): the retrieval embeddings of n (window, frame) pairs, as
    evaluation computes them (frames are normalized inside, like the pipeline's uint8 batches).
    """
    def embed(params, audio_in, frames):
        f = model.apply({"params": params}, audio_in, video.normalize_image(frames),
                        method=CAVMAE.features)
        return f["global_a"], f["global_v"]

    return jax.jit(embed)
