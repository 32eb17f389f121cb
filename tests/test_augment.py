"""Augmentations do what the official loaders do: masks, noise + roll, mixup, crop + flip."""

import numpy as np
import pytest

from cavmae_jax.data import augment


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) runs of True in a 1-D bool array."""
    idx = np.flatnonzero(np.diff(np.concatenate([[0], mask.astype(int), [0]])))
    return list(zip(idx[::2], idx[1::2], strict=True))


def test_spec_augment_one_mask_each_with_stated_widths():
    x = np.full((416, 128), -3.0, np.float32)
    freq_widths, time_widths = set(), set()
    for seed in range(300):
        y = augment.spec_augment(x, _rng(seed), freqm=48, timem=192)
        assert y.shape == x.shape and y.dtype == x.dtype
        assert set(np.unique(y)) <= {0.0, -3.0}  # masked to 0 (torchaudio's mask_value)
        zero = y == 0
        freq_cols = zero.all(axis=0)  # frequency mask: whole columns
        time_rows = zero.all(axis=1)  # time mask: whole rows
        runs_f, runs_t = _runs(freq_cols), _runs(time_rows)
        assert len(runs_f) <= 1 and len(runs_t) <= 1  # one contiguous mask each
        fw = runs_f[0][1] - runs_f[0][0] if runs_f else 0
        tw = runs_t[0][1] - runs_t[0][0] if runs_t else 0
        if tw < 416:
            # Every zero cell lies in the frequency band or the time band.
            np.testing.assert_array_equal(zero, freq_cols[None, :] | time_rows[:, None])
        freq_widths.add(fw)
        time_widths.add(tw)
    assert max(freq_widths) <= 47 and max(time_widths) <= 191  # width in [0, param - 1]
    assert max(freq_widths) >= 40 and max(time_widths) >= 170 and min(freq_widths) <= 2
    np.testing.assert_array_equal(x, -3.0)  # input untouched


def test_spec_augment_off_and_deterministic():
    x = _rng(1).normal(size=(64, 128)).astype(np.float32)
    np.testing.assert_array_equal(augment.spec_augment(x, _rng(), 0, 0), x)
    a = augment.spec_augment(x, _rng(5), 20, 30)
    np.testing.assert_array_equal(a, augment.spec_augment(x, _rng(5), 20, 30))


def test_noise_and_roll_is_small_noise_then_circular_shift():
    t, f = 416, 128
    x = np.tile(np.arange(t, dtype=np.float32)[:, None] * 10.0, (1, f))  # row r holds 10 r
    y = augment.add_noise_and_roll(x, _rng(3))
    assert y.shape == (t, f) and y.dtype == np.float32
    # Each output row is some input row (+ noise in [0, 0.1)); rows follow circularly.
    src = np.floor(y[:, 0] / 10.0 + 1e-6).astype(int)
    shift = (0 - src[0]) % t
    np.testing.assert_array_equal(src, (np.arange(t) - shift) % t)
    noise = y - np.roll(x, shift, axis=0)
    assert noise.min() >= 0.0 and noise.max() < 0.1
    np.testing.assert_array_equal(y, augment.add_noise_and_roll(x, _rng(3)))
    shifts = set()
    for seed in range(200):
        z = augment.add_noise_and_roll(x, _rng(seed))
        shifts.add(int((-np.floor(z[0, 0] / 10.0 + 1e-6)) % t))
    assert len(shifts) > 100  # randint(-T, T): many different circular shifts


def test_label_smoothing_and_mixing_follow_the_official_formula():
    y1 = np.array([1, 0, 0, 1, 0], np.float32)
    y2 = np.array([0, 1, 0, 0, 0], np.float32)
    np.testing.assert_allclose(augment.smooth_labels(y1, 0.1), [0.9, 0.02, 0.02, 0.9, 0.02])
    np.testing.assert_array_equal(augment.smooth_labels(y1, 0.0), y1)
    lam = 0.3
    m = augment.mix_labels(y1, y2, lam)
    np.testing.assert_allclose(m, [0.3, 0.7, 0, 0.3, 0])
    assert m.sum() == pytest.approx(lam * y1.sum() + (1 - lam) * y2.sum())
    ms = augment.mix_labels(y1, y2, lam, 0.1)
    np.testing.assert_allclose(ms, 0.02 + 0.9 * (lam * y1 + (1 - lam) * y2))
    assert ms.sum() == pytest.approx(0.1 + 0.9 * (lam * 2 + (1 - lam) * 1))


def test_mixup_mixes_audio_video_labels_with_one_beta_lambda():
    rng = _rng(0)
    a1, a2 = rng.normal(size=(2, 8, 128)).astype(np.float32)
    v1, v2 = rng.normal(size=(2, 4, 4, 3)).astype(np.float32)
    y1, y2 = np.eye(3, dtype=np.float32)[[0, 2]]
    a, v, y, lam = augment.mixup(a1, v1, y1, a2, v2, y2, _rng(9))
    assert 0 < lam < 1
    np.testing.assert_allclose(a, lam * a1 + (1 - lam) * a2, rtol=1e-6)
    np.testing.assert_allclose(v, lam * v1 + (1 - lam) * v2, rtol=1e-6)
    np.testing.assert_allclose(y, [lam, 0, 1 - lam], rtol=1e-6)
    assert y.sum() == pytest.approx(1.0)
    assert augment.mixup(a1, v1, y1, a2, v2, y2, _rng(9))[3] == lam
    lams = [augment.sample_mixup_lambda(_rng(s)) for s in range(2000)]
    assert np.mean(lams) == pytest.approx(0.5, abs=0.01)
    assert np.var(lams) == pytest.approx(1 / 84, rel=0.15)  # Beta(10, 10) variance 1/84


def test_crop_box_respects_scale_and_ratio():
    for seed in range(300):
        top, left, h, w = augment.sample_crop_box(224, 224, _rng(seed))
        assert 0 <= top and top + h <= 224 and 0 <= left and left + w <= 224
        area = h * w / 224**2
        assert 0.08 * 0.85 <= area <= 1.0  # rounding of small boxes
        assert 0.9 * 0.93 <= w / h <= 1.1 / 0.93
    # A very wide image cannot fit any sampled box of ratio <= 1.1 at scale 1: fallback center.
    top, left, h, w = augment.sample_crop_box(10, 100, _rng(0), scale=(1.0, 1.0))
    assert (h, w) == (10, 11) and top == 0 and left == (100 - 11) // 2


def test_random_resized_crop_and_flip():
    img = _rng(0).integers(0, 256, size=(224, 224, 3), dtype=np.uint8)
    out = augment.random_resized_crop_and_flip(img, _rng(4))
    assert out.shape == (224, 224, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, augment.random_resized_crop_and_flip(img, _rng(4)))
    # Full-image box and no flip is the identity; flip_prob 1 mirrors it.
    full = {"scale": (1.0, 1.0), "ratio": (1.0, 1.0)}
    same = augment.random_resized_crop_and_flip(img, _rng(1), flip_prob=0.0, **full)
    np.testing.assert_array_equal(same, img)
    flipped = augment.random_resized_crop_and_flip(img, _rng(1), flip_prob=1.0, **full)
    np.testing.assert_array_equal(flipped, img[:, ::-1])
    # Same seed, same box: flip only mirrors the crop.
    a = augment.random_resized_crop_and_flip(img, _rng(7), flip_prob=0.0)
    b = augment.random_resized_crop_and_flip(img, _rng(7), flip_prob=1.0)
    np.testing.assert_array_equal(b, a[:, ::-1])
    # The crop is the box's content: a box of one flat quadrant resizes to that flat colour.
    quad = np.zeros((224, 224, 3), np.uint8)
    quad[:112, :112] = 200
    small = augment.random_resized_crop_and_flip(quad, _rng(2), size=32, flip_prob=0.0)
    top, left, h, w = augment.sample_crop_box(224, 224, _rng(2))
    want = np.asarray(quad[top:top + h, left:left + w].mean())
    assert abs(small.astype(float).mean() - want) < 12
