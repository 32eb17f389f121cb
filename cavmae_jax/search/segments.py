"""A media file -> model inputs, segment by segment, exactly as the training data is made.

A video (or an audio-only file) of any length is cut into consecutive `clip_seconds` segments
by one sequential decode (`data_prep.clips.iter_clip` with --split_long: the same 16 kHz
16-bit-PCM audio, Kaldi fbank padded to 1024 frames, official window table and frame choice,
224 resize + center crop, JPEG at the data's quality). Segment j's pair k is one *moment*:
audio window k and frame k. Only one segment is held in memory at a time.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from collections.abc import Iterator
from typing import Any

import numpy as np

from cavmae_jax import audio, video
from data_prep.clips import ClipError, ConvertConfig, iter_clip
from data_prep.inputs import VIDEO_EXTS, Item

AUDIO_EXTS = (".wav", ".flac", ".mp3", ".ogg", ".oga", ".m4a", ".aac", ".opus", ".aiff", ".aif")
MEDIA_EXTS = VIDEO_EXTS + AUDIO_EXTS
FBANK_SHIFT_S = audio.FRAME_SHIFT / audio.SAMPLE_RATE  # 10 ms per fbank frame
FBANK_FRAME_S = audio.FRAME_LENGTH / audio.SAMPLE_RATE  # 25 ms per fbank frame


@dataclasses.dataclass(frozen=True)
class InputSpec:
    """Everything that decides the model inputs of a moment (kept in the index manifest)."""

    num_frames: int = 16
    window_length: int = 416
    target_length: int = audio.TARGET_LENGTH
    clip_seconds: float = video.CLIP_SECONDS
    image_size: int = video.IMAGE_SIZE
    jpeg_quality: int = ConvertConfig.jpeg_quality
    sample_rate: int = audio.SAMPLE_RATE
    mix: str = ConvertConfig.mix
    pcm16: bool = ConvertConfig.pcm16
    audio_mean: float = audio.FBANK_MEAN
    audio_std: float = audio.FBANK_STD

    @classmethod
    def from_config(cls, cfg: Any) -> InputSpec:
        """The inputs a run's Config (`cavmae_jax.config.Config`) trained and evaluates on."""
        from cavmae_jax.data import pipeline

        metadata: dict = {}
        if cfg.data.use_data_stats:
            metadata = pipeline.load_metadata(cfg.data.dir)
        mean, std = pipeline.audio_stats(cfg.data, metadata)
        return cls(num_frames=int(cfg.data.num_frames or 16),
                   window_length=int(cfg.model.audio_length), image_size=int(cfg.model.img_size),
                   audio_mean=mean, audio_std=std)

    def convert_config(self) -> ConvertConfig:
        """data_prep's settings for these inputs, cutting long inputs into segments."""
        return ConvertConfig(num_frames=self.num_frames, window_length=self.window_length,
                             target_length=self.target_length, clip_seconds=self.clip_seconds,
                             image_size=self.image_size, jpeg_quality=self.jpeg_quality,
                             mix=self.mix, split_long=True, sample_rate=self.sample_rate,
                             pcm16=self.pcm16)

    def normalize(self, fbank: np.ndarray) -> np.ndarray:
        """Unnormalized fbank frames -> the model's float32 audio input."""
        return audio.normalize(fbank, self.audio_mean, self.audio_std).astype(np.float32)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class Segment:
    """The N moments of segment `index` of a file, ready for the model."""

    index: int
    start_s: float  # segment start in the source file
    duration_s: float  # real audio in the segment (the last one may be shorter)
    audio: np.ndarray | None  # [N, L, 128] float32, normalized; None: no sound track
    frames: np.ndarray | None  # [N, S, S, 3] uint8 (JPEG round trip), None: audio-only file
    times: np.ndarray  # [N] float64 moment times in the source: frame k (or k * clip / N)
    windows_s: np.ndarray  # [N, 2] float64 audio window [start, end) in the source, seconds
    frame_index: np.ndarray  # [N] int64 decode-order frame index in the source, -1 without
    silent: bool


