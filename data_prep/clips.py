"""One input (a video, or a still image / frame folder plus audio) -> record examples.

The per-clip half of the conversion, shared by `data_prep.convert` (local shards) and
`data_prep.tfds_builder` (TFDS / Beam): decode the audio (first channel or mean), resample to
16 kHz, round to 16-bit PCM, remove the mean, Kaldi fbank, pad/cut to `target_length`; the
official window table; N frames at the official indices, shorter side -> 224 + center crop,
JPEG. A broken or unusable input raises `ClipError` with a plain-language reason (it goes to
failures.jsonl). Audio and video are decoded once, front to back, and only as far as the
records need (`iter_clip` makes them one at a time), so memory does not grow with the input's
length.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from typing import Any

import numpy as np

from cavmae_jax import audio, video
from cavmae_jax.data import records
from data_prep.inputs import Item

SILENCE_PEAK = 1e-4  # |x| <= this everywhere (-80 dBFS) counts as silent: kept, but flagged
# Without --split_long a record uses the start of its input: the fbank reads the first
# (target_length - 1) x 10 ms + 25 ms, the frames the first clip_seconds. Audio is decoded up to
# this long (or that need), never more, so memory and time do not grow with the input's length.
# Inputs up to this long give exactly the records of a whole-track decode; for longer ones the
# clip mean removed before the fbank is that of the decoded part, which changes the fbank only
# by float rounding (Kaldi's fbank removes each frame's DC offset, cancelling any constant).
MAX_AUDIO_SECONDS = 60.0


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


def _audio_cap(cfg: ConvertConfig) -> int:
    """Samples a record without --split_long decodes at most (see MAX_AUDIO_SECONDS)."""
    size, shift = int(cfg.sample_rate * 0.025), int(cfg.sample_rate * 0.010)
    need = (cfg.target_length - 1) * shift + size  # what the fbank reads
    seconds = max(cfg.clip_seconds, MAX_AUDIO_SECONDS)
    return max(need, int(round(seconds * cfg.sample_rate)))


def _decoded(chunks: Iterator[np.ndarray], what: str) -> Iterator[np.ndarray]:
    """`chunks`, with decoder errors turned into ClipError."""
    while True:
        try:
            chunk = next(chunks)
        except StopIteration:
            return
        except Exception as e:  # noqa: BLE001 - every decoder error becomes a failure reason
            raise _media_error(e, what) from None
        yield chunk


def _audio_pieces(path: str, cfg: ConvertConfig) -> Iterator[tuple[int, np.ndarray]]:
    """(first sample, waveform) of each record, from one sequential decode of the audio.

    Without --split_long: the start of the input (at most `_audio_cap` samples; the rest of a
    long file is never decoded). With it: consecutive clip_seconds pieces, one held at a time;
    the first piece always, a trailing piece shorter than half a clip is dropped.
    """
    stream = audio.stream_audio(path, cfg.sample_rate, cfg.mix, cfg.pcm16)
    try:
        chunks = _decoded(stream, "audio")
        if not cfg.split_long:
            cap, buf, have = _audio_cap(cfg), [], 0
            for chunk in chunks:
                buf.append(chunk)
                have += chunk.shape[0]
                if have >= cap:
                    break
            yield 0, np.concatenate(buf)[:cap]
            return
        seg = int(round(cfg.clip_seconds * cfg.sample_rate))
        buf, have, start = [], 0, 0
        for chunk in chunks:
            buf.append(chunk)
            have += chunk.shape[0]
            while have >= seg:
                wave = np.concatenate(buf)
                yield start, wave[:seg]
                buf, have, start = [wave[seg:]], have - seg, start + seg
        if start == 0 or have >= seg / 2:
            yield start, np.concatenate(buf)
    finally:
        stream.close()


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


def iter_clip(item: Item, cfg: ConvertConfig) -> Iterator[dict[str, Any]]:
    """One input -> record examples (dicts for `records.encode`), made one at a time.

    Audio and video are each decoded once, front to back, and only as far as the records need;
    with --split_long one segment's audio and frames are held at a time, so memory does not
    grow with the input's length. Raises ClipError (possibly after yielding some examples: a
    caller that needs all or nothing collects them first, as `process_item` does).
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
    pieces = _audio_pieces(audio_path, cfg)
    frames = video.FrameStream(visual) if visual is not None else None
    try:
        yield from _examples(item, cfg, pieces, frames, info if visual is not None else None)
    finally:
        pieces.close()
        if frames is not None:
            frames.close()


