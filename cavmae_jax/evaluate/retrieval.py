"""Audio-visual retrieval scoring: aggregated similarity, recall@k and median rank.

The protocol follows the official CAV-MAE / CAV-MAE Sync `retrieval.py`: every clip
contributes K per-pair embeddings (K = 16 aligned audio-window / video-frame pairs for Sync, K = 1
for CAV-MAE's middle frame), embeddings are L2-normalized, a full (audio x video) similarity matrix
is built over the pool, rows are queries and the diagonal is the ground truth. A->V ranks the rows
of `sim`; V->A ranks the rows of `sim.T`.

Everything here is host-side numpy: it is a few matmuls over at most a few thousand clips (BLAS on
the host is as fast as XLA's CPU backend for this, needs no device transfer, and keeps the metrics
bit-stable). All functions are vectorized; the only Python loops run over row *chunks* (to bound
memory for the all-pairs strategies), never over clip pairs.
"""

from __future__ import annotations

import os
import pathlib
import typing
from collections.abc import Mapping
from typing import Any, Literal

import numpy as np

Strategy = Literal["diagonal_mean", "diagonal_max", "mean", "max"]
STRATEGIES: tuple[str, ...] = typing.get_args(Strategy)  # the one list of aggregations

# Peak size of one chunk's intermediate block in `similarity` (the K x K strategies).
_DEFAULT_CHUNK_BYTES = 256 * 2**20


def l2_normalize(x: np.ndarray, axis: int = -1, eps: float = 1e-12) -> np.ndarray:
    """Returns `x / max(||x||, eps)` along `axis`, as `torch.nn.functional.normalize` does.

    The eps clamp (not an additive eps) keeps all-zero embeddings at zero instead of NaN, which is
    what the official code does for clips whose inputs failed to load.
    """
    x = np.asarray(x)
    x = x.astype(np.result_type(x.dtype, np.float32), copy=False)
    norm = np.sqrt(np.sum(np.square(x), axis=axis, keepdims=True))
    return x / np.maximum(norm, eps)


def _as_pairs(x: np.ndarray, name: str) -> np.ndarray:
    """Accepts (N, D) as (N, 1, D); checks for (N, K, D)."""
    x = np.asarray(x)
    if x.ndim == 2:
        x = x[:, None, :]
    if x.ndim != 3:
        raise ValueError(f"{name} must be (N, K, D) or (N, D); got shape {x.shape}")
    return x


