"""Training augmentations of the official CAV-MAE / CAV-MAE Sync loaders, in plain numpy.

Every function takes an explicit `np.random.Generator`, so the Grain pipeline can derive one
generator per (seed, epoch, clip) and a resumed run draws exactly the same augmentations.
Official order inside one example (CAV-MAE `dataloader.py __getitem__`): mixup -> SpecAugment
on the raw log-mel -> normalization -> noise + roll. Images: (crop + flip) -> ImageNet
normalization -> mixup with the same lambda as the audio.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

MIXUP_ALPHA = 10.0  # official: np.random.beta(10, 10)
CROP_SCALE = (0.08, 1.0)  # Sync's optional RandomResizedCrop(224, scale=(0.08, 1), ...)
CROP_RATIO = (0.9, 1.1)  # ... ratio=(0.9, 1.1))


def _mask_bounds(size: int, mask_param: int, rng: np.random.Generator) -> tuple[int, int]:
    """One torchaudio-style mask [start, end) along an axis of length `size`.

    torchaudio's `mask_along_axis`: width = floor(u1 * mask_param), start = floor(u2 * (size -
    u1 * mask_param)), so the width is in [0, mask_param - 1] and the mask stays inside the axis.
    """
    value = rng.random() * mask_param
    min_value = rng.random() * (size - value)
    start = int(min_value)
    return start, start + int(value)


def spec_augment(fbank: np.ndarray, rng: np.random.Generator, freqm: int = 0,
                 timem: int = 0) -> np.ndarray:
    """SpecAugment as the official loader does it: one frequency mask, then one time mask.

    Reproduces `torchaudio.transforms.FrequencyMasking(freqm)` and `TimeMasking(timem)` (one
    mask each, width uniform in [0, param - 1], filled with 0) applied to the RAW log-mel before
    normalization, so a masked cell becomes (0 + 5.081) / 4.4849 = 1.1329 afterwards.
    A parameter of 0 means that mask is off (and draws nothing).

    Args:
      fbank: [T, F] unnormalized log-mel (time-major).
      rng: the example's generator.
      freqm: frequency mask parameter (official finetuning: 48).
      timem: time mask parameter (official finetuning: 192).

    Returns:
      [T, F] masked copy (same dtype).
    """
    out = np.array(fbank, copy=True)
    t, f = out.shape
    if freqm > 0:
        start, end = _mask_bounds(f, freqm, rng)
        out[:, start:end] = 0
    if timem > 0:
        start, end = _mask_bounds(t, timem, rng)
        out[start:end, :] = 0
    return out


def add_noise_and_roll(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The official `noise` augmentation on the NORMALIZED fbank.

    `x += rand(T, F) * rand() / 10`, then `torch.roll(x, randint(-T, T), dim=0)`: a circular
    shift along time by an integer in [-T, T - 1].

    Args:
      x: [T, F] normalized log-mel.
      rng: the example's generator.

    Returns:
      [T, F] float32.
    """
    t, f = x.shape
    noisy = x + rng.random((t, f), dtype=np.float32) * np.float32(rng.random() / 10.0)
    shift = int(rng.integers(-t, t))
    return np.roll(noisy.astype(np.float32, copy=False), shift, axis=0)


def smooth_labels(labels: np.ndarray, label_smooth: float = 0.0) -> np.ndarray:
    """Official unmixed target: ls / K everywhere, positives SET to 1 - ls.

    Args:
      labels: [K] 0/1 multi-hot.
      label_smooth: ls (official finetuning: 0.1).

    Returns:
      [K] float32.
    """
    y = np.asarray(labels, np.float32)
    k = y.shape[-1]
    if label_smooth == 0.0 or k == 0:
        return y.copy()
    return np.where(y > 0, 1.0 - label_smooth, label_smooth / k).astype(np.float32)