def _examples(item: Item, cfg: ConvertConfig, pieces: Iterator[tuple[int, np.ndarray]],
              frames: video.FrameStream | None, info: video.VideoInfo | None
              ) -> Iterator[dict[str, Any]]:
    """The records of `iter_clip`, piece by piece (one piece of lookahead for the ids)."""
    current = next(pieces)  # audio errors come first

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
    several = False
    j = 0
    while current is not None:
        nxt = next(pieces, None)
        if j == 0:
            several = cfg.split_long and nxt is not None
        s0, piece = current
        if piece.shape[0] < audio.FRAME_LENGTH:
            raise ClipError(f"audio too short: {piece.shape[0]} samples at {cfg.sample_rate} Hz "
                            f"(< {audio.FRAME_LENGTH}, one 25 ms frame), no fbank frame")
        fbank, n_real = audio.wave_to_fbank(piece, cfg.sample_rate, cfg.target_length)
        src_idx = np.full(cfg.num_frames, -1, np.int64)
        fps = 0.0
        if frames is not None:
            start_frame = int(round(j * info.fps * cfg.clip_seconds)) if cfg.split_long else 0
            try:
                got = video.read_segment_frames(frames, info, cfg.num_frames, cfg.clip_seconds,
                                                start_frame, cfg.image_size)
            except Exception as e:  # noqa: BLE001
                raise _media_error(e, "video") from None
            if got is None:
                if j == 0:
                    raise ClipError(f"video: no decodable video frame at or after frame "
                                    f"{start_frame}")
                return  # video ends before the audio does: no frames for this segment
            rgb, src_idx = got
            fps = info.fps
            jpegs = [video.encode_jpeg(f, cfg.jpeg_quality) for f in rgb]
        elif still is not None:
            jpegs = [still] * cfg.num_frames
        else:
            jpegs = pre_extracted
        real = fbank[:n_real].astype(np.float64)
        clip_id = f"{item.id}_seg{j:03d}" if several else item.id
        silent = bool(np.max(np.abs(piece)) <= SILENCE_PEAK)
        yield {
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
        }
        current, j = nxt, j + 1


def process_clip(item: Item, cfg: ConvertConfig) -> list[dict[str, Any]]:
    """One input -> all its record examples (dicts for `records.encode`). Raises ClipError.

    Importable on its own (a TFDS/Beam builder can map it over items).
    """
    return list(iter_clip(item, cfg))


def encoded_records(item: Item, cfg: ConvertConfig) -> Iterator[tuple]:
    """("ok", id, record bytes, fbank sums, silent) per record, one at a time. Raises."""
    for ex in iter_clip(item, cfg):
        stats = ex.pop("_stats")
        yield ("ok", ex["id"], records.encode(ex, cfg.jpeg_quality), stats,
               ex["source"]["silent"])


def failure_reason(e: Exception) -> str:
    """The failures.jsonl reason for an exception raised while converting an input."""
    if isinstance(e, ClipError):
        return str(e)
    return f"{type(e).__name__}: {e}"


def process_item(item: Item, cfg: ConvertConfig) -> list[tuple]:
    """process_clip that never raises: [("ok", id, bytes, stats, silent), ...] / [("fail", why)]."""
    try:
        out = list(encoded_records(item, cfg))
        if not out:
            return [("fail", "no record produced")]
        return out
    except Exception as e:  # noqa: BLE001 - one bad input must not stop the run
        return [("fail", failure_reason(e))]

