"""Classification metrics against brute-force references written from their definitions."""

import math
import warnings

import numpy as np
import pytest

from cavmae_jax.evaluate import classification as C


def _brute_ap(scores: np.ndarray, targets: np.ndarray) -> float:
    """scikit-learn's AP from its definition: sum over distinct thresholds of (R_n - R_{n-1}) P_n.

    Each distinct score value is one threshold t; predicting positive for score >= t gives P and R.
    """
    num_pos = int(np.sum(targets))
    ap, prev_recall = 0.0, 0.0
    for t in sorted(set(scores.tolist()), reverse=True):
        pred = [s >= t for s in scores]
        tp = sum(1 for p, y in zip(pred, targets, strict=True) if p and y)
        fp = sum(1 for p, y in zip(pred, targets, strict=True) if p and not y)
        precision, recall = tp / (tp + fp), tp / num_pos
        ap += (recall - prev_recall) * precision
        prev_recall = recall
    return ap


def test_ap_hand_computed_with_ties():
    # Sorted: 0.9(+), then {0.5(+), 0.5(-)} tied, then 0.1(+).
    scores = np.array([0.5, 0.9, 0.1, 0.5])
    targets = np.array([1, 1, 1, 0])
    # Thresholds: 0.9 -> P=1, R=1/3; 0.5 -> P=2/3, R=2/3; 0.1 -> P=3/4, R=1.
    expected = (1 / 3) * 1 + (1 / 3) * (2 / 3) + (1 / 3) * (3 / 4)
    assert C.average_precision(scores, targets) == pytest.approx(expected)
    assert _brute_ap(scores, targets) == pytest.approx(expected)
    # Breaking the tie either way gives a different number: ties are one threshold.
    assert C.average_precision(np.array([0.5, 0.9, 0.1, 0.49]), targets) != pytest.approx(expected)


@pytest.mark.parametrize("quantized", [False, True])
def test_map_matches_brute_force(quantized):
    rng = np.random.default_rng(0)
    n, c = 80, 12
    if quantized:
        scores = rng.integers(0, 5, size=(n, c)).astype(np.float32)  # heavy ties
    else:
        scores = rng.normal(size=(n, c))
    targets = (rng.random((n, c)) < 0.25).astype(np.int64)
    targets[0] = 1  # every class has a positive
    per_class = C.average_precision(scores, targets)
    ref = [_brute_ap(scores[:, j], targets[:, j]) for j in range(c)]
    np.testing.assert_allclose(per_class, ref, rtol=1e-12)
    assert C.mean_average_precision(scores, targets) == pytest.approx(np.mean(ref))


def test_ap_perfect_and_all_positive():
    scores = np.array([0.9, 0.8, 0.3, 0.1])
    assert C.average_precision(scores, np.array([1, 1, 0, 0])) == pytest.approx(1.0)
    assert C.average_precision(scores, np.array([0, 0, 1, 1])) == pytest.approx(
        (1 / 2) * (1 / 3) + (1 / 2) * (2 / 4)
    )
    assert C.average_precision(scores, np.ones(4)) == pytest.approx(1.0)
    # All scores tied: one threshold, AP = prevalence.
    assert C.average_precision(np.zeros(5), np.array([1, 0, 0, 1, 0])) == pytest.approx(0.4)


def test_map_skips_classes_without_positives():
    rng = np.random.default_rng(1)
    scores = rng.normal(size=(30, 4))
    targets = (rng.random((30, 4)) < 0.4).astype(np.int64)
    targets[:, 2] = 0
    targets[0, [0, 1, 3]] = 1
    ap = C.average_precision(scores, targets)
    assert np.isnan(ap[2]) and not np.isnan(ap[[0, 1, 3]]).any()
    with pytest.warns(RuntimeWarning, match="1 of 4 classes"):
        m = C.mean_average_precision(scores, targets)
    ref = np.mean([_brute_ap(scores[:, j], targets[:, j]) for j in (0, 1, 3)])
    assert m == pytest.approx(ref)
    with pytest.raises(ValueError, match="no class"):
        C.mean_average_precision(scores, np.zeros_like(targets))


def test_map_no_warning_when_all_classes_valid():
    targets = np.eye(3, dtype=np.int64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert C.mean_average_precision(np.eye(3), targets) == pytest.approx(1.0)


def test_top1_accuracy_int_and_onehot_and_soft_labels():
    scores = np.array([[0.1, 0.7, 0.2], [0.5, 0.4, 0.1], [0.2, 0.3, 0.5], [0.9, 0.05, 0.05]])
    labels = np.array([1, 0, 0, 2])
    assert C.top1_accuracy(scores, labels) == pytest.approx(0.5)
    assert C.top1_accuracy(scores, np.eye(3)[labels]) == pytest.approx(0.5)
    soft = np.eye(3)[labels] * 0.9 + 0.1 / 3  # label smoothing keeps the argmax
    assert C.top1_accuracy(scores, soft) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        C.top1_accuracy(scores, labels[:3])


def _brute_aggregate(logits: np.ndarray, kind: str) -> np.ndarray:
    n, k, c = logits.shape
    out = np.zeros((n, c))
    for i in range(n):
        for f in range(k):
            row = logits[i, f].astype(np.float64)
            if kind == "sigmoid":
                probs = [1.0 / (1.0 + math.exp(-x)) for x in row]
            else:
                z = sum(math.exp(x) for x in row)
                probs = [math.exp(x) / z for x in row]
            out[i] += np.array(probs) / k
    return out


@pytest.mark.parametrize("kind", ["sigmoid", "softmax"])
def test_aggregate_frames_matches_brute_force(kind):
    rng = np.random.default_rng(2)
    logits = (3.0 * rng.normal(size=(6, 10, 5))).astype(np.float32)
    got = C.aggregate_frames(logits, kind)
    assert got.shape == (6, 5) and got.dtype == np.float32
    np.testing.assert_allclose(got, _brute_aggregate(logits, kind), rtol=1e-5, atol=1e-7)
    if kind == "softmax":
        np.testing.assert_allclose(got.sum(-1), 1.0, rtol=1e-5)


def test_aggregate_frames_averages_probabilities_not_logits_and_is_stable():
    logits = np.array([[[10.0], [-10.0]]])  # mean logit 0, but mean probability is 0.5 too
    assert C.aggregate_frames(logits, "sigmoid")[0, 0] == pytest.approx(0.5)
    logits = np.array([[[4.0], [0.0]]])
    expected = (1 / (1 + math.exp(-4.0)) + 0.5) / 2
    assert C.aggregate_frames(logits, "sigmoid")[0, 0] == pytest.approx(expected)
    assert expected != pytest.approx(1 / (1 + math.exp(-2.0)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow warnings
        big = np.array([[[1000.0, -1000.0, 0.0]]], np.float32)
        sig = C.aggregate_frames(big, "sigmoid")
        soft = C.aggregate_frames(big, "softmax")
    np.testing.assert_allclose(sig, [[1.0, 0.0, 0.5]])
    np.testing.assert_allclose(soft, [[1.0, 0.0, 0.0]])
    # Small probabilities stay distinct (no saturation ties that would change the ranking).
    tiny = C.aggregate_frames(np.array([[[-30.0, -40.0]]]), "sigmoid")
    assert tiny[0, 0] > tiny[0, 1] > 0
    with pytest.raises(ValueError, match="kind"):
        C.aggregate_frames(big, "relu")
