"""Moment metrics (cavmae_jax/evaluate/moments.py) on constructed embeddings, against brute-force
loops, plus embeddings.npz and one end-to-end `evaluate` on a random-init tiny model."""

import csv
import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from _procs import ROOT

from cavmae_jax.evaluate import moments as M
from cavmae_jax.evaluate import moments_plot
from cavmae_jax.evaluate import retrieval as R

K = 16
TIMES = np.arange(K) * 0.625  # 16 frames over 10 s


def _times(c: int, k: int = K) -> np.ndarray:
    return np.broadcast_to(np.arange(k) * 10.0 / k, (c, k))


def _perfect(c: int, k: int = K) -> np.ndarray:
    return np.broadcast_to(np.eye(k), (c, k, k)).copy()  # pair k of every clip = one-hot e_k


def _arc(x: np.ndarray, k: int = K) -> np.ndarray:
    """Unit vectors on a quarter circle: cosine falls monotonically with |x - y|."""
    th = np.asarray(x, np.float64) * np.pi / (2 * k)
    return np.stack([np.cos(th), np.sin(th)], axis=-1)


# ------------------------------------------------------------------------------ localization


def test_perfect_pairs_score_100_with_zero_dt():
    a = v = _perfect(5)
    report, _ = M.moment_report(a, v, times=_times(5))
    loc = report["localization"]
    for d in ("frame_to_window", "window_to_frame"):
        assert loc[d] == {"r1": 100.0, "within1": 100.0, "mean_abs_dt": 0.0}
    assert loc["chance"]["r1"] == pytest.approx(100 / K)
    assert loc["chance"]["within1"] == pytest.approx(100 * (3 * K - 2) / K**2)
    assert loc["chance"]["mean_abs_dt"] == pytest.approx(
        np.mean(np.abs(TIMES[:, None] - TIMES[None, :])))
    off = report["offset"]
    assert (off["max_offset"], off["scored_pairs"], off["num_samples"]) == (2, 8, 25)
    assert off["exact"] == off["within1"] == 100.0 and off["mean_error"] == 0.0
    assert off["chance"] == {"exact": 20.0, "within1": pytest.approx(100 * 13 / 25)}
    assert report["time_unit"] == "s" and report["pairs_per_clip"] == K


def test_shuffled_pairs_are_near_chance():
    rng = np.random.default_rng(0)
    c = 3000
    a = _perfect(c)
    v = np.stack([a[i, rng.permutation(K)] for i in range(c)])  # frames in a random order
    report, _ = M.moment_report(a, v, times=_times(c))
    loc = report["localization"]
    for d in ("frame_to_window", "window_to_frame"):
        for key, tol in (("r1", 0.6), ("within1", 1.0), ("mean_abs_dt", 0.05)):
            assert loc[d][key] == pytest.approx(loc["chance"][key], abs=tol), (d, key)
    for off in (report["offset"],  # shuffled pairs, and unrelated random embeddings:
                M.moment_report(*np.random.default_rng(1).normal(size=(2, c, K, 8)))[0]["offset"]):
        assert off["exact"] == pytest.approx(off["chance"]["exact"], abs=1.0)
        assert off["within1"] == pytest.approx(off["chance"]["within1"], abs=1.2)
        assert off["mean_error"] == pytest.approx(0.0, abs=0.05)


def test_audio_one_pair_late():
    """Frame k looks like window k+1: R@1 only where the edge forces it, +/-1 always right,
    every offset predicted one class too high (except at the top edge, which it cannot
    exceed)."""
    c = 3
    a = np.broadcast_to(_arc(np.arange(K)), (c, K, 2))
    v = np.broadcast_to(_arc(np.arange(K) + 1), (c, K, 2))
    report, _ = M.moment_report(a, v, times=_times(c))
    loc = report["localization"]
    for d in ("frame_to_window", "window_to_frame"):
        assert loc[d]["r1"] == pytest.approx(100 / K)  # frame 15 / window 0: the edge
        assert loc[d]["within1"] == 100.0
        assert loc[d]["mean_abs_dt"] == pytest.approx((K - 1) / K * 10 / K)
    off, det = M.offset_accuracy(M.pair_similarity(a, v))
    pred = det["offsets"][np.argmax(det["weights"], axis=-1)]  # [C, s]
    np.testing.assert_array_equal(pred, np.broadcast_to([-1, 0, 1, 2, 2], (c, 5)))
    assert off["by_offset"] == {"-2": 0.0, "-1": 0.0, "0": 0.0, "1": 0.0, "2": 100.0}
    assert off["within1"] == 100.0 and off["mean_error"] == pytest.approx(0.8)


