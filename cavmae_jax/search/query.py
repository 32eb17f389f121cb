"""Queries: a sound, a picture or a moment of a video, made like an indexed moment.

    q = load_audio_query(spec, "dog.wav", 3.0, 5.0)   # read and checked, no model needed
    embed_query(embedder, q)                          # q.audio: [D] unit vector
    audio_query(embedder, "dog.wav", 3.0, 5.0)        # both in one call

`searcher.Searcher` ranks the index's moments for a query. A sound finds moments by picture
(its embedding against the frames') and by sound (against the windows'); a picture or a video
moment finds them by sound and by picture. Each query side is made exactly like an indexed
moment: a sound excerpt shorter than the model's window is zero-padded in the fbank (log)
domain like the training data (`Query.padded` says so); a longer one is cut into windows (half
a window apart) whose unit embeddings are averaged. A picture is resized, center-cropped and
JPEG-coded at the data's quality.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np

from cavmae_jax import audio, video
from cavmae_jax.search.embed import Embedder, unit
from cavmae_jax.search.segments import FBANK_FRAME_S, FBANK_SHIFT_S, InputSpec
from data_prep.clips import SILENCE_PEAK


class QueryError(ValueError):
    """A query file that cannot be used (unreadable, silent, not an image, ...)."""


@dataclasses.dataclass
class Query:
    """One query, embedded: the sides it has and what it was made from (for the report)."""

    kind: str  # 'audio' | 'image' | 'video'
    source: str
    windows: np.ndarray | None = None  # [w, L, 128] normalized fbank windows of its sound
    audio: np.ndarray | None = None  # [D] unit vector of its sound
    video: np.ndarray | None = None  # [D] unit vector of its picture
    wave: np.ndarray | None = None  # [n] float32 16 kHz: the sound it used
    picture: np.ndarray | None = None  # [S, S, 3] uint8: the picture it used
    start_s: float = 0.0  # the excerpt (sound) or moment (video) in the source
    end_s: float = 0.0
    at: float = 0.0  # the video moment (video queries)
    padded: bool = False  # the sound was shorter than one model window
    notes: list[str] = dataclasses.field(default_factory=list)

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "source": self.source, "at": self.at, "start_s": self.start_s,
                "end_s": self.end_s, "padded": self.padded, "notes": list(self.notes)}


# ------------------------------------------------------------------------------ making queries
def _excerpt(path: str, start: float, end: float | None, spec: InputSpec) -> np.ndarray:
    """Samples [start, end) of a file's sound as the data decodes it (channel choice, 16-bit
    PCM rounding), decoded front to back and stopping at `end`."""
    lo = int(round(start * spec.sample_rate))
    hi = None if end is None else int(round(end * spec.sample_rate))
    chunks, at = [], 0  # only the chunks that overlap [lo, hi) are kept
    try:
        stream = audio.stream_audio(path, spec.sample_rate, spec.mix, spec.pcm16)
        try:
            for chunk in stream:
                n = chunk.shape[0]
                if at + n > lo:
                    chunks.append(chunk[max(0, lo - at):])
                at += n
                if hi is not None and at >= hi:
                    break
        finally:
            stream.close()
    except Exception as e:  # noqa: BLE001 - any decoder error is the file's problem
        raise QueryError(f"cannot read the sound of {path}: {_reason(e)}") from None
    wave = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
    return wave if hi is None else wave[:hi - lo]


def _reason(e: Exception) -> str:
    text = getattr(e, "strerror", None) or str(e) or type(e).__name__
    return " ".join(str(text).split())


def _check_file(path: str | os.PathLike, what: str) -> str:
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{what} file not found: {path}")
    if os.path.isdir(path):
        raise QueryError(f"{what} path is a folder, not a file: {path}")
    if os.path.getsize(path) == 0:
        raise QueryError(f"{what} file is empty (0 bytes): {path}")
    return path


def _sound_windows(spec: InputSpec, wave: np.ndarray) -> tuple[np.ndarray, bool]:
    """A 16 kHz excerpt -> (normalized windows [w, L, 128], whether it was padded to one)."""
    length = spec.window_length
    if wave.shape[0] < audio.FRAME_LENGTH:
        raise QueryError(f"the query sound is too short ({wave.shape[0]} samples; at least "
                         f"{audio.FRAME_LENGTH}, 25 ms, are needed)")
    frames = audio.num_fbank_frames(wave.shape[0])
    fbank, _ = audio.wave_to_fbank(wave, spec.sample_rate, max(frames, length))
    hop = max(1, length // 2)
    starts = list(range(0, max(1, fbank.shape[0] - length + 1), hop))
    if starts[-1] + length < fbank.shape[0]:
        starts.append(fbank.shape[0] - length)
    return np.stack([spec.normalize(fbank[s:s + length]) for s in starts]), frames < length


def _set_sound(spec: InputSpec, query: Query, wave: np.ndarray, what: str) -> None:
    if wave.size and np.max(np.abs(wave)) <= SILENCE_PEAK:
        raise QueryError(f"{what} is silent (peak below -80 dBFS): nothing to search for")
    query.windows, query.padded = _sound_windows(spec, wave)
    query.wave = wave
    if query.padded:
        secs = spec.window_length * FBANK_SHIFT_S
        query.notes.append(f"the query sound is {wave.shape[0] / audio.SAMPLE_RATE:.2f} s, "
                           f"shorter than the model's {secs:.2f} s window: zero-padded as the "
                           "training data pads short clips")


def load_audio_query(spec: InputSpec, path: str | os.PathLike, start: float | None = None,
                     end: float | None = None) -> Query:
    """A sound (audio file or a video's sound track), optionally its [start, end) seconds."""
    path = _check_file(path, "audio")
    start = float(start or 0.0)
    if start < 0 or (end is not None and end <= start):
        raise QueryError(f"--start/--end must give 0 <= start < end, got {start}, {end}")
    wave = _excerpt(path, start, end, spec)
    if wave.shape[0] == 0:
        raise QueryError(f"{path} has no sound at or after {start} s")
    q = Query("audio", path, start_s=start, end_s=start + wave.shape[0] / audio.SAMPLE_RATE)
    _set_sound(spec, q, wave, f"the query sound ({path})")
    return q


def prepare_picture(img: Any, spec: InputSpec) -> np.ndarray:
    """An image (PIL or array) -> [S, S, 3] uint8 as the data stores frames (crop + JPEG)."""
    arr = video.resize_center_crop(img, spec.image_size)
    return video.decode_jpeg(video.encode_jpeg(arr, spec.jpeg_quality))


def load_image_query(spec: InputSpec, path: str | os.PathLike) -> Query:
    """A still picture."""
    from PIL import Image, UnidentifiedImageError

    path = _check_file(path, "image")
    try:
        with Image.open(path) as img:
            img.load()
            picture = prepare_picture(img, spec)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise QueryError(f"{path} is not an image this can read ({_reason(e)})") from None
    return Query("image", path, picture=picture)


def load_video_query(spec: InputSpec, path: str | os.PathLike, at: float) -> Query:
    """The moment `at` seconds into a video: its frame, and the window of sound around it."""
    path = _check_file(path, "video")
    if at < 0:
        raise QueryError(f"--at must be >= 0, got {at}")
    try:
        info = video.probe(path)
        if info.fps <= 0 or info.frame_count <= 0:
            raise ValueError("the video stream has no frames")
        length = info.duration or info.frame_count / info.fps
    except Exception as e:  # noqa: BLE001 - any decoder error is the file's problem
        raise QueryError(f"cannot read the video {path}: {_reason(e)}") from None
    if at > length:
        raise QueryError(f"--at={at:g} is past the end of {path} ({length:.1f} s long)")
    index = min(int(round(at * info.fps)), info.frame_count - 1)
    try:
        with video.FrameStream(path) as frames:
            got = frames.take([index])
    except Exception as e:  # noqa: BLE001
        raise QueryError(f"cannot read the video {path}: {_reason(e)}") from None
    if not got:
        raise QueryError(f"{path} has no frame at {at} s (it ends earlier)")
    q = Query("video", path, picture=prepare_picture(got[index], spec), start_s=at, end_s=at,
              at=at)
    half = spec.window_length * FBANK_SHIFT_S / 2
    if not info.has_audio:
        q.notes.append("the video has no sound: searching with its picture only")
        return q
    lo = max(0.0, at - half)
    span = (spec.window_length - 1) * FBANK_SHIFT_S + FBANK_FRAME_S
    wave = _excerpt(path, lo, lo + span, spec)
    if wave.shape[0] >= audio.FRAME_LENGTH and np.max(np.abs(wave)) > SILENCE_PEAK:
        _set_sound(spec, q, wave, "the video's sound")
        q.start_s, q.end_s = lo, lo + wave.shape[0] / audio.SAMPLE_RATE
    else:
        q.notes.append(f"no sound around {at} s: searching by picture only")
    return q


def embed_query(embedder: Embedder, query: Query) -> Query:
    """Fills in the query's unit embeddings (its sound windows averaged; its picture)."""
    if query.windows is not None and query.audio is None:
        a, _ = embedder.embed_pairs(query.windows, None)
        query.audio = unit(a.mean(0))
    if query.picture is not None and query.video is None:
        _, v = embedder.embed_pairs(None, query.picture[None])
        query.video = v[0]
    return query


def audio_query(embedder: Embedder, path: str | os.PathLike, start: float | None = None,
                end: float | None = None) -> Query:
    """`load_audio_query` + `embed_query`."""
    return embed_query(embedder, load_audio_query(embedder.spec, path, start, end))


def image_query(embedder: Embedder, path: str | os.PathLike) -> Query:
    """`load_image_query` + `embed_query`."""
    return embed_query(embedder, load_image_query(embedder.spec, path))


def video_query(embedder: Embedder, path: str | os.PathLike, at: float) -> Query:
    """`load_video_query` + `embed_query`."""
    return embed_query(embedder, load_video_query(embedder.spec, path, at))
