"""One record -> model inputs: the clip reader and the per-mode transforms of the pipelines.

`ClipReader` parses a record and cuts out what a mode needs: frame k (JPEG-decoded, resized to
the configured size when stored at another), the audio window of frame k (the record's own
window table, or the official rule recomputed for another window length), the multi-hot
labels. The transforms build on it:

- `TrainVisit` + `TrainExample`: one visit of a clip -> one random moment k (the official
  recipe) or `moments_per_clip` distinct moments, with every augmentation drawn from
  `np.random.default_rng([seed, epoch, clip])`;
- `EvalExample`: the fixed eval frame (N // 2 unless configured), with a `valid` flag for padding;
- `RetrievalExample`: all N (window_k, frame_k) pairs of a clip and their times (`pair_times`).

They are module-level classes because Grain's worker processes pickle them (spawn).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import grain
import numpy as np

from cavmae_jax import audio, video
from cavmae_jax.data import augment, records
from cavmae_jax.data.config import PipelineConfig


@functools.lru_cache(maxsize=32)
def _window_table(num_frames: int, window_length: int, total: int) -> np.ndarray:
    table = audio.window_table(num_frames, window_length, total)
    table.setflags(write=False)
    return table


class ClipReader:
    """Reads one record and turns it into model inputs; shared by all modes (picklable)."""

    def __init__(self, source: Any, shard_names: list[str], num_classes: int,
                 config: PipelineConfig, mean: float, std: float):
        self.source = source  # record bytes by index (ArrayRecord, or a TFDS build)
        self.shard_names = shard_names  # the files behind it, in record order
        self.num_classes = num_classes
        self.config = config
        self.mean = mean
        self.std = std

    def read(self, index: int) -> dict[str, Any]:
        """Parses record `index` once; frames stay JPEG bytes until `frame` decodes one."""
        return records.decode(self.source[int(index)], decode_frames=False,
                              fbank_dtype=np.float16)

    def frame(self, rec: Mapping[str, Any], k: int) -> np.ndarray:
        """Frame k of a parsed record: JPEG-decoded, resized/cropped to S x S, uint8 [S, S, 3].

        Resize + center crop happen only when the stored frame is not S x S (data_prep stores
        224 x 224 already, so this is the official Resize(224) + CenterCrop(224) no-op).
        """
        img = video.decode_jpeg(rec["frames_jpeg"][k])
        size = self.config.image_size
        if img.shape[:2] != (size, size):
            img = video.resize_center_crop(img, size)
        return img

    def window(self, rec: Mapping[str, Any], k: int) -> np.ndarray:
        """Raw log-mel window of frame k: [L, 128] float32.

        The record's own table row when its width is L (the prewindowed case); otherwise the
        same official rule recomputed for L (e.g. 1024 = the whole clip for CAV-MAE).
        """
        fbank = rec["fbank"]
        length = self.config.window_length
        if length > fbank.shape[0]:
            raise ValueError(f"window_length {length} > record fbank length {fbank.shape[0]}")
        start, end = (int(x) for x in rec["windows"][k])
        if end - start != length:
            start, end = (int(x) for x in _window_table(rec["num_frames"], length,
                                                        fbank.shape[0])[k])
        return fbank[start:end].astype(np.float32)

    def labels(self, rec: Mapping[str, Any]) -> np.ndarray:
        return records.multi_hot(rec["labels"], self.num_classes)  # [C]

    def normalize_audio(self, x: np.ndarray) -> np.ndarray:
        return audio.normalize(x, self.mean, self.std).astype(np.float32)


def _check_k(k: int, n: int) -> int:
    if not -n <= k < n:
        raise ValueError(f"frame {k} out of range for a clip with {n} frames")
    return k % n


class TrainVisit(grain.transforms.MapWithIndex):
    """(position in the repeated, shuffled stream, clip index) -> {'clip', 'epoch'}."""

    def __init__(self, num_records: int):
        self.num_records = num_records

    def map_with_index(self, index: int, element: int) -> dict[str, int]:
        return {"clip": int(element), "epoch": index // self.num_records}


class TrainExample(grain.transforms.Map):
    """One train visit -> example: random k, its window and frame, augmentations, audio
    normalization (the frame stays pixels; see `video.normalize_image`).

    All randomness comes from `np.random.default_rng([seed, epoch, clip])`, drawn in a fixed
    order: k, crop/flip, mixup coin, partner clip, partner k, partner crop/flip, lambda,
    SpecAugment, noise. It depends on neither the process layout nor the worker count.
    """

    def __init__(self, reader: ClipReader, seed: int):
        self.reader = reader
        self.seed = seed

    def _frame(self, rec: Mapping[str, Any], k: int, rng: np.random.Generator) -> np.ndarray:
        """Frame k, randomly cropped and flipped when the config says so: uint8 [S, S, 3]."""
        r = self.reader
        aug = r.config.augment
        frame = r.frame(rec, k)
        if aug.crop_and_flip:
            frame = augment.random_resized_crop_and_flip(
                frame, rng, r.config.image_size, aug.crop_scale, aug.crop_ratio, aug.flip_prob)
        return frame

    def _audio(self, fb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Raw window [L, 128] -> SpecAugment (before normalization), normalization, noise and
        roll (after it), each when the config says so."""
        r = self.reader
        aug = r.config.augment
        if aug.freqm > 0 or aug.timem > 0:
            fb = augment.spec_augment(fb, rng, aug.freqm, aug.timem)
        x = r.normalize_audio(fb)
        if aug.noise:
            x = augment.add_noise_and_roll(x, rng)
        return x

    def _one(self, clip: int, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
        r = self.reader
        rec = r.read(clip)
        k = int(rng.integers(0, rec["num_frames"]))  # official: one uniform k per clip per visit
        frame = self._frame(rec, k, rng)
        return r.window(rec, k), frame, r.labels(rec), k

    def _moments(self, clip: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """M distinct moments of one clip (one record read): arrays with leading [M].

        Draw order: the M k's (without replacement), then per moment crop/flip, SpecAugment,
        noise. Mixup is refused with M > 1 by the config.
        """
        r = self.reader
        aug = r.config.augment
        m = r.config.moments_per_clip
        rec = r.read(clip)
        n = int(rec["num_frames"])
        if m > n:
            raise ValueError(f"moments_per_clip {m} > the clip's {n} frames")
        ks = np.sort(rng.choice(n, size=m, replace=False))
        y = augment.smooth_labels(r.labels(rec), aug.label_smooth)
        out: dict[str, list] = {"audio": [], "video": []}
        for k in ks:
            out["video"].append(self._frame(rec, int(k), rng))
            out["audio"].append(self._audio(r.window(rec, int(k)), rng))
        return {"audio": np.stack(out["audio"]), "video": np.stack(out["video"]),
                "labels": np.repeat(y[None], m, axis=0), "frame_k": ks.astype(np.int32),
                "clip_index": np.full(m, clip, np.int64)}

    def map(self, element: Mapping[str, int]) -> dict[str, np.ndarray]:
        r = self.reader
        aug = r.config.augment
        clip = int(element["clip"])
        rng = np.random.default_rng([self.seed, int(element["epoch"]), clip])
        if r.config.moments_per_clip > 1:
            return self._moments(clip, rng)
        fb, img, y, k = self._one(clip, rng)  # [L, 128] raw, [S, S, 3], [C]
        if aug.mixup > 0 and rng.random() < aug.mixup:
            other = int(rng.integers(0, len(r.source)))  # official: any clip, itself included
            fb2, img2, y2, _ = self._one(other, rng)
            # Mixing raw log-mels equals mixing normalized ones (affine normalization).
            fb, img, y, _ = augment.mixup(fb, img, y, fb2, img2, y2, rng, aug.mixup_alpha,
                                          aug.label_smooth)
        else:
            y = augment.smooth_labels(y, aug.label_smooth)
        x = self._audio(fb, rng)
        # Pixels, normalized on the device by the step: uint8, or float32 when mixup is on
        # (a mixed image is not an integer one, and every batch needs one dtype).
        img = img.astype(np.float32, copy=False) if aug.mixup > 0 else img
        return {"audio": x, "video": img, "labels": y,
                "frame_k": np.int32(k), "clip_index": np.int64(clip)}


class EvalExample(grain.transforms.Map):
    """Position in the (padded) eval order -> example at the fixed eval frame, `valid` flag."""

    def __init__(self, reader: ClipReader, num_records: int):
        self.reader = reader
        self.num_records = num_records

    def map(self, position: int) -> dict[str, np.ndarray]:
        r = self.reader
        valid = int(position) < self.num_records
        clip = int(position) % self.num_records
        rec = r.read(clip)
        n = rec["num_frames"]
        k = n // 2 if r.config.eval_frame is None else _check_k(r.config.eval_frame, n)
        return {"audio": r.normalize_audio(r.window(rec, k)),
                "video": r.frame(rec, k),
                "labels": r.labels(rec), "frame_k": np.int32(k), "clip_index": np.int64(clip),
                "valid": np.bool_(valid)}


def pair_times(rec: Mapping[str, Any]) -> np.ndarray:
    """[N] float32 time in seconds, within the clip, of each of a parsed record's frames.

    The record's own frame times when it knows them (`source_frame_index` / `fps`, minus the
    segment start); otherwise the official spread of N frames over the clip, k * duration / N
    (duration = the fbank's real length, at most 10 s).
    """
    n = rec["num_frames"]
    idx = np.asarray(rec["source_frame_index"], np.float64)
    source = rec.get("source", {})
    fps = float(source.get("fps", 0.0) or 0.0)
    if fps > 0 and idx.shape == (n,) and (idx >= 0).all():
        return (idx / fps - float(source.get("start_s", 0.0) or 0.0)).astype(np.float32)
    duration = min(rec["num_fbank_frames"] * audio.FRAME_SHIFT / audio.SAMPLE_RATE,
                   video.CLIP_SECONDS)
    return (np.arange(n) * duration / n).astype(np.float32)


class RetrievalExample(grain.transforms.Map):
    """Position -> all N (window_k, frame_k) pairs of one clip, k = 0..N-1 in order."""

    def __init__(self, reader: ClipReader, num_records: int):
        self.reader = reader
        self.num_records = num_records

    def map(self, position: int) -> dict[str, Any]:
        r = self.reader
        valid = int(position) < self.num_records
        clip = int(position) % self.num_records
        rec = r.read(clip)
        n = rec["num_frames"]
        windows = np.stack([r.window(rec, k) for k in range(n)])  # [N, L, 128]
        frames = np.stack([r.frame(rec, k) for k in range(n)])  # [N, S, S, 3] uint8
        return {"audio": r.normalize_audio(windows), "video": frames,
                "labels": r.labels(rec), "frame_k": np.arange(n, dtype=np.int32),
                "times": pair_times(rec), "clip_index": np.int64(clip), "id": rec["id"],
                "valid": np.bool_(valid)}
