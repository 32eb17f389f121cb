"""Small real media files for the data tests, written with PyAV (H.264 + AAC in mp4)."""

from __future__ import annotations

import fractions
import pathlib

import av
import numpy as np


def frame_gray(i: int) -> int:
    """Gray level that encodes frame index i (survives H.264 at these sizes to +-1.5)."""
    return 20 + 4 * i


def gray_to_index(level: float) -> int:
    return int(round((level - 20) / 4))


def write_clip(path: pathlib.Path, seconds: float = 2.0, fps: int = 25, size=(96, 64),
               audio: bool = True, video: bool = True, sample_rate: int = 44100,
               channels: int = 2, tone_hz: float = 440.0, amplitude: float = 0.5,
               container: str | None = None, audio_seconds: float | None = None
               ) -> pathlib.Path:
    """Writes a clip whose frame i is flat gray `frame_gray(i)` and whose first channel is a tone.

    The second channel (if any) is a tone at 3x the frequency, so channel choice is visible.
    `audio_seconds` makes the audio track longer or shorter than the video (default: `seconds`).
    """
    w, h = size
    with av.open(str(path), mode="w", format=container) as out:
        vs = None
        if video:
            vs = out.add_stream("libx264", rate=fps)
            vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
            vs.options = {"preset": "ultrafast"}
        as_ = None
        if audio:
            as_ = out.add_stream("aac", rate=sample_rate)
            as_.layout = "stereo" if channels == 2 else "mono"
        if vs is not None:
            for i in range(int(round(seconds * fps))):
                img = np.full((h, w, 3), frame_gray(i), np.uint8)
                frame = av.VideoFrame.from_ndarray(img, format="rgb24")
                for p in vs.encode(frame):
                    out.mux(p)
            for p in vs.encode(None):
                out.mux(p)
        if as_ is not None:
            n = int((seconds if audio_seconds is None else audio_seconds) * sample_rate)
            t = np.arange(n) / sample_rate
            chans = [amplitude * np.sin(2 * np.pi * tone_hz * t)]
            if channels == 2:
                chans.append(amplitude * np.sin(2 * np.pi * 3 * tone_hz * t))
            planar = np.stack(chans).astype(np.float32)
            layout = "stereo" if channels == 2 else "mono"
            for k in range(0, n, 1024):
                chunk = planar[:, k:k + 1024]
                if chunk.shape[1] < 1024:
                    chunk = np.pad(chunk, ((0, 0), (0, 1024 - chunk.shape[1])))
                frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(chunk), format="fltp",
                                                   layout=layout)
                frame.sample_rate = sample_rate
                frame.pts = k
                frame.time_base = fractions.Fraction(1, sample_rate)
                for p in as_.encode(frame):
                    out.mux(p)
            for p in as_.encode(None):
                out.mux(p)
    return path
