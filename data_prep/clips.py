"""One input (a video, or a still image / frame folder plus audio) -> record examples.

The per-clip half of the conversion, shared by `data_prep.convert` (local shards) and
`data_prep.tfds_builder` (TFDS / Beam): decode the audio (first channel or mean), resample to
16 kHz, remove the mean, Kaldi fbank, pad/cut to `target_length`; the official window table;
N frames at the official indices, shorter side -> 224 + center crop, JPEG. A broken or unusable
input raises `ClipError` with a plain-language reason (it goes to failures.jsonl).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np

from cavmae_jax import audio, video
from cavmae_jax.data import records
from data_prep.inputs import Item

SILENCE_PEAK = 1e-4  # |x| <= this everywhere (-80 dBFS) counts as silent: kept, but flagged


class ClipError(Exception):
    """A per-input problem with a plain-language reason (goes to failures.jsonl)."""


@dataclasses.dataclass(frozen=True)
class ConvertConfig:
    """Everything that changes the records' content (stored in metadata.json)."""

    num_frames: int = 16
    window_length: int = 416
    target_length: int = 1024
    clip_seconds: float = 10.0
    image_size: int = video.IMAGE_SIZE
    jpeg_quality: int = video.JPEG_QUALITY
    mix: str = "first"
    split_long: bool = False
    sample_rate: int = audio.SAMPLE_RATE
    pcm16: bool = True  # round the 16 kHz waveform to 16-bit PCM, as the official 16-bit WAV
    frame_count: str = "opencv"  # no count in the container: "opencv" estimate or "packets"


def _check_file(path: str, what: str) -> None:
    if not os.path.exists(path):
        raise ClipError(f"{what} file not found: {path}")
    if os.path.isdir(path):
        raise ClipError(f"{what} path is a directory: {path}")
    if os.path.getsize(path) == 0:
        raise ClipError(f"{what} file is empty (0 bytes): {path}")


def _media_error(e: Exception, what: str) -> ClipError:
    """A decoder exception -> a plain reason. (PyAV's errors also subclass ValueError.)"""
    import av

    if isinstance(e, ClipError):
        return e
    if isinstance(e, av.error.FFmpegError):
        return ClipError(f"{what}: FFmpeg cannot read it (not a media file, truncated or "
                         f"corrupt): {getattr(e, 'strerror', None) or e}")
    if isinstance(e, ValueError):
        return ClipError(f"{what}: {e}")
    return ClipError(f"{what}: {type(e).__name__}: {e}")


def _load_wave(path: str, cfg: ConvertConfig) -> np.ndarray:
    try:
        return audio.load_audio(path, cfg.sample_rate, cfg.mix, cfg.pcm16)
    except Exception as e:  # noqa: BLE001 - every decoder error becomes a failure reason
        raise _media_error(e, "audio") from None


def _image_jpeg(path: str, cfg: ConvertConfig) -> bytes:
    """A still image as the JPEG to store: 224x224 JPEGs are kept byte for byte."""
    from PIL import Image, UnidentifiedImageError

    _check_file(path, "image")
    try:
        with open(path, "rb") as f:
            data = f.read()
        with Image.open(path) as img:
            img.load()
            if img.format == "JPEG" and img.size == (cfg.image_size, cfg.image_size) and (
                    img.mode == "RGB"):
                return data
            arr = video.resize_center_crop(img, cfg.image_size)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ClipError(f"unreadable image {path}: {e}") from None
    return video.encode_jpeg(arr, cfg.jpeg_quality)


def _segments(num_samples: int, cfg: ConvertConfig) -> list[tuple[int, int]]:
    """[start, end) sample ranges: the whole clip, or clip_seconds pieces with --split_long."""
    if not cfg.split_long:
        return [(0, num_samples)]
    seg = int(round(cfg.clip_seconds * cfg.sample_rate))
    out = [(0, min(seg, num_samples))]
    start = seg
    while num_samples - start >= seg / 2:
        out.append((start, min(start + seg, num_samples)))
        start += seg
    return out


