"""Retrieval math against brute-force Python-loop references (ties included)."""

import itertools
import math

import numpy as np
import pytest

from cavmae_jax.evaluate import retrieval as R


def _cos(x: np.ndarray, y: np.ndarray) -> float:
    nx = max(math.sqrt(float(np.dot(x, x))), 1e-12)
    ny = max(math.sqrt(float(np.dot(y, y))), 1e-12)
    return float(np.dot(x, y)) / (nx * ny)


def _brute_similarity(a: np.ndarray, v: np.ndarray, strategy: str) -> np.ndarray:
    """The official get_agg_sim_mat definition, one pair at a time, in float64."""
    a, v = a.astype(np.float64), v.astype(np.float64)
    na, k, _ = a.shape
    out = np.empty((na, v.shape[0]))
    for i in range(na):
        for j in range(v.shape[0]):
            if strategy.startswith("diagonal"):
                vals = [_cos(a[i, q], v[j, q]) for q in range(k)]
            else:
                vals = [_cos(a[i, q], v[j, r]) for q, r in itertools.product(range(k), repeat=2)]
            out[i, j] = np.mean(vals) if strategy.endswith("mean") else np.max(vals)
    return out


def _brute_metrics(sim: np.ndarray) -> dict:
    """Rank = position of the true match in the descending row, ties counted in its favour."""
    ranks = []
    for i in range(sim.shape[0]):
        true = sim[i, i]
        ranks.append(1 + sum(1 for j in range(sim.shape[1]) if sim[i, j] > true))
    ranks = sorted(ranks)
    n = len(ranks)
    medr = (ranks[(n - 1) // 2] + ranks[n // 2]) / 2
    return {
        "r1": 100.0 * sum(r <= 1 for r in ranks) / n,
        "r5": 100.0 * sum(r <= 5 for r in ranks) / n,
        "r10": 100.0 * sum(r <= 10 for r in ranks) / n,
        "medr": medr,
    }


def _official_first_hit_ranks(sim: np.ndarray) -> np.ndarray:
    """The official compute_metrics positions, keeping only the first hit per query."""
    sx = np.sort(-sim, axis=1)
    rows, cols = np.nonzero(sx - np.diag(-sim)[:, None] == 0)
    first = np.full(sim.shape[0], -1)
    for r, c in zip(rows[::-1], cols[::-1], strict=True):  # last write wins -> smallest col
        first[r] = c
    return first + 1


def _embeddings(rng, n=24, k=4, d=8, noise=1.5):
    a = rng.normal(size=(n, k, d)).astype(np.float32)
    v = (a + noise * rng.normal(size=a.shape)).astype(np.float32)
    return a, v


@pytest.mark.parametrize("strategy", R.STRATEGIES)
def test_similarity_matches_brute_force(strategy):
    rng = np.random.default_rng(0)
    a, v = _embeddings(rng, n=13, k=4, d=8)
    v = np.concatenate([v, rng.normal(size=(4, 4, 8)).astype(np.float32)])  # Nv != Na
    got = R.similarity(a, v, strategy)
    assert got.shape == (13, 17)
    np.testing.assert_allclose(got, _brute_similarity(a, v, strategy), atol=1e-5)


@pytest.mark.parametrize("strategy", ["diagonal_max", "max"])
def test_similarity_chunking_is_exact(strategy):
    rng = np.random.default_rng(1)
    a, v = _embeddings(rng, n=37, k=3, d=5)
    whole = R.similarity(a, v, strategy)
    tiny_chunks = R.similarity(a, v, strategy, chunk_bytes=1)  # one row per chunk
    # BLAS may pick other kernels per chunk shape: equal up to float32 rounding only.
    np.testing.assert_allclose(whole, tiny_chunks, rtol=0, atol=1e-6)


def test_single_pair_strategies_agree_and_accept_2d():
    rng = np.random.default_rng(2)
    a, v = _embeddings(rng, n=10, k=1, d=6)
    ref = _brute_similarity(a, v, "mean")
    for s in R.STRATEGIES:
        np.testing.assert_allclose(R.similarity(a, v, s), ref, atol=1e-6)
    np.testing.assert_allclose(R.similarity(a[:, 0], v[:, 0]), ref, atol=1e-6)


def test_l2_normalize_unit_norm_and_zero_safe():
    x = np.array([[3.0, 4.0], [0.0, 0.0]], np.float32)
    y = R.l2_normalize(x)
    np.testing.assert_allclose(y, [[0.6, 0.8], [0.0, 0.0]])


def test_similarity_rejects_bad_input():
    a = np.zeros((3, 2, 4))
    with pytest.raises(ValueError, match="strategy"):
        R.similarity(a, a, "median")
    with pytest.raises(ValueError, match="share"):
        R.similarity(a, np.zeros((3, 3, 4)))


def test_metrics_match_brute_force_random():
    rng = np.random.default_rng(3)
    for n in (1, 2, 7, 40, 41):
        sim = rng.normal(size=(n, n))
        sim[np.arange(n), np.arange(n)] += 1.0
        got = R.retrieval_metrics(sim)
        ref = _brute_metrics(sim)
        for key in ref:
            assert got[key] == pytest.approx(ref[key]), (n, key)
        assert got["num_tied"] == 0
        # Without ties, our ranks are exactly the official compute_metrics positions.
        np.testing.assert_array_equal(R.retrieval_ranks(sim), _official_first_hit_ranks(sim))


def test_metrics_with_quantized_ties():
    rng = np.random.default_rng(4)
    n = 60
    sim = rng.integers(0, 4, size=(n, n)).astype(np.float32)  # many exact ties
    got = R.retrieval_metrics(sim)
    ref = _brute_metrics(sim)
    for key in ref:
        assert got[key] == pytest.approx(ref[key]), key
    brute_tied = sum(int(np.sum(sim[i] == sim[i, i]) > 1) for i in range(n))
    assert got["num_tied"] == brute_tied > 0
    # Our rank is the FIRST position where the official code finds the true score.
    np.testing.assert_array_equal(R.retrieval_ranks(sim), _official_first_hit_ranks(sim))
    # The official np.where keeps every tied position: more entries than queries.
    sx = np.sort(-sim, axis=1)
    assert np.count_nonzero(sx - np.diag(-sim)[:, None] == 0) > n


def test_ties_from_duplicated_and_zero_embeddings():
    rng = np.random.default_rng(5)
    a, v = _embeddings(rng, n=12, k=4, d=8, noise=0.3)
    v[3] = v[2]  # duplicated video clip
    a[7] = 0.0  # failed input: all-zero audio -> every score 0 in its row
    v[9] = 0.0
    for strategy in R.STRATEGIES:
        sim = R.similarity(a, v, strategy)
        assert np.all(sim[7] == 0.0) and np.all(sim[:, 9] == 0.0)
        assert R.retrieval_ranks(sim)[7] == 1 + np.sum(sim[7] > 0)  # all tied: optimistic
        for direction in (sim, sim.T):
            got = R.retrieval_metrics(direction)
            ref = _brute_metrics(direction)
            for key in ref:
                assert got[key] == pytest.approx(ref[key]), (strategy, key)


@pytest.mark.parametrize("strategy", R.STRATEGIES)
def test_perfect_embeddings(strategy):
    rng = np.random.default_rng(6)
    a = rng.normal(size=(30, 16, 12)).astype(np.float32)
    if strategy == "mean":
        # `mean` scores <mean_k a_ik, mean_l v_jl>, which is not maximal at j = i for arbitrary
        # K-varying clips; it is when each clip's pairs share one direction.
        a = np.repeat(a[:, :1], 16, axis=1) * rng.uniform(0.5, 2.0, size=(30, 16, 1))
    res = R.evaluate_retrieval(a, a.copy(), strategy)
    for direction in ("a2v", "v2a"):
        assert res[direction] == {"r1": 100.0, "r5": 100.0, "r10": 100.0, "medr": 1.0}


def test_reversed_ranking_worst_case():
    n = 20
    # Each query's true match is the single lowest score in its row.
    sim = np.tile(np.arange(n, 0, -1, dtype=np.float64), (n, 1))
    sim[np.arange(n), np.arange(n)] = -1.0
    got = R.retrieval_metrics(sim)
    assert got["r10"] == 0.0 and got["medr"] == n and got["meanr"] == n


def test_evaluate_contract_and_v2a_is_transpose():
    rng = np.random.default_rng(7)
    a, v = _embeddings(rng, n=25, k=4, d=8, noise=2.0)
    res, det = R.evaluate_retrieval(a, v, "diagonal_max", return_details=True)
    assert set(res) == {"a2v", "v2a", "num_clips", "strategy"}
    assert res["num_clips"] == 25 and res["strategy"] == "diagonal_max"
    for direction in ("a2v", "v2a"):
        assert set(res[direction]) == {"r1", "r5", "r10", "medr"}
        assert all(isinstance(x, float) for x in res[direction].values())
    sim = _brute_similarity(a, v, "diagonal_max")
    np.testing.assert_allclose(det["sim"], sim, atol=1e-5)
    a2v, v2a = _brute_metrics(det["sim"]), _brute_metrics(det["sim"].T)
    for key in a2v:
        assert res["a2v"][key] == pytest.approx(a2v[key])
        assert res["v2a"][key] == pytest.approx(v2a[key])
    # V->A with swapped inputs is A->V of the swapped call (symmetric definitions).
    swapped = R.evaluate_retrieval(v, a, "diagonal_max")
    assert swapped["a2v"] == res["v2a"] and swapped["v2a"] == res["a2v"]
    np.testing.assert_array_equal(det["v2a_ranks"], R.retrieval_ranks(det["sim"].T))


def test_num_clips_keeps_first_n():
    rng = np.random.default_rng(8)
    a, v = _embeddings(rng, n=30, k=4, d=8, noise=2.0)
    res, det = R.evaluate_retrieval(a, v, "diagonal_mean", num_clips=11, return_details=True)
    assert res["num_clips"] == 11 and det["sim"].shape == (11, 11)
    np.testing.assert_allclose(det["sim"], R.similarity(a, v)[:11, :11], atol=1e-6)
    assert res == R.evaluate_retrieval(a[:11], v[:11], "diagonal_mean")
    for bad in (0, 31):
        with pytest.raises(ValueError, match="num_clips"):
            R.evaluate_retrieval(a, v, num_clips=bad)


def test_recall_curve_endpoints():
    ranks = np.array([1, 1, 3, 5])
    curve = R.recall_curve(ranks, 5)
    np.testing.assert_allclose(curve, [50.0, 50.0, 75.0, 75.0, 100.0])


def test_plot_writes_png(tmp_path):
    rng = np.random.default_rng(9)
    a, v = _embeddings(rng, n=20, k=4, d=8)
    res, det = R.evaluate_retrieval(a, v, return_details=True)
    path = R.plot_retrieval(det["sim"], res, tmp_path / "sub" / "retrieval.png")
    assert path.exists()
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image as mpimg

    img = mpimg.imread(path)
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
    assert np.ptp(img[..., :3]) > 0  # not a blank canvas