def test_ties_are_split_evenly():
    """Rule: a query whose top score is shared by m candidates counts 1/m of a hit (the expected
    value under random tie-breaking); constant embeddings score exactly chance."""
    w = M.top_weights(np.array([[1.0, 1.0, 0.0, 1.0], [0.0, 2.0, np.nan, 1.0]]))
    np.testing.assert_allclose(w, [[1 / 3, 1 / 3, 0, 1 / 3], [0, 1, 0, 0]])
    # Frame 0 ties windows 0 and 3 (identical audio, as windows clamped at a clip's edge are).
    s = np.zeros((1, 4, 4))
    s[0, np.arange(4), np.arange(4)] = 1.0
    s[0, 0, 3] = 1.0
    m, _ = M.localization(s, np.arange(4.0)[None])
    assert m["r1"] == pytest.approx(100 * (3 + 0.5) / 4)
    assert m["within1"] == pytest.approx(100 * (3 + 0.5) / 4)
    assert m["mean_abs_dt"] == pytest.approx(1.5 / 4)
    const = np.ones((4, K, 3))
    report, _ = M.moment_report(const, const, times=_times(4))
    loc = report["localization"]
    for d in ("frame_to_window", "window_to_frame"):
        for key in ("r1", "within1", "mean_abs_dt"):
            assert loc[d][key] == pytest.approx(loc["chance"][key])
    off = report["offset"]
    assert off["exact"] == pytest.approx(off["chance"]["exact"])
    assert off["within1"] == pytest.approx(off["chance"]["within1"])


def test_ceiling_counts_identical_windows():
    from cavmae_jax import audio

    sync = M.localization_ceiling(audio.window_table(16, 416, 1024))  # 0-3 and 13-15 clamped
    assert sync == {"distinct_windows": 11, "r1": pytest.approx(100 * 11 / 16)}
    assert M.localization_ceiling(audio.window_table(16, 64, 1024))["r1"] == 100.0
    assert M.localization_ceiling(audio.window_table(16, 1024, 1024))["distinct_windows"] == 1
    # A model that embeds each window's content perfectly reaches the ceiling, not 100.
    table = audio.window_table(16, 416, 1024)
    _, content = np.unique(table, axis=0, return_inverse=True)
    one_hot = np.eye(16)[content.reshape(-1)]  # [K, 16]: identical windows, identical vectors
    a = np.concatenate([one_hot, np.zeros((16, 16))], axis=1)[None]
    v = np.concatenate([one_hot, 0.1 * np.eye(16)], axis=1)[None]  # frames differ, orthogonally
    report, _ = M.moment_report(a, v, windows=table)
    loc = report["localization"]
    for d in ("frame_to_window", "window_to_frame"):
        assert loc[d]["r1"] == pytest.approx(loc["ceiling"]["r1"])


def test_localization_matches_brute_force():
    rng = np.random.default_rng(1)
    s = np.round(rng.normal(size=(6, 7, 7)), 0)  # quantized: many ties
    t = np.sort(rng.uniform(0, 10, size=(6, 7)), axis=1)
    m, _ = M.localization(s, t)
    hits, near, dts = [], [], []
    for c in range(6):
        for k in range(7):
            top = [j for j in range(7) if s[c, k, j] == s[c, k].max()]
            hits.append(sum(j == k for j in top) / len(top))
            near.append(sum(abs(j - k) <= 1 for j in top) / len(top))
            dts.append(sum(abs(t[c, j] - t[c, k]) for j in top) / len(top))
    assert m["r1"] == pytest.approx(100 * np.mean(hits))
    assert m["within1"] == pytest.approx(100 * np.mean(near))
    assert m["mean_abs_dt"] == pytest.approx(np.mean(dts))