def process_clip(item: Item, cfg: ConvertConfig) -> list[dict[str, Any]]:
    """One input -> record examples (dicts for `records.encode`). Raises ClipError.

    Importable on its own (a TFDS/Beam builder can map it over items).
    """
    visual = item.video
    if visual is not None:
        _check_file(visual, "video")
        try:
            info = video.probe(visual, cfg.frame_count)
        except Exception as e:  # noqa: BLE001
            raise _media_error(e, "video") from None
        if info.frame_count <= 0 or info.fps <= 0:
            raise ClipError("video: stream has no frames")
    audio_path = item.audio or item.video
    if audio_path is None:
        raise ClipError("no audio source given")
    if item.audio is not None:
        _check_file(item.audio, "audio")
    elif not info.has_audio:
        raise ClipError("video has no audio stream")
    wave = _load_wave(audio_path, cfg)

    still = None
    if item.image is not None:
        still = _image_jpeg(item.image, cfg)
    pre_extracted = None
    if item.frame_paths is not None:
        missing = [p for p in item.frame_paths if not os.path.isfile(p)]
        if missing:
            have = len(item.frame_paths) - len(missing)
            raise ClipError(f"missing {len(missing)} of {len(item.frame_paths)} pre-extracted "
                            f"frames (first: {missing[0]}); extract {cfg.num_frames} frames per "
                            f"clip or pass --num_frames {have}")
        pre_extracted = [_image_jpeg(p, cfg) for p in item.frame_paths]

    windows = audio.window_table(cfg.num_frames, cfg.window_length, cfg.target_length)
    segments = _segments(wave.shape[0], cfg)
    examples = []
    for j, (s0, s1) in enumerate(segments):
        piece = wave[s0:s1]
        if piece.shape[0] < audio.FRAME_LENGTH:
            raise ClipError(f"audio too short: {piece.shape[0]} samples at {cfg.sample_rate} Hz "
                            f"(< {audio.FRAME_LENGTH}, one 25 ms frame), no fbank frame")
        fbank, n_real = audio.wave_to_fbank(piece, cfg.sample_rate, cfg.target_length)
        src_idx = np.full(cfg.num_frames, -1, np.int64)
        fps = 0.0
        if visual is not None:
            start_frame = int(round(j * info.fps * cfg.clip_seconds)) if cfg.split_long else 0
            if start_frame >= info.frame_count:
                break  # video ends before the audio does: no frames for this segment
            try:
                frames, src_idx, fps = video.read_frames(
                    visual, cfg.num_frames, cfg.clip_seconds, start_frame, cfg.image_size, info)
            except Exception as e:  # noqa: BLE001
                raise _media_error(e, "video") from None
            jpegs = [video.encode_jpeg(f, cfg.jpeg_quality) for f in frames]
        elif still is not None:
            jpegs = [still] * cfg.num_frames
        else:
            jpegs = pre_extracted
        real = fbank[:n_real].astype(np.float64)
        clip_id = f"{item.id}_seg{j:03d}" if cfg.split_long and len(segments) > 1 else item.id
        silent = bool(np.max(np.abs(piece)) <= SILENCE_PEAK)
        examples.append({
            "id": clip_id,
            "fbank": fbank,
            "num_fbank_frames": n_real,
            "frames_jpeg": jpegs,
            "windows": windows,
            "labels": list(item.labels),
            "source_frame_index": src_idx,
            "source": {
                "path": item.source,
                "audio_path": item.audio or "",
                "segment": j,
                "start_s": s0 / cfg.sample_rate,
                "duration_s": piece.shape[0] / cfg.sample_rate,
                "fps": float(fps),
                "silent": silent,
            },
            # Not stored in the record: running sums for metadata's fbank mean/std.
            "_stats": (float(real.sum()), float(np.square(real).sum()), int(real.size)),
        })
    return examples


def process_item(item: Item, cfg: ConvertConfig) -> list[tuple]:
    """process_clip that never raises: [("ok", id, bytes, stats, silent), ...] / [("fail", why)]."""
    try:
        out = []
        for ex in process_clip(item, cfg):
            stats = ex.pop("_stats")
            out.append(("ok", ex["id"], records.encode(ex, cfg.jpeg_quality), stats,
                        ex["source"]["silent"]))
        if not out:
            return [("fail", "no record produced")]
        return out
    except ClipError as e:
        return [("fail", str(e))]
    except Exception as e:  # noqa: BLE001 - one bad input must not stop the run
        return [("fail", f"{type(e).__name__}: {e}")]


_WORKER_CFG: ConvertConfig | None = None
