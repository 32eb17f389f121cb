"""Video side: official frame choice, PyAV decoding, resize + center crop, JPEG, ImageNet norm.

Frame choice follows the official `extract_video_frame.py` (CAV-MAE; Sync reuses it with 16
frames): with n = min(frame_count, int(fps * clip_seconds)), frame k is read at index
int(k * (n / N)); the official code then seeks OpenCV to `index - 1` before reading, so the frame
actually stored is max(index - 1, 0). We reproduce that, counting frames in decode order (what
OpenCV's CAP_PROP_POS_FRAMES counts) instead of seeking, which is exact and robust to bad
keyframe indexes. The image is resized so that its shorter side is 224 (bilinear, as
torchvision's `Resize(224)` on a PIL image) and center-cropped to 224x224, and stored as a JPEG
of quality 75 (what the official `torchvision.utils.save_image` writes: PIL's default). A container
that stores no frame count gets OpenCV's estimate, round(duration x fps), as the official
extraction's `CAP_PROP_FRAME_COUNT` does.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

IMAGE_SIZE = 224
CLIP_SECONDS = 10.0
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
JPEG_QUALITY = 75  # PIL's default, what the official save_image writes
FRAME_COUNT_MODES = ("opencv", "packets")


def official_frame_indices(frame_count: int, fps: float, num_frames: int = 16,
                           clip_seconds: float = CLIP_SECONDS, start_frame: int = 0,
                           seek_offset: bool = True) -> np.ndarray:
    """Decode-order indices of the N frames the official extractor stores, (N,) int64.

    Args:
      frame_count: frames in the video (from `start_frame` on, when segmenting a long video).
      fps: average frame rate.
      num_frames: N (16 for Sync, 10 for CAV-MAE).
      clip_seconds: only the first `clip_seconds` of frames are spread over (official: 10).
      start_frame: offset added to every index (segment start for long videos).
      seek_offset: reproduce the official `set(POS_FRAMES, idx - 1)` off-by-one.
    """
    n = min(int(frame_count), int(fps * clip_seconds))
    if n <= 0:
        raise ValueError(f"no frames to sample (frame_count={frame_count}, fps={fps})")
    idx = np.array([int(k * (n / num_frames)) for k in range(num_frames)], np.int64)
    if seek_offset:
        idx = np.maximum(idx - 1, 0)
    return idx + int(start_frame)


def resize_center_crop(img: Image.Image | np.ndarray, size: int = IMAGE_SIZE) -> np.ndarray:
    """Shorter side to `size` (bilinear, antialiased like PIL/torchvision), then center crop.

    Returns:
      [size, size, 3] uint8 RGB.
    """
    if isinstance(img, np.ndarray):
        img = Image.fromarray(img)
    img = img.convert("RGB")
    w, h = img.size
    if (w, h) != (size, size):
        # torchvision Resize(int): short side -> size, long side -> int(size * long / short).
        if w <= h:
            new_w, new_h = size, int(size * h / w)
        else:
            new_w, new_h = int(size * w / h), size
        if (new_w, new_h) != (w, h):
            img = img.resize((new_w, new_h), Image.BILINEAR)
        # torchvision CenterCrop: offsets int(round((dim - size) / 2.0)).
        top = int(round((new_h - size) / 2.0))
        left = int(round((new_w - size) / 2.0))
        img = img.crop((left, top, left + size, top + size))
    return np.asarray(img, np.uint8)


def encode_jpeg(image: np.ndarray, quality: int = JPEG_QUALITY) -> bytes:
    """[H, W, 3] uint8 RGB -> baseline JPEG bytes (deterministic for a given libjpeg)."""
    buf = io.BytesIO()
    Image.fromarray(np.asarray(image, np.uint8), "RGB").save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def decode_jpeg(data: bytes) -> np.ndarray:
    """JPEG (or any PIL-readable image) bytes -> [H, W, 3] uint8 RGB."""
    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img.convert("RGB"), np.uint8)


def normalize_image(frames: np.ndarray) -> np.ndarray:
    """Pixels [..., H, W, 3] (uint8, or float 0..255) -> float32 (x / 255 - mean) / std.

    Works on numpy and on jax arrays alike: the train and eval steps call it on the device,
    where the pipeline's uint8 frames arrive (4x fewer bytes to batch and transfer).
    """
    return (frames.astype(np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD


@dataclass(frozen=True)
class VideoInfo:
    """What the container says about the first video stream."""

    frame_count: int  # from the container, else estimated (OpenCV) or counted (see `probe`)
    fps: float
    width: int
    height: int
    duration: float  # seconds, 0.0 when unknown
    has_audio: bool


def _opencv_frame_estimate(c, v) -> int:
    """OpenCV's CAP_PROP_FRAME_COUNT without nb_frames: floor(duration x fps + 0.5), or 0.

    Duration is the container's (else the stream's); fps is FFmpeg's guessed frame rate, as
    OpenCV's CAP_PROP_FPS.
    """
    seconds = c.duration / 1e6 if c.duration else 0.0
    if seconds <= 0.0 and v.duration and v.time_base:
        seconds = float(v.duration * v.time_base)
    rate = v.guessed_rate or v.average_rate or v.base_rate
    fps = float(rate) if rate else 0.0
    if seconds <= 0.0 or fps <= 0.0:
        return 0
    return int(math.floor(seconds * fps + 0.5))


def probe(path: str | os.PathLike, frame_count: str = "opencv") -> VideoInfo:
    """Reads stream metadata. A container without a frame count gets OpenCV's estimate
    round(duration x fps) (`frame_count="opencv"`, as the official extraction sees it), or its
    video packets counted (`"packets"`; also the fallback when the duration is unknown).
    """
    import av

    if frame_count not in FRAME_COUNT_MODES:
        raise ValueError(f"frame_count must be one of {FRAME_COUNT_MODES}, got {frame_count!r}")
    with av.open(os.fspath(path)) as c:
        if not c.streams.video:
            raise ValueError("no video stream")
        v = c.streams.video[0]
        rate = v.average_rate or v.guessed_rate or v.base_rate
        fps = float(rate) if rate else 0.0
        duration = float(c.duration / 1e6) if c.duration else 0.0
        count = int(v.frames or 0)
        if count <= 0 and frame_count == "opencv":
            count = _opencv_frame_estimate(c, v)
        if count <= 0:
            count = sum(1 for p in c.demux(v) if p.size)
        if fps <= 0.0 and duration > 0.0:
            fps = count / duration
        return VideoInfo(count, fps, int(v.codec_context.width), int(v.codec_context.height),
                         duration, bool(c.streams.audio))


class FrameStream:
    """One front-to-back decode of a video's frames, handed out by decode-order index.

    `take` returns the frames at the wanted indices and keeps its place, so that consecutive
    segments of a long video cost one decoding pass in all, and only the wanted frames are
    converted to images. Indices must not go back before the frames already passed.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        self.next_index = 0  # decode-order index of the next frame; the frame count once ended
        self.ended = False
        self._container = None
        self._frames = None

    def take(self, wanted: Sequence[int]) -> dict[int, Image.Image]:
        """Decodes up to max(wanted); returns {index: RGB image} (fewer when the stream ends)."""
        wanted_set = {int(i) for i in wanted}
        if not wanted_set:
            return {}
        if min(wanted_set) < self.next_index:
            raise ValueError(f"frame {min(wanted_set)} was already passed "
                             f"(stream at frame {self.next_index})")
        last = max(wanted_set)
        got: dict[int, Image.Image] = {}
        if self._frames is None and not self.ended:
            import av

            self._container = av.open(self.path)
            v = self._container.streams.video[0]
            v.thread_type = "AUTO"
            self._frames = self._container.decode(v)
        while self.next_index <= last and not self.ended:
            frame = next(self._frames, None)
            if frame is None:
                self.ended = True
                self.close()
                break
            if self.next_index in wanted_set:
                got[self.next_index] = frame.to_image()
            self.next_index += 1
        return got

    def close(self) -> None:
        if self._container is not None:
            self._frames = None
            self._container.close()
            self._container = None

    def __enter__(self) -> FrameStream:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_segment_frames(stream: FrameStream, info: VideoInfo, num_frames: int = 16,
                        clip_seconds: float = CLIP_SECONDS, start_frame: int = 0,
                        size: int = IMAGE_SIZE) -> tuple[np.ndarray, np.ndarray] | None:
    """The official N frames of the clip starting at `start_frame`, from a running FrameStream.

    When the stream ends before the container's frame count (a wrong or estimated count), the
    indices are recomputed from the frames actually decoded, as if the true count had been
    known; those frames are read by one more pass from the start (only then).

    Returns:
      (frames [N, size, size, 3] uint8 RGB, decode-order indices [N] int64), or None when the
      video has no frame at or after `start_frame`.

    Raises:
      ValueError: frames that cannot be decoded consistently.
    """
    count = info.frame_count - start_frame
    if count <= 0 or (stream.ended and stream.next_index <= start_frame):
        return None
    idx = official_frame_indices(count, info.fps, num_frames, clip_seconds, start_frame)
    got = stream.take(idx)
    if len(got) < len(set(idx.tolist())):
        actual = stream.next_index - start_frame
        if actual <= 0:
            return None
        idx = official_frame_indices(actual, info.fps, num_frames, clip_seconds, start_frame)
        with FrameStream(stream.path) as again:
            got = again.take(idx)
        if len(got) < len(set(idx.tolist())):
            raise ValueError("video frames could not be decoded consistently")
    frames = np.stack([resize_center_crop(got[int(i)], size) for i in idx])
    return frames, idx


def read_frames(path: str | os.PathLike, num_frames: int = 16,
                clip_seconds: float = CLIP_SECONDS, start_frame: int = 0,
                size: int = IMAGE_SIZE, info: VideoInfo | None = None
                ) -> tuple[np.ndarray, np.ndarray, float]:
    """Decodes the official N frames of a clip, resized and center-cropped.

    Decoding stops after the last frame needed. When the stream ends before the container's
    frame count (a common metadata error), the indices are recomputed from the frames actually
    decoded, as if the true count had been known.

    Returns:
      (frames [N, size, size, 3] uint8 RGB, decode-order indices [N] int64, fps).

    Raises:
      ValueError: no video stream or no decodable frame.
    """
    path = os.fspath(path)
    info = info or probe(path)
    with FrameStream(path) as stream:
        out = read_segment_frames(stream, info, num_frames, clip_seconds, start_frame, size)
    if out is None:
        raise ValueError(f"no decodable video frame at or after frame {start_frame}")
    return out[0], out[1], info.fps