def _row_chunk(n_rows: int, bytes_per_row: int, chunk_bytes: int) -> int:
    return int(max(1, min(n_rows, chunk_bytes // max(bytes_per_row, 1))))


def similarity(
    audio_emb: np.ndarray,
    video_emb: np.ndarray,
    strategy: Strategy = "diagonal_mean",
    *,
    normalize: bool = True,
    chunk_bytes: int = _DEFAULT_CHUNK_BYTES,
) -> np.ndarray:
    """Clip-level cosine similarity from per-pair embeddings, audio clips as rows.

    Args:
      audio_emb: [Na, K, D] per-pair audio embeddings ((Na, D) is read as K = 1).
      video_emb: [Nv, K, D] per-pair video embeddings (same K and D).
      strategy: how the K x K pair cosines of clips (i, j) become one score, as the official
        `get_agg_sim_mat`:
        `diagonal_mean`: mean_k cos(a_ik, v_jk) (the released Sync protocol);
        `diagonal_max`: max_k cos(a_ik, v_jk);
        `mean`: mean over all k, l of cos(a_ik, v_jl) (= dot of the clips' mean pair vectors;
          not a cosine itself, so a clip need not score highest against its own copy);
        `max`: max over all k, l of cos(a_ik, v_jl).
        With K = 1 all four equal the plain cosine (CAV-MAE's `get_sim_mat`).
      normalize: L2-normalize each pair embedding first (set False if already normalized).
      chunk_bytes: peak size of the per-chunk intermediate for `diagonal_max` and `max`.

    Returns:
      [Na, Nv] similarity matrix, float32 (float64 if the inputs are float64).
    """
    a = _as_pairs(audio_emb, "audio_emb")  # [Na, K, D]
    v = _as_pairs(video_emb, "video_emb")  # [Nv, K, D]
    if a.shape[1:] != v.shape[1:]:
        raise ValueError(f"audio {a.shape} and video {v.shape} must share (K, D)")
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; expected one of {STRATEGIES}")
    if normalize:
        a, v = l2_normalize(a), l2_normalize(v)
    dtype = np.result_type(a.dtype, v.dtype, np.float32)
    a, v = a.astype(dtype, copy=False), v.astype(dtype, copy=False)
    na, k, d = a.shape
    nv = v.shape[0]

    if strategy == "diagonal_mean":
        # sum_k <a_ik, v_jk> is one dot product of the flattened (K*D) vectors.
        return (a.reshape(na, k * d) @ v.reshape(nv, k * d).T) / k  # [Na, Nv]
    if strategy == "mean":
        # mean_{k,l} <a_ik, v_jl> = <mean_k a_ik, mean_l v_jl>: bilinearity, no K x K block.
        return a.mean(axis=1) @ v.mean(axis=1).T  # [Na, Nv]

    out = np.empty((na, nv), dtype=dtype)
    itemsize = np.dtype(dtype).itemsize
    if strategy == "diagonal_max":
        vt = v.transpose(1, 2, 0)  # [K, D, Nv]
        step = _row_chunk(na, k * nv * itemsize, chunk_bytes)
        for s in range(0, na, step):
            ac = a[s : s + step].transpose(1, 0, 2)  # [K, c, D]
            out[s : s + step] = np.matmul(ac, vt).max(axis=0)  # [K, c, Nv] -> [c, Nv]
        return out

    # strategy == "max": all K x K pairs, chunked over audio rows.
    vf = v.reshape(nv * k, d).T  # [D, Nv*K]
    step = _row_chunk(na, k * nv * k * itemsize, chunk_bytes)
    for s in range(0, na, step):
        ac = a[s : s + step]  # [c, K, D]
        c = ac.shape[0]
        block = (ac.reshape(c * k, d) @ vf).reshape(c, k, nv, k)  # [c, K, Nv, K]
        # Reducing the strided K axis first, then the contiguous one, is ~3x faster than (1, 3).
        out[s : s + step] = block.max(axis=1).max(axis=-1)
    return out


def retrieval_ranks(sim: np.ndarray) -> np.ndarray:
    """1-based rank of the true match (the diagonal) for every row query.

    Tie rule: rank = 1 + number of candidates scoring *strictly* higher than the true match, i.e.
    ties resolve in favour of the true match. This is the first position at which the official
    `compute_metrics` finds the diagonal score in the sorted row. The official code then keeps
    *every* position holding that score (`np.where(sorted - diag == 0)`), so a query with ties
    contributes several entries and the denominator exceeds the number of queries (e.g.
    identical embeddings from all-zero fallback inputs). We keep exactly one rank per query.
    Without ties both definitions agree exactly. Note the optimism: a degenerate query whose row is
    all ties (an all-zero embedding) ranks 1, as its first official entry does too;
    `retrieval_metrics` reports `num_tied` so that such cases are visible.

    Args:
      sim: [Nq, Nc] scores, Nc >= Nq; row i's true match is column i.

    Returns:
      [Nq] int64 ranks in 1..Nc.
    """
    sim = np.asarray(sim)
    if sim.ndim != 2 or sim.shape[1] < sim.shape[0]:
        raise ValueError(f"sim must be (Nq, Nc) with Nc >= Nq; got {sim.shape}")
    nq = sim.shape[0]
    true = sim[np.arange(nq), np.arange(nq)][:, None]  # [Nq, 1]
    return 1 + np.sum(sim > true, axis=1, dtype=np.int64)  # [Nq]


def metrics_from_ranks(ranks: np.ndarray, ks: tuple[int, ...] = (1, 5, 10)) -> dict[str, float]:
    """Recall@k in percent, median and mean rank (1-based) from per-query ranks."""
    ranks = np.asarray(ranks)
    out = {f"r{k}": float(100.0 * np.mean(ranks <= k)) for k in ks}
    out["medr"] = float(np.median(ranks))
    out["meanr"] = float(np.mean(ranks))
    return out


def retrieval_metrics(sim: np.ndarray, ks: tuple[int, ...] = (1, 5, 10)) -> dict[str, float]:
    """Recall@k (percent), median rank and mean rank for row queries against the diagonal.

    See `retrieval_ranks` for the tie rule. Also reports `num_queries` and `num_tied` (queries whose
    true-match score is shared by another candidate: the queries on which the official code would
    over-count; nonzero usually means degenerate embeddings).
    """
    sim = np.asarray(sim)
    ranks = retrieval_ranks(sim)
    out = metrics_from_ranks(ranks, ks)
    nq = sim.shape[0]
    true = sim[np.arange(nq), np.arange(nq)][:, None]  # [Nq, 1]
    out["num_queries"] = nq
    out["num_tied"] = int(np.sum(np.sum(sim == true, axis=1) > 1))
    return out


_CONTRACT_KEYS = ("r1", "r5", "r10", "medr")


def evaluate_retrieval(
    audio_emb: np.ndarray,
    video_emb: np.ndarray,
    strategy: Strategy = "diagonal_mean",
    num_clips: int | None = None,
    *,
    return_details: bool = False,
) -> dict[str, Any] | tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Scores both directions and returns the `W/eval/retrieval.json` payload.

    Args:
      audio_emb: [N, K, D] (or [N, D]) audio embeddings, clip i paired with video clip i.
      video_emb: [N, K, D] (or [N, D]) video embeddings.
      strategy: see `similarity`.
      num_clips: keep only the FIRST `num_clips` clips (the official `--nums_samples`, which
        slices the datafile). Must be in 1..N; None keeps all.
      return_details: also return `{"sim": [n, n], "a2v_ranks": [n], "v2a_ranks": [n]}` for plots.

    Returns:
      `{"a2v": {"r1","r5","r10","medr"}, "v2a": {...}, "num_clips": n, "strategy": strategy}`
      with recalls in percent and 1-based median rank; plus the details dict if asked.
    """
    a = _as_pairs(audio_emb, "audio_emb")
    v = _as_pairs(video_emb, "video_emb")
    if a.shape[0] != v.shape[0]:
        raise ValueError(f"audio ({a.shape[0]}) and video ({v.shape[0]}) clip counts differ")
    n = a.shape[0]
    if num_clips is not None:
        if not 1 <= num_clips <= n:
            raise ValueError(f"num_clips={num_clips} must be in 1..{n}")
        a, v, n = a[:num_clips], v[:num_clips], num_clips
    sim = similarity(a, v, strategy)  # [n, n]
    ranks_a2v = retrieval_ranks(sim)
    ranks_v2a = retrieval_ranks(sim.T)
    m_a2v, m_v2a = metrics_from_ranks(ranks_a2v), metrics_from_ranks(ranks_v2a)
    result = {
        "a2v": {key: m_a2v[key] for key in _CONTRACT_KEYS},
        "v2a": {key: m_v2a[key] for key in _CONTRACT_KEYS},
        "num_clips": int(n),
        "strategy": strategy,
    }
    if return_details:
        return result, {"sim": sim, "a2v_ranks": ranks_a2v, "v2a_ranks": ranks_v2a}
    return result


def recall_curve(ranks: np.ndarray, num_candidates: int) -> np.ndarray:
    """[num_candidates] recall@k in percent for k = 1..num_candidates."""
    counts = np.bincount(np.asarray(ranks) - 1, minlength=num_candidates)[:num_candidates]
    return 100.0 * np.cumsum(counts) / max(len(ranks), 1)


def plot_retrieval(
    sim: np.ndarray, metrics: Mapping[str, Any] | None, path: str | pathlib.Path
) -> pathlib.Path:
    """Writes a PNG: the similarity matrix and recall@k curves for A->V and V->A.

    Args:
      sim: [N, N] audio-row similarity matrix (from `similarity` or the details of
        `evaluate_retrieval`).
      metrics: the `evaluate_retrieval` result (used for the titles); None to omit.
      path: output file.
    """
    # An explicit Figure renders with the Agg canvas and leaves pyplot's global backend alone.
    from matplotlib.figure import Figure

    sim = np.asarray(sim)
    n = sim.shape[1]
    ks = np.arange(1, n + 1)
    fig = Figure(figsize=(12, 5))
    ax0, ax1 = fig.subplots(1, 2)
    im = ax0.imshow(sim, cmap="viridis", interpolation="nearest", aspect="auto")
    fig.colorbar(im, ax=ax0, fraction=0.046, pad=0.04)
    ax0.set_xlabel("video clip")
    ax0.set_ylabel("audio clip (query for A→V)")
    title = "similarity"
    if metrics is not None:
        title += f" ({metrics.get('strategy', '?')}, N={metrics.get('num_clips', sim.shape[0])})"
    ax0.set_title(title)

    for name, s in (("a2v", sim), ("v2a", sim.T)):
        label = "A→V" if name == "a2v" else "V→A"
        if metrics is not None and name in metrics:
            m = metrics[name]
            label += (
                f"  R@1 {m['r1']:.1f}  R@5 {m['r5']:.1f}  R@10 {m['r10']:.1f}  MedR {m['medr']:g}"
            )
        ax1.plot(ks, recall_curve(retrieval_ranks(s), n), label=label)
    ax1.plot(ks, 100.0 * ks / n, "k:", lw=1, label="chance")
    ax1.set_xscale("log")
    ax1.set_xlim(1, max(n, 2))
    ax1.set_ylim(0, 102)  # headroom so a 100% curve stays visible
    ax1.set_xlabel("k")
    ax1.set_ylabel("recall@k (%)")
    ax1.set_title("recall@k")
    ax1.grid(True, which="both", alpha=0.3)
    ax1.legend(loc="lower right", fontsize=8)
    return save_figure(fig, path)


def save_figure(fig: Any, path: str | os.PathLike) -> pathlib.Path:
    """Lays out a matplotlib Figure and writes it as a PNG (parent folders made); returns path."""
    fig.tight_layout()
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path