def mix_labels(labels1: np.ndarray, labels2: np.ndarray, lam: float,
               label_smooth: float = 0.0) -> np.ndarray:
    """Official mixed target: ls / K + lam (1 - ls) y1 + (1 - lam)(1 - ls) y2.

    Without smoothing the entries sum to lam * |y1| + (1 - lam) * |y2|.

    Args:
      labels1: [K] 0/1 multi-hot of the example.
      labels2: [K] 0/1 multi-hot of the mixed-in example.
      lam: mixing weight of the first example.
      label_smooth: ls.

    Returns:
      [K] float32.
    """
    y1 = np.asarray(labels1, np.float32)
    y2 = np.asarray(labels2, np.float32)
    k = y1.shape[-1]
    base = label_smooth / k if k else 0.0
    y = base + lam * (1.0 - label_smooth) * y1 + (1.0 - lam) * (1.0 - label_smooth) * y2
    return y.astype(np.float32)


def sample_mixup_lambda(rng: np.random.Generator, alpha: float = MIXUP_ALPHA) -> float:
    """lambda ~ Beta(alpha, alpha) (official: Beta(10, 10), so lambda stays near 0.5)."""
    return float(rng.beta(alpha, alpha))


def mixup(audio1: np.ndarray, video1: np.ndarray, labels1: np.ndarray, audio2: np.ndarray,
          video2: np.ndarray, labels2: np.ndarray, rng: np.random.Generator,
          alpha: float = MIXUP_ALPHA, label_smooth: float = 0.0
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Official CAV-MAE mixup of two examples with one lambda ~ Beta(alpha, alpha).

    Audio and images are mixed as lam * x1 + (1 - lam) * x2 and the targets with `mix_labels`.
    The official code mixes the two WAVEFORMS and recomputes the fbank; records hold fbanks, so
    here the (raw or normalized: normalization is affine, both give the same result) log-mels
    are mixed instead, which is the documented deviation. The official loader mixes normalized
    images; the pipeline mixes pixel values and the step normalizes afterwards, which is the
    same image (normalization is affine and the weights sum to 1) up to float rounding.

    Args:
      audio1, audio2: [T, F] log-mel of each example.
      video1, video2: [H, W, 3] images (pixels, uint8 or float).
      labels1, labels2: [K] 0/1 multi-hot.
      rng: the example's generator (draws lambda).
      alpha: Beta parameter.
      label_smooth: ls for the mixed target.

    Returns:
      (audio [T, F], video [H, W, 3] float32, labels [K] float32, lam).
    """
    lam = sample_mixup_lambda(rng, alpha)
    audio = (lam * audio1 + (1.0 - lam) * audio2).astype(np.float32)
    video = (lam * video1 + (1.0 - lam) * video2).astype(np.float32)
    return audio, video, mix_labels(labels1, labels2, lam, label_smooth), lam


def sample_crop_box(height: int, width: int, rng: np.random.Generator,
                    scale: tuple[float, float] = CROP_SCALE,
                    ratio: tuple[float, float] = CROP_RATIO) -> tuple[int, int, int, int]:
    """RandomResizedCrop's box: (top, left, crop_height, crop_width).

    Same rule as torchvision: up to 10 tries of area ~ U(scale) * H * W and aspect w/h ~
    exp(U(log ratio)), accepted when the box fits; otherwise a center crop of the whole image
    with its aspect clamped into `ratio`.
    """
    area = height * width
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def random_resized_crop_and_flip(image: np.ndarray, rng: np.random.Generator, size: int = 224,
                                 scale: tuple[float, float] = CROP_SCALE,
                                 ratio: tuple[float, float] = CROP_RATIO,
                                 flip_prob: float = 0.5) -> np.ndarray:
    """Sync's optional image augmentation on a uint8 frame, before ImageNet normalization.

    Reproduces `RandomResizedCrop(size, scale=(0.08, 1), ratio=(0.9, 1.1))` (box from
    `sample_crop_box`, bilinear resize of the box to size x size, as torchvision on a PIL image)
    followed by `RandomHorizontalFlip(flip_prob)`.

    Args:
      image: [H, W, 3] uint8 RGB.
      rng: the example's generator (draws the box, then the flip).
      size: output side.

    Returns:
      [size, size, 3] uint8.
    """
    h, w = image.shape[:2]
    top, left, ch, cw = sample_crop_box(h, w, rng, scale, ratio)
    img = Image.fromarray(np.asarray(image, np.uint8))
    out = np.asarray(img.resize((size, size), Image.BILINEAR,
                                box=(left, top, left + cw, top + ch)), np.uint8)
    if rng.random() < flip_prob:
        out = out[:, ::-1]
    return np.ascontiguousarray(out)
