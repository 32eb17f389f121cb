"""Synthetic audio-visual clips: the embedded default dataset.

A clip is a short movie of big coloured shapes on a dark background whose sounds are generated
from the same parameters as the pictures, sample-exactly in time. It is pure numpy (plus PyAV for
the mp4 writer), so a 10 s clip generates and encodes in a fraction of a second on one CPU core.

Classes. Class ``c`` fixes four things, all of which are big and obvious:
  * a shape (circle, square, triangle, diamond, plus, ring, star, x),
  * a hue (8 hues 45 degrees apart; classes 8..63 shift the hue pairing by half a step),
  * a timbre (sine, hollow (odd harmonics), saw, bell (FM), pluck, noise band, buzz, vibrato),
  * a pitch register tied to the timbre (its lowest pitch, 140-700 Hz), ordered so that
    similar-sounding timbres sit far apart.
The first 8 classes use 8 different shapes, hues and timbres; up to 64 classes have unique
(shape, timbre) pairs. Names read like ``red_circle_sine``.

Events. A clip holds a random sequence of events (about one per second, with random gaps,
overlaps and silent stretches). Each event is one object of the class's shape that appears at a
random place and time, moves in a straight line and bounces off the walls, and disappears after
0.5-1.6 s. Its sound is a note of the class's timbre whose envelope IS the object's opacity, so
the two rise and fall together. The event's parameters are mapped across the modalities:
  * vertical position -> pitch within the class's register (top = high, 1.5 octaves; the pitch
    glides as the object moves),
  * size -> loudness,
  * colour lightness -> timbre brightness (spectral tilt / FM index),
  * onset -> white flash and size pop on the frame, sharp attack in the sound,
  * wall bounce -> white flash on the frame, a short click in the sound,
  * horizontal position -> stereo pan (only when ``channels=2``).

Distractors (clip-level, independent of the class): background gradient and tint, a silent grey
shape drifting slowly, background noise and a steady hum of random level and pitch.

Design goals:
  (a) Clip-level audio<->video retrieval and classification are learnable by a tiny model (ViT
      dim 64-192, a few hundred steps on CPU): class identity is a large coloured shape on screen
      and a distinct timbre in the spectrogram. Among clips of the same class, retrieval needs
      the event timing, pitches and positions, which differ per clip.
  (b) Telling which moment of a clip a sound belongs to needs the fine-grained window<->frame
      pairing of CAV-MAE Sync: events sit at random times, each with its own position (pitch),
      size (loudness) and lightness (brightness), so the 4.16 s audio window centred on frame k
      (the note at its centre) matches frame k (the object visible at that instant) better than
      the other frames of the same clip. Silent gaps show an empty screen (about 30 % of the
      frames by default), and a frame with nothing on it cannot say which moment it is.
      ``gaps=False`` (``data_prep.synthetic --gaps off``) removes them: each event fades in
      before the previous one fades out, the first is fully visible on frame 0 (its onset is
      ``-ATTACK_S``) and the last is cut by the clip's end (its offset may pass ``duration``).

The default is 10 s, 16 fps (frame ``k * 10`` is exactly the official time ``k * 10 / 16`` s),
128x128 pixels (square, so the later resize + centre crop to 224 loses nothing), mono 16 kHz.
"""

import dataclasses
import fractions
import os
from collections.abc import Sequence
from typing import Any

import av
import numpy as np
from scipy import signal

SHAPES = ("circle", "square", "triangle", "diamond", "plus", "ring", "star", "x")
TIMBRES = ("sine", "hollow", "saw", "bell", "pluck", "noise", "buzz", "vibrato")
HUE_NAMES = ("red", "vermilion", "orange", "yellow", "chartreuse", "lime", "green", "spring",
             "cyan", "sky", "azure", "blue", "violet", "purple", "magenta", "rose")
MAX_CLASSES = len(SHAPES) * len(TIMBRES)

OCTAVES = 1.5  # pitch range from the bottom to the top of the frame
# Lowest pitch (object at the bottom) per timbre: 140 Hz * 2 ** (step / 3) for these steps.
REGISTER_STEP = {"sine": 0, "noise": 1, "saw": 2, "bell": 3, "hollow": 4, "pluck": 5, "buzz": 6,
                 "vibrato": 7}
ATTACK_S = 0.01
RELEASE_S = 0.12
FLASH_TAU_S = 0.07
CLICK_S = 0.015