def test_offset_scores_match_brute_force():
    """Segments: video frames [2S, K-2S), audio windows [S-s, K-S-s); candidate o pairs video
    position i with audio position S + i + o."""
    rng = np.random.default_rng(2)
    p = rng.normal(size=(3, 12, 12))
    big_s, k = 2, 12
    got = M.offset_scores(p, big_s)
    for c in range(3):
        for si, s in enumerate(range(-2, 3)):
            vid = list(range(2 * big_s, k - 2 * big_s))  # frame indices of the video segment
            aud = list(range(big_s - s, k - big_s - s))  # window indices of the audio segment
            for oi, o in enumerate(range(-2, 3)):
                vals = [p[c, vid[i], aud[big_s + i + o]] for i in range(len(vid))]
                assert got[c, si, oi] == pytest.approx(np.mean(vals))


def test_offset_range_and_short_clips():
    assert [M.offset_range(k) for k in (1, 7, 8, 10, 15, 16, 32)] == [0, 0, 1, 1, 1, 2, 2]
    assert M.offset_range(40, max_offset=5) == 5
    rep, _ = M.offset_accuracy(np.zeros((2, 7, 7)))
    assert "skipped" in rep
    one, det = M.moment_report(np.ones((3, 1, 4)), np.ones((3, 1, 4)))
    assert "skipped" in one["localization"] and "skipped" in one["offset"]
    assert moments_plot.plot_moments(det, one, "/nonexistent/x.png") is None


# ------------------------------------------------------------------------------ in-class


def _brute_in_class(sim: np.ndarray, labels: list[set]) -> tuple[list, list]:
    ranks, sizes = [], []
    for i in range(len(labels)):
        cand = [j for j in range(len(labels)) if labels[i] & labels[j]]
        if len(cand) <= 1:
            continue
        ranks.append(1 + sum(sim[i, j] > sim[i, i] for j in cand))
        sizes.append(len(cand))
    return ranks, sizes


def test_in_class_retrieval_chance_and_exclusions():
    # classes: 0 x3 clips, 1 x2, 2 alone, one unlabeled clip, one clip in classes 0 and 1
    sets = [{0}, {0}, {0}, {1}, {1}, {2}, set(), {0, 1}]
    y = np.zeros((len(sets), 3))
    for i, s in enumerate(sets):
        y[i, list(s)] = 1
    rng = np.random.default_rng(3)
    sim = np.round(rng.normal(size=(8, 8)), 1)
    out = M.in_class_retrieval(sim, y)
    ranks, sizes = _brute_in_class(sim, sets)
    assert (out["num_queries"], out["num_excluded"]) == (6, 2)  # clip 5 alone, clip 6 unlabeled
    assert sizes == [4, 4, 4, 3, 3, 6]
    assert out["chance"]["r1"] == pytest.approx(100 * np.mean([1 / c for c in sizes]))
    assert out["chance"]["medr"] == pytest.approx(np.median([(c + 1) / 2 for c in sizes]))
    assert out["mean_candidates"] == pytest.approx(np.mean(sizes))
    assert out["a2v"]["r1"] == pytest.approx(100 * np.mean(np.array(ranks) == 1))
    assert out["a2v"]["medr"] == np.median(ranks)
    ranks_t, _ = _brute_in_class(sim.T, sets)
    assert out["v2a"]["medr"] == np.median(ranks_t)
    # A clip that beats every same-class clip ranks 1 even if other classes score higher.
    sim = np.eye(8) + 5.0 * (y @ y.T == 0)
    assert R.retrieval_metrics(sim)["r1"] < 100.0
    perfect = M.in_class_retrieval(sim, y)
    assert perfect["a2v"]["r1"] == perfect["v2a"]["r1"] == 100.0


def test_in_class_ties_follow_the_main_retrieval():
    y = np.ones((3, 1))
    sim = np.ones((3, 3))  # every candidate ties the true match
    out = M.in_class_retrieval(sim, y)
    assert out["a2v"]["r1"] == 100.0 and out["a2v"]["num_tied"] == 3
    np.testing.assert_array_equal(R.retrieval_ranks(sim), [1, 1, 1])


