"""Moment metrics: does the model know *which moment* of a clip a sound belongs to?

Clip-level retrieval (retrieval.py) can be solved from the clip's content alone. These metrics
isolate timing, on the per-pair embeddings the retrieval evaluation already computes (audio
window k and video frame k of each clip, K pairs per clip):

- in-class retrieval: clip-level retrieval where each query ranks only the clips that share one
  of its labels, with the main retrieval's clip-level similarity (`diagonal_mean` by default);
- moment localization inside each clip: frame k ranks its clip's K windows (and window k its
  clip's K frames); R@1, accuracy within +/-1 pair, and mean |dt| in seconds;
- offset accuracy, as audio-visual synchronization work reports it: shift the audio segment by
  s in -S..S pairs against a fixed video segment, predict the offset o whose frame/window
  alignment has the highest mean similarity, and count exact and within-one-class hits.

Every number comes with its chance level. docs/moments.md explains each definition.

Tie rule for the moment metrics (localization and offsets): when several candidates share the
top score the prediction is split evenly among them, i.e. the metric is its expectation under
uniform random tie-breaking. Constant embeddings therefore score exactly chance (neither the
100 % of ties-in-favour nor the 0 % of worst-rank counting). In-class retrieval keeps the main
retrieval's rule (`retrieval.retrieval_ranks`: ties count in favour of the true match) and
reports `num_tied`.

Pure numpy, host-side, like retrieval.py.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Mapping
from typing import Any

import numpy as np

from cavmae_jax.evaluate import retrieval

DEFAULT_MAX_OFFSET = 2
TIE_RULE = ("moments: ties split evenly among the tied top candidates (expected value under "
            "random tie-breaking); in-class retrieval: ties in favour of the true match, as the "
            "main retrieval")


# ------------------------------------------------------------------------------ helpers


def pair_similarity(audio_emb: np.ndarray, video_emb: np.ndarray) -> np.ndarray:
    """Cosine of every frame with every window of the same clip.

    Args:
      audio_emb: [C, K, D] per-pair audio embeddings.
      video_emb: [C, K, D] per-pair video embeddings.

    Returns:
      [C, K, K] float32 (float64 for float64 input); `out[c, k, j]` = cos(frame k, window j) of
      clip c (rows frames, columns windows; the diagonal is the true pairing).
    """
    a = retrieval._as_pairs(audio_emb, "audio_emb")
    v = retrieval._as_pairs(video_emb, "video_emb")
    if a.shape != v.shape:
        raise ValueError(f"audio {a.shape} and video {v.shape} must have the same shape")
    a, v = retrieval.l2_normalize(a), retrieval.l2_normalize(v)
    return np.einsum("ckd,cjd->ckj", v, a)  # [C, K(frames), K(windows)]


def top_weights(scores: np.ndarray) -> np.ndarray:
    """Weights of the predicted candidate along the last axis, ties split evenly.

    Args:
      scores: [..., M] candidate scores (NaN never wins unless all are NaN).

    Returns:
      [..., M] float64, 1 / (number of maxima) at every maximum, 0 elsewhere; rows sum to 1.
    """
    s = np.asarray(scores, np.float64)
    s = np.where(np.isnan(s), -np.inf, s)
    best = s.max(axis=-1, keepdims=True)
    hit = (s == best).astype(np.float64)
    return hit / hit.sum(axis=-1, keepdims=True)


def _labels_to_bool(labels: np.ndarray | None) -> np.ndarray | None:
    if labels is None:
        return None
    y = np.asarray(labels)
    if y.ndim != 2:
        raise ValueError(f"labels must be multi-hot [C, num_classes]; got shape {y.shape}")
    return y > 0.5


def default_times(num_pairs: int) -> np.ndarray:
    """[K] pair indices as float, the time axis used when no pair times are known."""
    return np.arange(num_pairs, dtype=np.float64)


# ------------------------------------------------------------------------------ in-class


def in_class_retrieval(sim: np.ndarray, labels: np.ndarray | None) -> dict[str, Any]:
    """Clip retrieval among the clips that share a label with the query.

    Query i (row i of `sim` for A->V, of `sim.T` for V->A) ranks only the candidates j with
    labels[i] & labels[j] nonempty; its own pair is always a candidate when it has a label.
    Queries with no other candidate (unlabeled, or alone in every class) are excluded and
    counted. Ranks follow `retrieval.retrieval_ranks` (ties in favour of the true match).

    Args:
      sim: [N, N] clip-level similarity, audio clips as rows (the main retrieval's matrix).
      labels: [N, num_classes] multi-hot (> 0.5 is a label), or None.

    Returns:
      `{"a2v": {"r1", "medr", "num_tied"}, "v2a": {...}, "chance": {"r1", "medr"},
      "num_queries", "num_excluded", "mean_candidates"}` (recalls in percent), or
      `{"skipped": reason}` when there are no labels or no query has a same-class candidate.
    """
    sim = np.asarray(sim)
    n = sim.shape[0]
    if sim.ndim != 2 or sim.shape[1] != n:
        raise ValueError(f"sim must be square [N, N]; got {sim.shape}")
    y = _labels_to_bool(labels)
    if y is None or not y.any():
        return {"skipped": "the data has no labels"}
    if y.shape[0] != n:
        raise ValueError(f"labels ({y.shape[0]}) and sim ({n}) clip counts differ")
    yf = y.astype(np.float32)
    shared = (yf @ yf.T) > 0  # [N, N] candidates of each query (symmetric)
    count = shared.sum(axis=1)  # [N]
    keep = count > 1
    out: dict[str, Any] = {"num_queries": int(keep.sum()), "num_excluded": int(n - keep.sum())}
    if not keep.any():
        out["skipped"] = "no query shares a label with another clip"
        return out
    idx = np.arange(n)
    for name, s in (("a2v", sim), ("v2a", sim.T)):
        true = s[idx, idx][:, None]  # [N, 1]
        ranks = 1 + np.sum(shared & (s > true), axis=1)  # [N]
        tied = np.sum(shared & (s == true), axis=1) > 1
        out[name] = {"r1": float(100.0 * np.mean(ranks[keep] == 1)),
                     "medr": float(np.median(ranks[keep])),
                     "num_tied": int(np.sum(tied & keep))}
    c = count[keep].astype(np.float64)
    out["chance"] = {"r1": float(100.0 * np.mean(1.0 / c)), "medr": float(np.median((c + 1) / 2))}
    out["mean_candidates"] = float(np.mean(c))
    return out


# ------------------------------------------------------------------------------ localization


def localization(pair_sim: np.ndarray, times: np.ndarray) -> tuple[dict[str, float],
                                                                   dict[str, np.ndarray]]:
    """Moment localization inside each clip: each query row picks one of its clip's K candidates.

    Args:
      pair_sim: [C, K, K] scores, `pair_sim[c, k, j]` = query k vs candidate j of clip c; the
        true candidate is j = k (rows = frames for frame->window; transpose for the other way).
      times: [C, K] time of pair k of clip c (seconds, or pair indices).

    Returns:
      (metrics, details): metrics `{"r1", "within1", "mean_abs_dt"}` (percent, percent, time
      units); details `{"weights": [C, K, K] prediction weights, "abs_dt": [C, K, K] |t_j - t_k|}`.
    """
    s = np.asarray(pair_sim)
    if s.ndim != 3 or s.shape[1] != s.shape[2]:
        raise ValueError(f"pair_sim must be [C, K, K]; got {s.shape}")
    k = s.shape[1]
    t = np.asarray(times, np.float64)
    if t.shape != s.shape[:2]:
        raise ValueError(f"times must be [C, K] = {s.shape[:2]}; got {t.shape}")
    w = top_weights(s)  # [C, K, K]
    offset = np.abs(np.arange(k)[None, :] - np.arange(k)[:, None])  # [K, K] |j - k|
    abs_dt = np.abs(t[:, None, :] - t[:, :, None])  # [C, K, K]
    metrics = {"r1": float(100.0 * np.mean(np.sum(w * (offset == 0), axis=-1))),
               "within1": float(100.0 * np.mean(np.sum(w * (offset <= 1), axis=-1))),
               "mean_abs_dt": float(np.mean(np.sum(w * abs_dt, axis=-1)))}
    return metrics, {"weights": w, "abs_dt": abs_dt}


def localization_chance(times: np.ndarray) -> dict[str, float]:
    """Chance of `localization` for a uniformly random pick among the K candidates.

    R@1 1/K; +/-1: mean over k of |{j : |j - k| <= 1}| / K = (3K - 2) / K^2; mean |dt|: mean over
    clips and all (k, j) of |t_j - t_k|.
    """
    t = np.asarray(times, np.float64)  # [C, K]
    k = t.shape[1]
    offset = np.abs(np.arange(k)[None, :] - np.arange(k)[:, None])
    return {"r1": 100.0 / k,
            "within1": float(100.0 * np.mean(offset <= 1)),
            "mean_abs_dt": float(np.mean(np.abs(t[:, None, :] - t[:, :, None])))}


def localization_ceiling(windows: np.ndarray) -> dict[str, Any]:
    """Best R@1 any model can reach when some pairs share the very same audio window.

    Windows clamped at a clip's edges are identical (the official rule with L = 416 of 1024
    frames gives windows 0-3 and 13-15 the same audio), so their embeddings are identical too:
    frame k ties among them, and identical window queries pick the same frame.

    Args:
      windows: [K, 2] the [start, end) fbank window of each pair (`audio.window_table`).

    Returns:
      `{"distinct_windows": int, "r1": percent}`: R@1 = mean over k of 1 / (pairs with k's window).
    """
    w = np.asarray(windows).reshape(len(windows), -1)
    _, inverse, counts = np.unique(w, axis=0, return_inverse=True, return_counts=True)
    return {"distinct_windows": int(len(counts)),
            "r1": float(100.0 * np.mean(1.0 / counts[inverse.reshape(-1)]))}


# ------------------------------------------------------------------------------ offsets


def offset_range(num_pairs: int, max_offset: int = DEFAULT_MAX_OFFSET) -> int:
    """S: the largest offset <= max_offset for which every candidate still covers half the pairs.

    Each candidate is scored on the K - 4S frames [2S, K - 2S) (see `offset_scores`), so
    S = min(max_offset, K // 8); 0 means offsets cannot be scored (K < 8).
    """
    return int(max(0, min(max_offset, num_pairs // 8)))


def offset_scores(pair_sim: np.ndarray, max_offset: int) -> np.ndarray:
    """Mean similarity of every candidate offset, for every clip and true offset.

    True offset s: the video segment is frames [2S, K - 2S) and the audio segment windows
    [S - s, K - S - s), so frame 2S + i belongs with audio-segment position S + i + s. Candidate o
    aligns frame 2S + i with audio position S + i + o (window 2S + i + o - s) and scores the mean
    cosine over the segment's K - 4S frames. Every candidate averages the same number of pairs,
    all inside the audio segment, so no candidate's score is noisier than another's.
    o > 0: a frame is matched with audio that comes o pairs later.

    Args:
      pair_sim: [C, K, K] frame x window similarity (`pair_similarity`).
      max_offset: S, with 1 <= S and K - 4S >= 1.

    Returns:
      [C, 2S+1 (true s = -S..S), 2S+1 (candidate o = -S..S)] float64.
    """
    p = np.asarray(pair_sim, np.float64)
    c, k, _ = p.shape
    big_s = int(max_offset)
    if big_s < 1 or k - 4 * big_s < 1:
        raise ValueError(f"max_offset {max_offset} needs 1 <= S and 4S < K (K = {k})")
    offsets = np.arange(-big_s, big_s + 1)
    frames = np.arange(2 * big_s, k - 2 * big_s)  # [K - 4S]
    out = np.empty((c, len(offsets), len(offsets)))
    for si, s in enumerate(offsets):
        for oi, o in enumerate(offsets):
            out[:, si, oi] = p[:, frames, frames + o - s].mean(axis=1)
    return out


def offset_accuracy(pair_sim: np.ndarray, max_offset: int = DEFAULT_MAX_OFFSET
                    ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Offset classification (2S+1 classes) over every clip and true offset s in -S..S.

    Args:
      pair_sim: [C, K, K] frame x window similarity.
      max_offset: the wanted S; reduced by `offset_range` so that candidates cover half the pairs.

    Returns:
      (metrics, details). metrics: `{"max_offset": S, "scored_pairs": K - 4S, "num_samples",
      "exact", "within1" (percent), "mean_error" (mean predicted - true offset, in pairs),
      "by_offset": {str(s): exact accuracy for true offset s}, "chance": {"exact", "within1"}}`,
      or `{"skipped": reason}`. details: `{"scores": [C, 2S+1, 2S+1], "weights": same,
      "offsets": [2S+1]}`.
    """
    p = np.asarray(pair_sim)
    k = p.shape[1]
    big_s = offset_range(k, max_offset)
    if big_s < 1:
        return {"skipped": f"{k} pair(s) per clip: offsets need at least 8"}, {}
    offsets = np.arange(-big_s, big_s + 1)
    scores = offset_scores(p, big_s)  # [C, s, o]
    w = top_weights(scores)
    err = offsets[None, :] - offsets[:, None]  # [s, o] predicted - true
    exact = np.sum(w * (err == 0), axis=-1)  # [C, s]
    near = np.sum(w * (np.abs(err) <= 1), axis=-1)
    classes = len(offsets)
    metrics = {
        "max_offset": big_s, "scored_pairs": k - 4 * big_s, "num_samples": int(exact.size),
        "exact": float(100.0 * exact.mean()), "within1": float(100.0 * near.mean()),
        "mean_error": round(float(np.mean(np.sum(w * err, axis=-1))), 12) + 0.0,
        "by_offset": {str(int(s)): float(100.0 * exact[:, i].mean())
                      for i, s in enumerate(offsets)},
        "chance": {"exact": 100.0 / classes,
                   "within1": float(100.0 * np.mean(np.abs(err) <= 1))},
    }
    return metrics, {"scores": scores, "weights": w, "offsets": offsets}


# ------------------------------------------------------------------------------ report


def moment_report(audio_emb: np.ndarray, video_emb: np.ndarray, *,
                  times: np.ndarray | None = None, labels: np.ndarray | None = None,
                  sim: np.ndarray | None = None, strategy: retrieval.Strategy = "diagonal_mean",
                  max_offset: int = DEFAULT_MAX_OFFSET, windows: np.ndarray | None = None
                  ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """All moment metrics beside chance: the `moments` entry of `W/eval/retrieval.json`.

    Args:
      audio_emb: [C, K, D] per-pair audio embeddings (not necessarily normalized).
      video_emb: [C, K, D] per-pair video embeddings.
      times: [C, K] pair times in seconds; None uses pair indices (then |dt| is in pairs).
      labels: [C, num_classes] multi-hot labels, or None (in-class retrieval is skipped).
      sim: [C, C] the main retrieval's clip-level similarity (audio rows); computed with
        `strategy` when None.
      strategy: clip-level aggregation for in-class retrieval when `sim` is None.
      max_offset: S for the offset accuracy (reduced for short clips, see `offset_range`).
      windows: [K, 2] the pairs' fbank windows, for the R@1 ceiling (`localization_ceiling`);
        None leaves it out.

    Returns:
      (report, details): report `{"num_clips", "pairs_per_clip", "time_unit", "tie_rule",
      "in_class", "localization", "offset"}`; details for `moments_plot.plot_moments`:
      `{"pair_sim": [C, K, K], "times": [C, K], "f2w_weights", "w2f_weights", "abs_dt"}`.
    """
    a = retrieval._as_pairs(audio_emb, "audio_emb")
    v = retrieval._as_pairs(video_emb, "video_emb")
    if a.shape != v.shape:
        raise ValueError(f"audio {a.shape} and video {v.shape} must have the same shape")
    c, k, _ = a.shape
    unit = "s" if times is not None else "pair"
    t = (np.broadcast_to(default_times(k), (c, k)) if times is None
         else np.asarray(times, np.float64))
    if t.shape != (c, k):
        raise ValueError(f"times must be [C, K] = {(c, k)}; got {t.shape}")
    if sim is None:
        sim = retrieval.similarity(a, v, strategy)
    report: dict[str, Any] = {"num_clips": int(c), "pairs_per_clip": int(k), "time_unit": unit,
                              "tie_rule": TIE_RULE,
                              "in_class": in_class_retrieval(sim, labels)}
    details: dict[str, np.ndarray] = {"times": t}
    if k < 2:
        note = "one pair per clip (eval.middle_frame_only): no moments to tell apart"
        report["localization"] = {"skipped": note}
        report["offset"] = {"skipped": note}
        return report, details
    ps = pair_similarity(a, v)  # [C, K frames, K windows]
    f2w, f2w_d = localization(ps, t)
    w2f, w2f_d = localization(ps.transpose(0, 2, 1), t)
    report["localization"] = {"frame_to_window": f2w, "window_to_frame": w2f,
                              "chance": localization_chance(t)}
    if windows is not None:
        report["localization"]["ceiling"] = localization_ceiling(windows)
    report["offset"], _ = offset_accuracy(ps, max_offset)
    details.update(pair_sim=ps, f2w_weights=f2w_d["weights"], w2f_weights=w2f_d["weights"],
                   abs_dt=f2w_d["abs_dt"])
    return report, details


def format_moments(m: Mapping[str, Any]) -> list[str]:
    """Console lines for a `moment_report`: model beside chance."""
    unit = m.get("time_unit", "s")
    k = m["pairs_per_clip"]
    head = f"moments ({k} pair{'s' if k != 1 else ''} per clip)"
    loc = m.get("localization", {})
    if "skipped" in loc:
        both = m.get("offset", {}).get("skipped") == loc["skipped"]
        lines = [head, f"  localization{' and offsets' if both else ''} skipped: "
                       f"{loc['skipped']}"]
    else:
        lines = [f"{head:28}{'R@1':>9}{'+/-1':>9}{'|dt| ' + unit:>10}"]
        for key, name in (("frame_to_window", "frame->window"), ("window_to_frame",
                                                                 "window->frame"),
                          ("chance", "chance")):
            x = loc[key]
            lines.append(f"  {name:26}{x['r1']:9.1f}{x['within1']:9.1f}{x['mean_abs_dt']:10.2f}")
        if "ceiling" in loc:
            ceil = loc["ceiling"]
            lines.append(f"  {'ceiling':26}{ceil['r1']:9.1f}  ({ceil['distinct_windows']} distinct "
                         "audio windows)")
    off = m.get("offset", {})
    if "skipped" in off and off["skipped"] != loc.get("skipped"):
        lines.append(f"  offset skipped: {off['skipped']}")
    elif off and "skipped" not in off:
        ch = off["chance"]
        lines.append(f"  offset +/-{off['max_offset']} pairs ({off['scored_pairs']} frames "
                     f"scored): exact {off['exact']:.1f} (chance {ch['exact']:.1f}), "
                     f"+/-1 {off['within1']:.1f} (chance {ch['within1']:.1f}), "
                     f"mean error {off['mean_error']:+.2f} pairs")
    ic = m.get("in_class", {})
    if "skipped" in ic:
        excluded = (f" ({ic['num_excluded']} of {ic['num_excluded'] + ic['num_queries']} "
                    "queries excluded)" if "num_excluded" in ic else "")
        lines.append(f"  in-class retrieval skipped: {ic['skipped']}{excluded}")
    elif ic:
        ch = ic["chance"]
        tied = ic["a2v"]["num_tied"] + ic["v2a"]["num_tied"]
        lines.append(f"  in-class retrieval ({ic['num_queries']} queries, "
                     f"{ic['num_excluded']} excluded): A->V R@1 {ic['a2v']['r1']:.1f} MedR "
                     f"{ic['a2v']['medr']:g}, V->A R@1 {ic['v2a']['r1']:.1f} MedR "
                     f"{ic['v2a']['medr']:g} (chance R@1 {ch['r1']:.1f}, MedR {ch['medr']:g})"
                     + (f"; {tied} tied queries count as hits" if tied else ""))
    return lines


# ------------------------------------------------------------------------------ embeddings.npz


def save_embeddings(path: str | os.PathLike, audio: np.ndarray, video: np.ndarray, *,
                    clip_ids: np.ndarray | list[str], clip_index: np.ndarray,
                    labels: np.ndarray | None, times: np.ndarray, frame_k: np.ndarray
                    ) -> pathlib.Path:
    """Writes the per-pair embeddings and what they belong to as one `.npz` (atomically).

    Args:
      path: output file (`W/eval/embeddings.npz`).
      audio: [N, K, D] per-pair audio embeddings, as the model outputs them (not normalized).
      video: [N, K, D] per-pair video embeddings.
      clip_ids: [N] record ids.
      clip_index: [N] record index in the split.
      labels: [N, num_classes] multi-hot, stored as CSR (`label_offsets`, `label_values`), or
        None (no classes).
      times: [N, K] time of each pair in seconds.
      frame_k: [K] which of the record's frames pair k is (0..N-1, or the middle frame only).
    """
    a = np.asarray(audio, np.float32)
    v = np.asarray(video, np.float32)
    n = a.shape[0]
    y = np.zeros((n, 0), bool) if labels is None else np.asarray(labels) > 0.5
    rows, cols = np.nonzero(y)
    offsets = np.zeros(n + 1, np.int64)
    offsets[1:] = np.cumsum(np.bincount(rows, minlength=n))
    payload = {"audio": a, "video": v, "clip_ids": np.asarray(list(clip_ids), dtype=str),
               "clip_index": np.asarray(clip_index, np.int64),
               "label_offsets": offsets, "label_values": cols.astype(np.int32),
               "num_classes": np.int64(y.shape[1]),
               "times": np.asarray(times, np.float32), "frame_k": np.asarray(frame_k, np.int32)}
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.savez(f, **payload)
    os.replace(tmp, path)
    return path


def load_embeddings(path: str | os.PathLike) -> dict[str, Any]:
    """Reads `save_embeddings` output.

    Returns:
      dict: `audio`, `video` [N, K, D] float32; `clip_ids` [N] str; `clip_index` [N] int64;
      `times` [N, K] float32 seconds; `frame_k` [K] int32; `label_offsets` [N+1] int64,
      `label_values` [M] int32 (clip i's classes: values[offsets[i]:offsets[i+1]]);
      `num_classes` int; `labels` [N, num_classes] float32 multi-hot rebuilt from the CSR.
    """
    with np.load(path, allow_pickle=False) as z:
        out: dict[str, Any] = {key: z[key] for key in z.files}
    out["num_classes"] = int(out["num_classes"])
    n = out["audio"].shape[0]
    labels = np.zeros((n, out["num_classes"]), np.float32)
    rows = np.repeat(np.arange(n), np.diff(out["label_offsets"]))
    labels[rows, out["label_values"]] = 1.0
    out["labels"] = labels
    return out