@dataclasses.dataclass(frozen=True)
class SyntheticClass:
    """One class: what the objects look like and how they sound."""

    index: int
    name: str
    shape: str
    timbre: str
    hue: float  # degrees in [0, 360)
    base_hz: float  # pitch of an object at the bottom of the frame


@dataclasses.dataclass(frozen=True)
class ClipConfig:
    """Format of the generated clips; the defaults suit CAV-MAE Sync (10 s, 16 frames)."""

    duration: float = 10.0  # seconds
    fps: int = 16
    height: int = 128
    width: int = 128
    sample_rate: int = 16000
    channels: int = 1  # 1 = mono, 2 = stereo (pan follows the horizontal position)
    num_classes: int = 8
    event_rate: float = 1.0  # mean events per second
    # True: random gaps and silent stretches between events show an empty screen. False: each
    # event starts before the previous one ends, so every moment has an object and its note.
    gaps: bool = True


@dataclasses.dataclass
class Clip:
    """A generated clip: frames, waveform and the ground truth they were made from."""

    frames: np.ndarray  # [T, H, W, 3] uint8
    audio: np.ndarray  # [S] float32 (mono) or [S, C] float32, in [-1, 1]
    fps: int
    sample_rate: int
    label: int
    class_name: str
    events: list[dict[str, Any]]  # onset/offset/bounce times (s), positions, size, pitch


def class_table(num_classes: int) -> list[SyntheticClass]:
    """Return the first ``num_classes`` classes (a fixed table, the same for every seed)."""
    if not 1 <= num_classes <= MAX_CLASSES:
        raise ValueError(f"num_classes must be in [1, {MAX_CLASSES}], got {num_classes}")
    classes = []
    for c in range(num_classes):
        group = c // len(SHAPES)
        shape = SHAPES[c % len(SHAPES)]
        timbre = TIMBRES[(c + group) % len(TIMBRES)]
        hue_step = 2 * ((c + 3 * group) % 8) + (group % 2)  # in 22.5 degree steps
        hue = 22.5 * hue_step
        name = f"{HUE_NAMES[hue_step]}_{shape}_{timbre}"
        base_hz = 140.0 * 2.0 ** (REGISTER_STEP[timbre] / 3.0)
        classes.append(SyntheticClass(c, name, shape, timbre, hue, base_hz))
    return classes


# ----------------------------------------------------------------------------------------------
# Shared event model: both modalities evaluate the same functions of time.


def _bounce(p0: float, v: float, lo: float, hi: float, t: np.ndarray) -> tuple[np.ndarray, ...]:
    """Position (reflected between lo and hi) and the number of bounces so far, at times t."""
    span = max(hi - lo, 1e-6)
    u = p0 - lo + v * t
    m = np.mod(u, 2 * span)
    pos = lo + np.where(m <= span, m, 2 * span - m)
    return pos, np.floor(u / span)


def _envelope(t: np.ndarray, duration: float, decay_tau: float | None) -> np.ndarray:
    """Note envelope = object opacity: fast attack, optional exponential decay, short release."""
    env = np.clip(t / ATTACK_S, 0.0, 1.0)
    if decay_tau is not None:
        env = env * (0.15 + 0.85 * np.exp(-np.maximum(t, 0.0) / decay_tau))
    else:
        env = env * (0.8 + 0.2 * np.exp(-np.maximum(t, 0.0) / 0.25))
    release = np.clip((duration - t) / RELEASE_S, 0.0, 1.0)
    return env * release * (t >= 0) * (t < duration)


def _event_state(ev: dict[str, Any], t: np.ndarray) -> dict[str, np.ndarray]:
    """Position, envelope and flash of an event at absolute times ``t`` (seconds)."""
    rel = t - ev["onset"]
    x, _ = _bounce(ev["x0"], ev["vx"], ev["size"], 1.0 - ev["size"], rel)
    y, _ = _bounce(ev["y0"], ev["vy"], ev["size"], 1.0 - ev["size"], rel)
    env = _envelope(rel, ev["offset"] - ev["onset"], ev["decay_tau"])
    flash = np.exp(-np.maximum(rel, 0.0) / FLASH_TAU_S) * (rel >= 0)
    for tb in ev["bounces"]:
        d = t - tb
        flash = np.maximum(flash, np.exp(-np.maximum(d, 0.0) / FLASH_TAU_S) * (d >= 0))
    return {"x": x, "y": y, "env": env, "flash": flash * (env > 0)}


def pitch_for_height(y: np.ndarray, base_hz: float) -> np.ndarray:
    """Fundamental frequency for vertical position y in [0, 1] (0 = top = highest)."""
    return base_hz * 2.0 ** (OCTAVES * (1.0 - y))