def test_in_class_skipped_without_labels():
    sim = np.eye(4)
    assert "skipped" in M.in_class_retrieval(sim, None)
    assert "skipped" in M.in_class_retrieval(sim, np.zeros((4, 3)))
    alone = M.in_class_retrieval(sim, np.eye(4))
    assert "skipped" in alone and alone["num_excluded"] == 4
    report, _ = M.moment_report(_perfect(4), _perfect(4), labels=np.eye(4))
    assert "skipped" in report["in_class"] and report["time_unit"] == "pair"
    assert any("in-class retrieval skipped" in ln for ln in M.format_moments(report))


def test_in_class_uses_the_retrieval_similarity():
    rng = np.random.default_rng(4)
    a, v = rng.normal(size=(10, 4, 6)), rng.normal(size=(10, 4, 6))
    y = np.eye(2)[np.arange(10) % 2]
    for strategy in R.STRATEGIES:
        report, _ = M.moment_report(a, v, labels=y, strategy=strategy)
        want = M.in_class_retrieval(R.similarity(a, v, strategy), y)
        assert report["in_class"] == want


# ------------------------------------------------------------------------------ outputs


def test_embeddings_round_trip(tmp_path):
    rng = np.random.default_rng(5)
    a = rng.normal(size=(3, K, 8)).astype(np.float32)
    v = rng.normal(size=(3, K, 8))
    labels = np.array([[1, 0, 1, 0], [0, 0, 0, 0], [0, 0, 0, 1]], np.float32)
    ids = ["clip_a", "sub/clïp_b", "c"]
    path = M.save_embeddings(tmp_path / "eval" / "embeddings.npz", a, v, clip_ids=ids,
                             clip_index=[4, 0, 2], labels=labels, times=_times(3),
                             frame_k=np.arange(K))
    z = M.load_embeddings(path)
    np.testing.assert_array_equal(z["audio"], a)
    assert z["video"].dtype == np.float32 and np.allclose(z["video"], v)
    assert list(z["clip_ids"]) == ids
    np.testing.assert_array_equal(z["clip_index"], [4, 0, 2])
    np.testing.assert_array_equal(z["label_offsets"], [0, 2, 2, 3])
    np.testing.assert_array_equal(z["label_values"], [0, 2, 3])
    assert z["num_classes"] == 4
    np.testing.assert_array_equal(z["labels"], labels)
    np.testing.assert_allclose(z["times"], _times(3))
    np.testing.assert_array_equal(z["frame_k"], np.arange(K))
    assert not list(tmp_path.glob("eval/*.tmp"))
    none = M.load_embeddings(M.save_embeddings(tmp_path / "n.npz", a, a, clip_ids=ids,
                                               clip_index=[0, 1, 2], labels=None,
                                               times=_times(3), frame_k=np.arange(K)))
    assert none["labels"].shape == (3, 0)