def is_audio_only(path: str | os.PathLike) -> bool:
    return os.fspath(path).lower().endswith(AUDIO_EXTS)


def window_seconds(windows: np.ndarray, start_s: float, duration_s: float) -> np.ndarray:
    """Fbank windows [N, 2] (frames) -> [N, 2] seconds in the source, clipped to real audio."""
    lo = start_s + windows[:, 0] * FBANK_SHIFT_S
    hi = start_s + (windows[:, 1] - 1) * FBANK_SHIFT_S + FBANK_FRAME_S
    end = start_s + duration_s
    return np.stack([np.minimum(lo, end), np.minimum(hi, end)], axis=1)


def iter_segments(path: str | os.PathLike, spec: InputSpec) -> Iterator[Segment]:
    """Consecutive segments of a media file, decoded once, front to back.

    A trailing piece shorter than half a segment is not indexed (as data_prep --split_long).
    A video without a sound track gives picture-only moments (`audio` None, empty windows).

    Raises:
      ClipError: the file cannot be used, with a plain reason (possibly after some segments).
    """
    path = os.fspath(path)
    audio_only = is_audio_only(path)
    if not audio_only:
        info = _probe(path)
        if info is not None and not info.has_audio:
            yield from _silent_video_segments(path, info, spec)
            return
    item = Item(id=pathlib.Path(path).stem, split="search", source=path,
                video=None if audio_only else path, audio=path if audio_only else None)
    n = spec.num_frames
    for ex in iter_clip(item, spec.convert_config()):
        src = ex["source"]
        start, dur = float(src["start_s"]), float(src["duration_s"])
        fbank, windows = ex["fbank"], ex["windows"]
        audio_in = np.stack([spec.normalize(fbank[s:e]) for s, e in windows])
        frame_index = np.asarray(ex["source_frame_index"], np.int64)
        if ex["frames_jpeg"] is None:
            frames = None
            times = start + np.arange(n) * spec.clip_seconds / n
        else:
            frames = np.stack([video.decode_jpeg(j) for j in ex["frames_jpeg"]])
            times = frame_index / float(src["fps"])
        yield Segment(int(src["segment"]), start, dur, audio_in, frames, times,
                      window_seconds(windows, start, dur), frame_index, bool(src["silent"]))


def _probe(path: str) -> video.VideoInfo | None:
    """The video's stream facts; None when it cannot be probed (data_prep then names why)."""
    try:
        info = video.probe(path)
    except Exception:  # noqa: BLE001 - iter_clip probes again and gives the plain reason
        return None
    return info if info.frame_count > 0 and info.fps > 0 else None


def _silent_video_segments(path: str, info: video.VideoInfo, spec: InputSpec
                           ) -> Iterator[Segment]:
    """Picture-only segments of a video without sound: the same frame choice and JPEG."""
    n, clip = spec.num_frames, spec.clip_seconds
    with video.FrameStream(path) as stream:
        j = 0
        while True:
            start_frame = int(round(j * info.fps * clip))
            left = info.frame_count - start_frame
            if j and left < info.fps * clip / 2:  # as a short trailing audio piece
                return
            try:
                got = video.read_segment_frames(stream, info, n, clip, start_frame,
                                                spec.image_size)
            except ValueError as e:
                raise ClipError(f"video: {e}") from None
            if got is None:
                if j == 0:
                    raise ClipError("video: no decodable video frame")
                return
            rgb, idx = got
            frames = np.stack([video.decode_jpeg(video.encode_jpeg(f, spec.jpeg_quality))
                               for f in rgb])
            start = j * clip
            yield Segment(j, start, min(clip, left / info.fps), None, frames, idx / info.fps,
                          np.full((n, 2), start), idx, True)
            j += 1


__all__ = ["AUDIO_EXTS", "MEDIA_EXTS", "ClipError", "InputSpec", "Segment", "is_audio_only",
           "iter_segments", "window_seconds"]