def _sample_events(rng: np.random.Generator, cls: SyntheticClass,
                   config: ClipConfig) -> list[dict[str, Any]]:
    """Draw the clip's events: random onsets, gaps, positions, motion, size and lightness."""
    events = []
    mean_gap = 1.0 / config.event_rate
    t = rng.uniform(0.0, min(0.8 * mean_gap, 0.5 * config.duration))
    if not config.gaps:
        t = -ATTACK_S  # fully faded in on the first frame
    decay = cls.timbre in ("pluck", "bell")
    while (t < config.duration - 0.3 or not events
           or (not config.gaps and events[-1]["offset"] < config.duration + RELEASE_S)):
        dur = float(rng.uniform(0.5, 1.6))
        size = float(rng.uniform(0.12, 0.22))  # radius as a fraction of min(H, W)
        static = rng.random() < 0.25
        vx, vy = (0.0, 0.0) if static else rng.normal(0.0, 0.35, size=2)
        ev = {
            "onset": float(t),
            # Without gaps the last note is cut by the clip's end, not faded out before it.
            "offset": float(t + dur if not config.gaps else min(t + dur, config.duration)),
            "x0": float(rng.uniform(size, 1.0 - size)),
            "y0": float(rng.uniform(size, 1.0 - size)),
            "vx": float(vx),
            "vy": float(vy),
            "size": size,
            "lightness": float(rng.uniform(0.0, 1.0)),
            "hue_jitter": float(rng.uniform(-8.0, 8.0)),
            "decay_tau": float(dur * rng.uniform(0.25, 0.4)) if decay else None,
            "phase": float(rng.uniform(0.0, 2 * np.pi)),
        }
        # Bounce times, from the same reflection model the frames and the pitch use.
        tt = np.arange(ev["onset"], ev["offset"], 1e-3)
        _, nx = _bounce(ev["x0"], ev["vx"], size, 1.0 - size, tt - ev["onset"])
        _, ny = _bounce(ev["y0"], ev["vy"], size, 1.0 - size, tt - ev["onset"])
        changed = np.nonzero(np.diff(nx + ny) != 0)[0] + 1
        ev["bounces"] = [float(tt[i]) for i in changed]
        ev["pitch_hz"] = float(pitch_for_height(np.array(ev["y0"]), cls.base_hz))
        events.append(ev)
        if not config.gaps:  # the next one fades in before this one starts to fade out
            t += min(rng.uniform(0.3, 1.5) * mean_gap, dur - RELEASE_S - 0.05)
        elif rng.random() < 0.15:
            t += rng.uniform(1.5, 3.0) * mean_gap  # a silent stretch
        else:
            t += rng.uniform(0.3, 1.5) * mean_gap
    return events


# ----------------------------------------------------------------------------------------------
# Video.


def _hsv_to_rgb(h: float, s: float, v: float) -> np.ndarray:
    """HSV (hue in degrees, s and v in [0, 1]) to an RGB float vector in [0, 1]."""
    h = (h % 360.0) / 60.0
    k = np.mod(np.array([5.0, 3.0, 1.0]) + h, 6.0)
    return v - v * s * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)


