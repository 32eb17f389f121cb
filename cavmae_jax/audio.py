"""Audio front end: Kaldi-compatible log-mel fbank (numpy), padding, normalization, window table.

The fbank reproduces what the official CAV-MAE / CAV-MAE Sync data loaders compute with

    torchaudio.compliance.kaldi.fbank(w, htk_compat=True, sample_frequency=sr, use_energy=False,
                                      window_type='hanning', num_mel_bins=128, dither=0.0,
                                      frame_shift=10)

on a mean-removed waveform, written formula by formula in numpy so that no torch is needed.
`load_audio` decodes any file (audio or a video's audio track) to mono float32 at 16 kHz the way
the official extraction does (`ffmpeg -ar 16000` to a 16-bit WAV, then `sox remix 1`: first
channel), rounding to 16-bit PCM as that WAV does; `stream_audio` yields the same samples in
chunks, so that long inputs are decoded in bounded memory.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from typing import Literal

import numpy as np

SAMPLE_RATE = 16000
NUM_MEL_BINS = 128
FRAME_LENGTH = 400  # 25 ms at 16 kHz
FRAME_SHIFT = 160  # 10 ms at 16 kHz
TARGET_LENGTH = 1024  # whole-clip fbank length (official `_wav2fbank`)
FBANK_MEAN = -5.081  # official normalization stats (the CAV-MAE README's AudioSet mean, std)
FBANK_STD = 4.4849
LOG_FLOOR = float(np.finfo(np.float32).eps)  # Kaldi floors the mel energies at float32 eps
PREEMPHASIS = 0.97
LOW_FREQ = 20.0

# Containers that soundfile (libsndfile) reads directly; anything else goes through PyAV.
_SOUNDFILE_EXTS = (".wav", ".flac", ".ogg", ".oga", ".aiff", ".aif")


def _mel(freq):
    """Kaldi's mel scale, 1127 ln(1 + f/700); keeps float32 inputs in float32 like torchaudio."""
    return 1127.0 * np.log(1.0 + freq / 700.0)