def test_plot_writes_png(tmp_path):
    rng = np.random.default_rng(6)
    report, details = M.moment_report(rng.normal(size=(6, K, 4)), rng.normal(size=(6, K, 4)),
                                      times=_times(6))
    path = moments_plot.plot_moments(details, report, tmp_path / "moments.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_pair_times_from_the_record():
    from cavmae_jax.data import pipeline

    rec = {"num_frames": 4, "source_frame_index": np.array([0, 24, 49, 74]),
           "source": {"fps": 25.0, "start_s": 0.0}, "num_fbank_frames": 1000}
    np.testing.assert_allclose(pipeline.pair_times(rec), [0, 0.96, 1.96, 2.96], atol=1e-6)
    seg = dict(rec, source={"fps": 25.0, "start_s": 10.0},
               source_frame_index=np.array([250, 274, 299, 324]))
    np.testing.assert_allclose(pipeline.pair_times(seg), [0, 0.96, 1.96, 2.96], atol=1e-5)
    # Unknown frame positions (pre-extracted frames, stills): N frames spread over the clip.
    unknown = dict(rec, source_frame_index=np.full(4, -1), source={"fps": 0.0})
    np.testing.assert_allclose(pipeline.pair_times(unknown), [0, 2.5, 5, 7.5])
    short = dict(unknown, num_fbank_frames=300)
    np.testing.assert_allclose(pipeline.pair_times(short), [0, 0.75, 1.5, 2.25])


def test_clip_ids_survive_the_gather_encoding():
    from cavmae_jax.evaluate import run

    ids = np.array(["a", "sub/clïp_0001", "x" * 40])
    codes = run._encode_ids(ids)
    assert codes.dtype == np.uint8 and codes.shape == (3, run._ID_BYTES)
    np.testing.assert_array_equal(run._decode_ids(codes), ids)


# ------------------------------------------------------------------------------ end to end


@pytest.fixture(scope="module")
def labelled_data(tmp_path_factory) -> pathlib.Path:
    """8 synthetic 3 s clips in one split; even clips class `a`, odd clips classes `b` and `c`."""
    root = tmp_path_factory.mktemp("moments_data")
    run = dict(cwd=ROOT, check=True, capture_output=True)
    subprocess.run([sys.executable, "-m", "data_prep.synthetic", "--output", str(root / "clips"),
                    "--num_clips", "8", "--seed", "1", "--duration", "3", "--size", "64", "64",
                    "--no_progress"], **run)
    with open(root / "labels.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "labels"])
        for i in range(8):
            w.writerow([f"clip_{i:05d}", "a" if i % 2 == 0 else "b;c"])
    subprocess.run([sys.executable, "-m", "data_prep.convert", "--input", str(root / "clips"),
                    "--output", str(root / "data"), "--labels", str(root / "labels.csv"),
                    "--no_progress"], **run)
    return root / "data"


def test_evaluate_writes_moments_and_embeddings(labelled_data, tmp_path, capsys):
    """A random-init demo:test model through `evaluate`: retrieval.json gains `moments`,
    embeddings.npz reproduces both the official numbers and the moments without the model."""
    import jax

    from cavmae_jax import config as config_lib
    from cavmae_jax.evaluate import run
    from cavmae_jax.models import init_model_params
    from cavmae_jax.train import checkpoint
    from cavmae_jax.train.run import build_model
    from configs import demo

    c = demo.get_config("test")
    c.data.dir = str(labelled_data)
    cfg = config_lib.build(c)
    params = init_model_params(build_model(cfg), jax.random.PRNGKey(0))
    checkpoint.save_params(tmp_path / "params", jax.device_get(params),
                           {"config": cfg.to_dict()})
    out = tmp_path / "eval"
    report = run.evaluate(tmp_path / "params", "retrieval", split="train", output=out)
    printed = capsys.readouterr().out
    assert "moments (16 pairs per clip)" in printed and "frame->window" in printed

    saved = json.loads((out / "retrieval.json").read_text())
    m = saved["moments"]
    assert (m["num_clips"], m["pairs_per_clip"], m["time_unit"]) == (8, 16, "s")
    assert m["in_class"]["num_queries"] == 8 and m["in_class"]["num_excluded"] == 0
    assert m["in_class"]["chance"]["r1"] == 25.0  # 4 same-class clips per query
    assert set(m["localization"]) == {"frame_to_window", "window_to_frame", "chance", "ceiling"}
    assert m["localization"]["ceiling"] == {"distinct_windows": 16, "r1": 100.0}  # L = 64
    assert m["offset"]["max_offset"] == 2
    assert (out / "moments.png").exists() and (out / "retrieval.png").exists()

    z = M.load_embeddings(out / "embeddings.npz")
    assert z["audio"].shape[:2] == (8, 16) and z["audio"].dtype == np.float32
    assert list(z["clip_ids"]) == [f"clip_{i:05d}" for i in range(8)]
    np.testing.assert_array_equal(z["clip_index"], np.arange(8))
    np.testing.assert_array_equal(z["frame_k"], np.arange(16))
    assert z["times"].shape == (8, 16) and (np.diff(z["times"], axis=1) > 0).all()
    assert 0 <= z["times"].min() and z["times"].max() < 3.0  # frame times of 3 s clips
    assert (z["labels"].sum(1) == np.where(np.arange(8) % 2, 2, 1)).all()
    # Everything is reproducible from the file alone.
    official = R.evaluate_retrieval(z["audio"], z["video"], saved["strategy"])
    assert official["a2v"] == saved["a2v"] and official["v2a"] == saved["v2a"]
    from cavmae_jax import audio

    again, _ = M.moment_report(z["audio"], z["video"], times=z["times"], labels=z["labels"],
                               strategy=saved["strategy"], windows=audio.window_table(16, 64))
    assert json.loads(json.dumps(again)) == m
    assert report["moments"] == m