def _shape_field(shape: str, dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """A distance-like field that is 1 on the shape's outline (dx, dy in radius units)."""
    ax, ay = np.abs(dx), np.abs(dy)
    if shape == "circle":
        return np.sqrt(dx * dx + dy * dy)
    if shape == "square":
        return np.maximum(ax, ay) / 0.85
    if shape == "triangle":  # pointing up; the image y axis points down
        return np.maximum(dy - 0.1, 0.866 * ax - 0.5 * dy + 0.05) / 0.55
    if shape == "diamond":
        return (ax + ay) / 1.1
    if shape == "plus":
        return np.minimum(np.maximum(ax / 0.33, ay), np.maximum(ax, ay / 0.33))
    if shape == "ring":
        return 1.0 + (np.abs(np.sqrt(dx * dx + dy * dy) - 0.72) - 0.28) / 0.28
    if shape == "star":
        rho = np.sqrt(dx * dx + dy * dy)
        theta = np.arctan2(dy, dx)
        return rho / (0.68 + 0.32 * np.cos(5.0 * (theta + np.pi / 2)))
    if shape == "x":
        u, w = np.abs(dx + dy) * 0.7071, np.abs(dx - dy) * 0.7071
        return np.minimum(np.maximum(u / 0.26, w / 0.95), np.maximum(u / 0.95, w / 0.26))
    raise ValueError(f"unknown shape {shape!r}")


def _draw(canvas: np.ndarray, shape: str, cx: float, cy: float, radius: float,
          rgb: np.ndarray, alpha: float) -> None:
    """Alpha-blend one anti-aliased shape into ``canvas`` [H, W, 3] float32, in place."""
    h, w, _ = canvas.shape
    x0, x1 = max(int(cx - radius) - 2, 0), min(int(cx + radius) + 3, w)
    y0, y1 = max(int(cy - radius) - 2, 0), min(int(cy + radius) + 3, h)
    if x0 >= x1 or y0 >= y1 or alpha <= 0:
        return
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    field = _shape_field(shape, (xx + 0.5 - cx) / radius, (yy + 0.5 - cy) / radius)
    cover = np.clip((1.0 - field) * radius + 0.5, 0.0, 1.0)[..., None] * alpha
    patch = canvas[y0:y1, x0:x1]
    patch *= 1.0 - cover
    patch += cover * rgb


def _render_frames(rng: np.random.Generator, cls: SyntheticClass, events: list[dict[str, Any]],
                   config: ClipConfig) -> np.ndarray:
    """Draw all frames: background, silent distractor, then the events in onset order."""
    h, w = config.height, config.width
    n = int(round(config.duration * config.fps))
    times = np.arange(n) / config.fps
    scale = float(min(h, w))

    tint = rng.uniform(0.0, 360.0)
    top = _hsv_to_rgb(tint, rng.uniform(0.0, 0.15), rng.uniform(0.04, 0.25))
    bottom = _hsv_to_rgb(tint, rng.uniform(0.0, 0.15), rng.uniform(0.04, 0.25))
    ramp = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None, None]
    background = ((1 - ramp) * top + ramp * bottom) * np.ones((1, w, 1), np.float32)

    distractor = None
    if rng.random() < 0.7:
        size = rng.uniform(0.08, 0.15)
        distractor = {
            "shape": SHAPES[rng.integers(len(SHAPES))], "size": size,
            "x0": rng.uniform(size, 1 - size), "y0": rng.uniform(size, 1 - size),
            "vx": rng.normal(0, 0.05), "vy": rng.normal(0, 0.05),
            "grey": np.full(3, rng.uniform(0.3, 0.55)), "alpha": rng.uniform(0.3, 0.7),
        }
        lo, hi = size, 1 - size
        dx, _ = _bounce(distractor["x0"], distractor["vx"], lo, hi, times)
        dy, _ = _bounce(distractor["y0"], distractor["vy"], lo, hi, times)

    states = []
    for ev in events:
        rgb = _hsv_to_rgb(cls.hue + ev["hue_jitter"], 0.95 - 0.45 * ev["lightness"],
                          0.6 + 0.4 * ev["lightness"])
        states.append((ev, rgb, _event_state(ev, times)))

    frames = np.empty((n, h, w, 3), np.uint8)
    for i in range(n):
        canvas = background.copy()
        if distractor is not None:
            _draw(canvas, distractor["shape"], dx[i] * w, dy[i] * h,
                  distractor["size"] * scale, distractor["grey"], distractor["alpha"])
        for ev, rgb, st in states:
            alpha = float(st["env"][i])
            if alpha <= 1e-3:
                continue
            flash = float(st["flash"][i])
            colour = rgb + (1.0 - rgb) * 0.8 * flash
            radius = ev["size"] * scale * (1.0 + 0.2 * flash)
            _draw(canvas, cls.shape, float(st["x"][i]) * w, float(st["y"][i]) * h, radius,
                  colour, alpha)
        frames[i] = np.clip(canvas * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return frames


# ----------------------------------------------------------------------------------------------
# Audio.


def _harmonics(phase: np.ndarray, f0: np.ndarray, amps: Sequence[float], ratio: float,
               nyquist: float) -> np.ndarray:
    """Sum of harmonics n * f0 with the given amplitudes, dropping any above 0.9 * Nyquist."""
    out = np.zeros_like(phase)
    for n, a in enumerate(amps, start=1):
        if a == 0.0:
            continue
        keep = (n * ratio * f0) < 0.9 * nyquist
        if not keep.any():
            break
        out += a * np.sin(n * ratio * phase) * keep
    return out


def _timbre(timbre: str, rel: np.ndarray, f0: np.ndarray, phase: np.ndarray, brightness: float,
            sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """One note of the class's timbre (peak-normalized), given the gliding f0 and its phase."""
    nyq = sample_rate / 2.0
    tilt = 0.5 * (1.0 - brightness)  # darker colour -> steeper spectral roll-off
    if timbre == "sine":
        x = np.sin(phase) + 0.05 * np.sin(2 * phase)
    elif timbre == "hollow":  # odd harmonics, clarinet-like
        amps = [(1.0 / n) * n ** -tilt if n % 2 else 0.0 for n in range(1, 16)]
        x = _harmonics(phase, f0, amps, 1.0, nyq)
    elif timbre == "saw":
        x = _harmonics(phase, f0, [(1.0 / n) * n ** -tilt for n in range(1, 16)], 1.0, nyq)
    elif timbre == "bell":  # FM with an inharmonic modulator and a decaying index
        index = (2.0 + 2.0 * brightness) * (0.3 + 0.7 * np.exp(-rel / 0.4))
        x = np.sin(phase + index * np.sin(1.41 * phase))
    elif timbre == "pluck":  # high harmonics die first
        x = np.zeros_like(phase)
        for n in range(1, 12):
            keep = (n * f0) < 0.9 * nyq
            x += (1.0 / n) * np.exp(-rel * n * (2.0 + 4.0 * tilt)) * np.sin(n * phase) * keep
    elif timbre == "noise":  # narrow noise band around f0 (ring-modulated low-passed noise)
        b, a = signal.butter(2, min(120.0 + 200.0 * brightness, 0.4 * nyq) / nyq)
        band = signal.lfilter(b, a, rng.standard_normal(phase.size))
        x = band * np.sin(phase)
    elif timbre == "buzz":  # narrow pulse train: flat comb of equal harmonics
        x = _harmonics(phase, f0, [n ** (-0.5 * tilt) for n in range(1, 25)], 1.0, nyq)
    elif timbre == "vibrato":
        vib = 0.06 * np.sin(2 * np.pi * 6.0 * rel) / (2 * np.pi * 6.0)
        ph = phase + 2 * np.pi * f0 * vib
        x = np.sin(ph) + 0.35 * np.sin(3 * ph) * (3 * f0 < 0.9 * nyq)
    else:
        raise ValueError(f"unknown timbre {timbre!r}")
    peak = np.max(np.abs(x))
    return x / peak if peak > 0 else x


def _render_audio(rng: np.random.Generator, cls: SyntheticClass, events: list[dict[str, Any]],
                  config: ClipConfig) -> np.ndarray:
    """Mix the notes and bounce clicks of all events over background noise and hum."""
    sr = config.sample_rate
    n = int(round(config.duration * sr))
    t = np.arange(n) / sr
    mix = np.zeros((config.channels, n), np.float64)

    # Clip-level distractors: low-passed noise and a hum, unrelated to the pictures.
    b, a = signal.butter(1, 2000.0 / (sr / 2.0))
    noise = signal.lfilter(b, a, rng.standard_normal(n)) * rng.uniform(0.005, 0.03)
    hum_f = rng.uniform(50.0, 120.0)
    hum = rng.uniform(0.0, 0.03) * (np.sin(2 * np.pi * hum_f * t)
                                    + 0.5 * np.sin(4 * np.pi * hum_f * t + 1.0))
    mix += (noise + hum)[None]

    for ev in events:
        s0 = max(int(np.floor(ev["onset"] * sr)), 0)
        s1 = min(int(np.ceil(ev["offset"] * sr)), n)
        te = t[s0:s1]
        st = _event_state(ev, te)
        f0 = pitch_for_height(st["y"], cls.base_hz)
        phase = ev["phase"] + 2 * np.pi * np.cumsum(f0) / sr
        rel = te - ev["onset"]
        note = _timbre(cls.timbre, rel, f0, phase, ev["lightness"], sr, rng)
        loud = 0.12 + 1.2 * (ev["size"] - 0.12)  # 0.12 .. 0.24
        x = loud * st["env"] * note
        for tb in ev["bounces"]:  # short decaying noise burst at each wall bounce
            b0 = int(round(tb * sr)) - s0
            # The part inside the note: a gaps=False clip's first note starts before 0 s, so a
            # bounce in its first milliseconds falls before the first sample.
            lo, hi = max(b0, 0), min(b0 + int(CLICK_S * sr * 4), x.size)
            if hi > lo:
                decay = np.exp(-np.arange(lo - b0, hi - b0) / (CLICK_S * sr))
                x[lo:hi] += 0.5 * loud * decay * rng.standard_normal(hi - lo)
        if config.channels == 1:
            mix[0, s0:s1] += x
        else:
            pan = st["x"] * (np.pi / 2)
            mix[0, s0:s1] += x * np.cos(pan)
            mix[1, s0:s1] += x * np.sin(pan)
    out = np.tanh(mix).astype(np.float32)  # soft limiter; almost linear at these levels
    return out[0] if config.channels == 1 else out.T


def generate_clip(seed: int | Sequence[int], label: int,
                  config: ClipConfig = ClipConfig()) -> Clip:
    """Generate one clip of class ``label``; the same (seed, label, config) gives the same clip."""
    classes = class_table(config.num_classes)
    if not 0 <= label < len(classes):
        raise ValueError(f"label {label} out of range for {len(classes)} classes")
    if config.height % 2 or config.width % 2:
        raise ValueError("height and width must be even (yuv420p)")
    cls = classes[label]
    root = np.random.SeedSequence(seed)
    ev_seed, video_seed, audio_seed = root.spawn(3)
    events = _sample_events(np.random.default_rng(ev_seed), cls, config)
    frames = _render_frames(np.random.default_rng(video_seed), cls, events, config)
    audio = _render_audio(np.random.default_rng(audio_seed), cls, events, config)
    public = [{k: ev[k] for k in ("onset", "offset", "bounces", "x0", "y0", "vx", "vy", "size",
                                  "lightness", "pitch_hz")} for ev in events]
    return Clip(frames, audio, config.fps, config.sample_rate, label, cls.name, public)


# ----------------------------------------------------------------------------------------------
# Writer.


def write_clip_mp4(path: str | os.PathLike, frames: np.ndarray, fps: int | fractions.Fraction,
                   audio: np.ndarray, sample_rate: int, *, crf: int = 18,
                   preset: str = "veryfast", audio_bitrate: int = 96000) -> None:
    """Write an mp4 with H.264 (libx264, yuv420p) video and AAC audio.

    Args:
      path: output file.
      frames: [T, H, W, 3] uint8 RGB; H and W must be even.
      fps: frame rate.
      audio: [S] (mono) or [S, C] float in [-1, 1].
      sample_rate: audio rate in Hz (e.g. 16000, 44100, 48000).
      crf: x264 quality (lower is better).
      preset: x264 speed preset.
      audio_bitrate: AAC bit rate in bits/s.

    x264 runs single-threaded (one clip per process is the unit of parallelism) and without
    its macroblock tree, so the same frames and audio give the same bytes in every process.
    Keyframes come every second so seeking is cheap.
    """
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be [T, H, W, 3] uint8, got {frames.shape} {frames.dtype}")
    t, h, w, _ = frames.shape
    if h % 2 or w % 2:
        raise ValueError(f"yuv420p needs even height and width, got {h}x{w}")
    planar = np.asarray(audio, np.float32)
    planar = planar[None] if planar.ndim == 1 else np.ascontiguousarray(planar.T)  # [C, S]
    if planar.shape[0] not in (1, 2):
        raise ValueError(f"audio must be mono or stereo, got {planar.shape[0]} channels")
    layout = "mono" if planar.shape[0] == 1 else "stereo"
    rate = fractions.Fraction(fps).limit_denominator(1001)

    with av.open(str(path), mode="w") as out:
        vs = out.add_stream("libx264", rate=rate)
        vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
        vs.codec_context.gop_size = max(int(round(float(rate))), 1)
        # mbtree off: with it, x264 reads memory it never wrote on small frames (64 x 64), and
        # the bytes of some files changed from one process to the next.
        vs.options = {"crf": str(crf), "preset": preset, "threads": "1",
                      "x264-params": "mbtree=0"}
        aus = out.add_stream("aac", rate=sample_rate)
        aus.layout = layout
        aus.bit_rate = audio_bitrate
        for i in range(t):
            frame = av.VideoFrame.from_ndarray(frames[i], format="rgb24")
            frame.pts = i
            for packet in vs.encode(frame):
                out.mux(packet)
        for packet in vs.encode(None):
            out.mux(packet)
        hop = 1024  # AAC frame size; the encoder accepts a shorter last frame
        for k in range(0, planar.shape[1], hop):
            chunk = np.ascontiguousarray(planar[:, k:k + hop])
            frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout=layout)
            frame.sample_rate = sample_rate
            frame.pts = k
            for packet in aus.encode(frame):
                out.mux(packet)
        for packet in aus.encode(None):
            out.mux(packet)