@functools.lru_cache(maxsize=8)
def kaldi_mel_banks(num_bins: int, n_fft: int, sample_rate: int, low_freq: float = LOW_FREQ,
                    high_freq: float = 0.0) -> np.ndarray:
    """Kaldi triangular mel filters, (num_bins, n_fft // 2 + 1) float32.

    Triangles are linear in mel (not Hz); the Nyquist bin gets zero weight. Computed in float32
    as torchaudio does, so the filters that cover a single FFT bin come out identically.
    """
    nyquist = 0.5 * sample_rate
    if high_freq <= 0.0:
        high_freq += nyquist
    fft_bin_width = sample_rate / n_fft
    mel_low, mel_high = float(_mel(low_freq)), float(_mel(high_freq))
    delta = (mel_high - mel_low) / (num_bins + 1)
    b = np.arange(num_bins, dtype=np.float32)[:, None]  # [M, 1]
    left = mel_low + b * delta
    center = mel_low + (b + 1.0) * delta
    right = mel_low + (b + 2.0) * delta
    mel = _mel(fft_bin_width * np.arange(n_fft // 2, dtype=np.float32))[None, :]  # [1, n_fft/2]
    up = (mel - left) / (center - left)
    down = (right - mel) / (right - center)
    banks = np.maximum(np.float32(0.0), np.minimum(up, down))  # [M, n_fft/2]
    banks = np.pad(banks, ((0, 0), (0, 1)))  # zero weight on the Nyquist bin
    banks.setflags(write=False)
    return banks.astype(np.float32, copy=False)


@functools.lru_cache(maxsize=4)
def _hann(size: int) -> np.ndarray:
    """Symmetric Hann window (torch.hann_window(size, periodic=False)), float64."""
    n = np.arange(size, dtype=np.float64)
    w = 0.5 - 0.5 * np.cos(2.0 * np.pi * n / (size - 1))
    w.setflags(write=False)
    return w


def num_fbank_frames(num_samples: int) -> int:
    """Frames Kaldi produces with snip_edges=True: 1 + (n - 400) // 160, or 0 below 400 samples."""
    if num_samples < FRAME_LENGTH:
        return 0
    return 1 + (num_samples - FRAME_LENGTH) // FRAME_SHIFT


def kaldi_fbank(wave: np.ndarray, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Log-mel fbank of a mono waveform exactly as the official loader computes it.

    Args:
      wave: [n] float waveform in [-1, 1], already mean-removed by the caller (the official
        loader subtracts the clip mean before calling fbank). A (1, n) array is accepted too.
      sample_rate: samples per second; frame length 25 ms and shift 10 ms follow from it.

    Returns:
      [frames, 128] float32, frames = 1 + (n - 400) // 160 at 16 kHz (no padding).

    Raises:
      ValueError: fewer samples than one 25 ms frame (we never pad or reflect).
    """
    wave = np.asarray(wave)
    if wave.ndim == 2 and wave.shape[0] == 1:
        wave = wave[0]
    if wave.ndim != 1:
        raise ValueError(f"kaldi_fbank expects a mono waveform [n], got shape {wave.shape}")
    size = int(sample_rate * 0.025)
    shift = int(sample_rate * 0.010)
    if wave.shape[0] < size:
        raise ValueError(
            f"waveform has {wave.shape[0]} samples, fewer than one 25 ms frame "
            f"({size} samples at {sample_rate} Hz); Kaldi fbank yields no frames for it")
    n_fft = 1 << (size - 1).bit_length()  # round_to_power_of_two: 400 -> 512
    num_frames = 1 + (wave.shape[0] - size) // shift  # snip_edges=True
    x = wave.astype(np.float64)
    frames = np.lib.stride_tricks.sliding_window_view(x, size)[::shift][:num_frames]  # [F, 400]
    frames = frames - frames.mean(axis=1, keepdims=True)  # remove_dc_offset (copies)
    prev = np.concatenate([frames[:, :1], frames[:, :-1]], axis=1)  # x[-1] := x[0], per frame
    frames = frames - PREEMPHASIS * prev
    frames = frames * _hann(size)
    power = np.abs(np.fft.rfft(frames, n=n_fft, axis=1)) ** 2  # [F, n_fft/2 + 1]
    banks = kaldi_mel_banks(NUM_MEL_BINS, n_fft, sample_rate)  # [128, n_fft/2 + 1]
    mel = power @ banks.T.astype(np.float64)  # [F, 128]
    return np.log(np.maximum(mel, LOG_FLOOR)).astype(np.float32)


def pad_or_cut(fbank: np.ndarray, target: int = TARGET_LENGTH) -> np.ndarray:
    """Zero-pad (at the end, log domain) or cut a [frames, bins] fbank to [target, bins]."""
    n = fbank.shape[0]
    if n >= target:
        return fbank[:target]
    return np.pad(fbank, ((0, target - n), (0, 0)))


def normalize(x: np.ndarray, mean: float = FBANK_MEAN, std: float = FBANK_STD) -> np.ndarray:
    """(x - mean) / std with the official stats; a zero-padded frame becomes +1.1329."""
    return (x - mean) / std


def window_table(num_frames: int = 16, window_length: int = 416,
                 total: int = TARGET_LENGTH) -> np.ndarray:
    """Per-frame audio windows [start, end) of the official Sync loader, (num_frames, 2) int32.

    Frame k gets centre p = round(k * total / N) (Python's round on the float quotient, i.e.
    round-half-to-even, exactly as `map_frame_to_spectrogram` computes it), start = max(0,
    p - L // 2), end = start + L, clamped to the end: end = total, start = total - L.
    """
    if not 0 < window_length <= total:
        raise ValueError(f"window_length must be in (0, {total}], got {window_length}")
    if num_frames <= 0:
        raise ValueError(f"num_frames must be positive, got {num_frames}")
    out = np.empty((num_frames, 2), np.int32)
    for k in range(num_frames):
        p = int(round(k * total / num_frames))
        start = max(0, p - window_length // 2)
        end = start + window_length
        if end > total:
            end = total
            start = max(0, end - window_length)
        out[k] = (start, end)
    return out


def _pick_channel(x: np.ndarray, mix: str) -> np.ndarray:
    """[channels, n] -> [n]: first channel (official `sox remix 1`) or the channel mean."""
    if mix == "first":
        return x[0]
    if mix == "mean":
        return x.mean(axis=0)
    raise ValueError(f"mix must be 'first' or 'mean', got {mix!r}")


def to_pcm16(x: np.ndarray) -> np.ndarray:
    """Rounds [-1, 1] float samples to 16-bit PCM and back (k / 32768), as the official path does.

    The official extraction writes a 16-bit WAV (`ffmpeg -ar 16000`: float -> int16 with
    round-to-nearest and clipping, no dither) that `torchaudio.load` reads back as int16 / 32768.
    Float32 in, float32 out (every value exact).
    """
    x = np.asarray(x, np.float32)
    q = np.clip(np.rint(x * np.float32(32768.0)), -32768.0, 32767.0)
    return (q / np.float32(32768.0)).astype(np.float32, copy=False)


_BLOCK_SECONDS = 10.0  # decode / resample granularity of `stream_audio` (bounds its memory)


def _soundfile_chunks(path: str) -> tuple[Iterator[np.ndarray], int] | None:
    """([channels, n] float32 blocks, rate) read with soundfile, or None when it cannot open it."""
    import soundfile as sf

    try:
        f = sf.SoundFile(path)
        rate = int(f.samplerate)
    except Exception:  # noqa: BLE001 - an odd codec inside a wav/ogg: let FFmpeg try.
        return None

    def blocks() -> Iterator[np.ndarray]:
        with f:
            size = max(1, int(rate * _BLOCK_SECONDS))
            for block in f.blocks(blocksize=size, dtype="float32", always_2d=True):
                yield np.ascontiguousarray(block.T)  # [channels, n]

    return blocks(), rate


def _pyav_chunks(path: str, sample_rate: int) -> Iterator[np.ndarray]:
    """[channels, n] float32 chunks of the first audio stream, resampled by FFmpeg (`ffmpeg -ar`).

    Frame by frame: FFmpeg's resampler is streaming, so the samples are exactly those of one
    resampling call over the whole track, and only one frame is held at a time.
    """
    import av

    with av.open(path) as container:
        if not container.streams.audio:
            raise ValueError("no audio stream")
        stream = container.streams.audio[0]
        resampler = av.AudioResampler(format="fltp", rate=sample_rate)
        for frame in container.decode(stream):
            for out in resampler.resample(frame):
                yield out.to_ndarray()
        for out in resampler.resample(None):
            yield out.to_ndarray()


def _resampled(chunks: Iterator[np.ndarray], orig_sr: int, target_sr: int) -> Iterator[np.ndarray]:
    """Mono chunks resampled with soxr 'HQ' in a stream (librosa's default `soxr_hq`, called
    directly): the output equals one `soxr.resample` call over the concatenated input."""
    import soxr

    rs = soxr.ResampleStream(orig_sr, target_sr, 1, dtype="float32", quality="HQ")
    for chunk in chunks:
        out = rs.resample_chunk(np.ascontiguousarray(chunk, np.float32), last=False)
        if out.size:
            yield out
    out = rs.resample_chunk(np.zeros(0, np.float32), last=True)
    if out.size:
        yield out


def stream_audio(path: str | os.PathLike, sample_rate: int = SAMPLE_RATE,
                 mix: Literal["first", "mean"] = "first", pcm16: bool = True
                 ) -> Iterator[np.ndarray]:
    """Decodes an audio file or a video's audio track as consecutive mono float32 chunks.

    The concatenated chunks are exactly what `load_audio` returns, but the track is decoded,
    downmixed, resampled and rounded a piece at a time, so memory does not grow with its length
    and a consumer can stop early (closing the generator closes the file).

    Raises:
      ValueError: no audio stream or no samples; av/soundfile errors for unreadable files.
    """
    path = os.fspath(path)
    if mix not in ("first", "mean"):
        raise ValueError(f"mix must be 'first' or 'mean', got {mix!r}")
    opened = _soundfile_chunks(path) if path.lower().endswith(_SOUNDFILE_EXTS) else None
    if opened is not None:
        blocks, sr = opened
        mono = (_pick_channel(b, mix) for b in blocks)
        if sr != sample_rate:
            mono = _resampled(mono, sr, sample_rate)
    else:
        mono = (_pick_channel(c, mix) for c in _pyav_chunks(path, sample_rate))
    total = 0
    for chunk in mono:
        if not chunk.size:
            continue
        chunk = np.ascontiguousarray(chunk, dtype=np.float32)
        total += chunk.shape[0]
        yield to_pcm16(chunk) if pcm16 else chunk
    if total == 0:
        raise ValueError("audio stream has no decodable samples")


def load_audio(path: str | os.PathLike, sample_rate: int = SAMPLE_RATE,
               mix: Literal["first", "mean"] = "first", pcm16: bool = True,
               max_samples: int | None = None) -> np.ndarray:
    """Decodes an audio file or a video's audio track to mono float32 in [-1, 1] at `sample_rate`.

    Standalone wav/flac/ogg files are read with soundfile and resampled with soxr (librosa's
    default 'soxr_hq'); everything else (mp4, mkv, webm, mp3, ...) is decoded and resampled by
    PyAV's FFmpeg, as the official `ffmpeg -ar 16000` extraction does. With `pcm16` the samples
    are rounded to 16-bit PCM like the official 16-bit WAV (`to_pcm16`). With `max_samples`
    decoding stops after that many samples (the rest of a long file is never read). The mean is
    NOT removed here.

    Returns:
      [n] float32, n <= max_samples.

    Raises:
      ValueError: no audio stream or no samples; av/soundfile errors for unreadable files.
    """
    chunks, total = [], 0
    stream = stream_audio(path, sample_rate, mix, pcm16)
    try:
        for chunk in stream:
            chunks.append(chunk)
            total += chunk.shape[0]
            if max_samples is not None and total >= max_samples:
                break
    finally:
        stream.close()
    wave = np.concatenate(chunks) if len(chunks) > 1 else chunks[0]
    if max_samples is not None:
        wave = wave[:max_samples]
    return np.ascontiguousarray(wave, dtype=np.float32)


def wave_to_fbank(wave: np.ndarray, sample_rate: int = SAMPLE_RATE,
                  target_length: int = TARGET_LENGTH) -> tuple[np.ndarray, int]:
    """The official `_wav2fbank` path: remove the clip mean, fbank, pad/cut to target_length.

    Returns:
      ([target_length, 128] float32 unnormalized fbank, number of real frames before padding).
    """
    wave = np.asarray(wave, np.float32)
    mean = wave.mean(dtype=np.float32)  # float32 mean of the WHOLE clip, as torch computes it
    # Frames past target_length are cut anyway: skip computing them (long videos).
    size, shift = int(sample_rate * 0.025), int(sample_rate * 0.010)
    wave = wave[:(target_length - 1) * shift + size] - mean
    fb = kaldi_fbank(wave, sample_rate)
    return pad_or_cut(fb, target_length), min(fb.shape[0], target_length)
