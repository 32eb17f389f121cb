"""Classification metrics: AudioSet mAP, VGGSound top-1 accuracy, per-frame aggregation.

Matches the official CAV-MAE evaluation (its finetuning `validate`): per-frame predictions are
turned into probabilities (sigmoid for mAP, softmax for accuracy) and averaged over frames; mAP is
the mean over classes of scikit-learn's `average_precision_score`, reimplemented here in numpy so
that the package does not depend on scikit-learn. Metrics are fractions in [0, 1], as the official
`calculate_stats` returns them (papers print them x100).
"""

from __future__ import annotations

import warnings
from typing import Literal

import numpy as np


def average_precision(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Per-class average precision, exactly scikit-learn's `average_precision_score` definition.

    AP = sum_n (R_n - R_{n-1}) P_n over the distinct score thresholds in decreasing order, where
    P_n and R_n are the precision and recall of predicting "positive" for every score >= the n-th
    threshold. Tied scores therefore form ONE threshold: a positive tied with negatives gets the
    precision of the whole tied group, not of some arbitrary order inside it. Equivalently,
    AP = mean over positives of the precision at the end of the positive's tie group.

    Args:
      scores: [N, C] (or [N]) real-valued scores; higher means more likely positive.
      targets: [N, C] (or [N]) binary labels (nonzero = positive).

    Returns:
      [C] float64 AP per class (a scalar array for 1-D input); NaN for classes without positives,
      where AP is undefined (scikit-learn warns and returns a meaningless value there).
    """
    scores = np.asarray(scores)
    targets = np.asarray(targets)
    squeeze = scores.ndim == 1
    if squeeze:
        scores, targets = scores[:, None], targets[:, None]
    if scores.shape != targets.shape or scores.ndim != 2:
        raise ValueError(f"scores {scores.shape} and targets {targets.shape} must both be (N, C)")
    n, c = scores.shape
    if n == 0:
        raise ValueError("need at least one sample")

    order = np.argsort(-scores, axis=0, kind="stable")  # [N, C] descending
    s = np.take_along_axis(scores, order, axis=0)  # [N, C]
    y = np.take_along_axis(targets != 0, order, axis=0)  # [N, C] bool
    tps = np.cumsum(y, axis=0, dtype=np.int64)  # [N, C] true positives in the top n+1
    precision = tps / np.arange(1, n + 1, dtype=np.float64)[:, None]  # [N, C]

    # Row n ends a tie group when the next sorted score differs (or n is the last row).
    group_end = np.ones((n, c), dtype=bool)
    group_end[:-1] = s[:-1] != s[1:]
    # For every row, the index of the end of its tie group: reverse running min over end rows.
    idx = np.where(group_end, np.arange(n)[:, None], n)  # [N, C]
    end = np.minimum.accumulate(idx[::-1], axis=0)[::-1]  # [N, C]
    precision_at_end = np.take_along_axis(precision, end, axis=0)  # [N, C]

    num_pos = tps[-1]  # [C]
    with np.errstate(invalid="ignore", divide="ignore"):
        ap = np.sum(np.where(y, precision_at_end, 0.0), axis=0) / num_pos  # [C]
    ap = np.where(num_pos > 0, ap, np.nan)
    return ap[0] if squeeze else ap


def mean_average_precision(scores: np.ndarray, targets: np.ndarray) -> float:
    """mAP: mean over classes of `average_precision`, skipping classes without positives.

    Classes with no positive target have no defined AP; they are left out of the mean (and a
    `RuntimeWarning` names how many), instead of dragging it to NaN or 0 as scikit-learn would.

    Args:
      scores: [N, C] scores (e.g. frame-averaged sigmoid probabilities).
      targets: [N, C] binary (multi-hot) labels.
    """
    ap = np.atleast_1d(average_precision(scores, targets))  # [C]
    valid = ~np.isnan(ap)
    if not valid.any():
        raise ValueError("no class has a positive target; mAP is undefined")
    if not valid.all():
        warnings.warn(
            f"mean_average_precision: {int((~valid).sum())} of {ap.size} classes have no "
            "positive target and are excluded from the mean",
            RuntimeWarning,
            stacklevel=2,
        )
    return float(np.mean(ap[valid]))


def top1_accuracy(scores: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of samples whose argmax score is the label.

    Args:
      scores: [N, C] scores or probabilities.
      labels: [N] int class ids, or [N, C] one-hot / soft labels (their argmax is the class, as
        the official `calculate_stats` does with `np.argmax(target, 1)`).
    """
    scores = np.asarray(scores)
    labels = np.asarray(labels)
    if scores.ndim != 2:
        raise ValueError(f"scores must be (N, C); got {scores.shape}")
    if labels.ndim == 2:
        labels = np.argmax(labels, axis=1)
    if labels.shape != scores.shape[:1]:
        raise ValueError(f"labels {labels.shape} do not match scores {scores.shape}")
    return float(np.mean(np.argmax(scores, axis=1) == labels))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    # Two-branch form: no overflow, and tiny probabilities stay distinct (no saturation ties).
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def _softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    e = np.exp(x - np.max(x, axis=axis, keepdims=True))
    return e / np.sum(e, axis=axis, keepdims=True)


def aggregate_frames(
    logits: np.ndarray, kind: Literal["sigmoid", "softmax"] = "sigmoid"
) -> np.ndarray:
    """Averages per-frame class probabilities over frames, as the official finetuning eval does.

    The official eval runs the classifier once per frame and averages `sigmoid(logits)` (for mAP)
    or `softmax(logits)` (for accuracy) over frames; averaging probabilities, not logits.

    Args:
      logits: [N, K, C] per-frame logits.
      kind: `sigmoid` (multi-label, AudioSet) or `softmax` (single-label, VGGSound).

    Returns:
      [N, C] frame-averaged probabilities (float32 unless the logits are float64).
    """
    logits = np.asarray(logits)
    if logits.ndim != 3:
        raise ValueError(f"logits must be (N, K, C); got {logits.shape}")
    logits = logits.astype(np.result_type(logits.dtype, np.float32), copy=False)
    if kind == "sigmoid":
        probs = _sigmoid(logits)
    elif kind == "softmax":
        probs = _softmax(logits, axis=-1)
    else:
        raise ValueError(f"kind must be 'sigmoid' or 'softmax'; got {kind!r}")
    return probs.mean(axis=1)  # [N, C]
