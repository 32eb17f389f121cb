"""The experiment scripts: the ablation end to end, shrunken, and the ground-truth matchers.

The ablation test runs two variants, one seed, two steps, 12 short clips: it proves the
script's plumbing (data once, train and evaluate through the CLIs, a finished run not redone,
JSON + markdown + plot); the numbers of a real run are in the README.
"""

import importlib.util
import json
import pathlib

import numpy as np
import pytest

from cavmae_jax import audio as audio_lib
from cavmae_jax.evaluate import moments

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _experiment(name: str):
    """experiments/<name>.py as a module (experiments/ is not a package)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "experiments" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _script():
    return _experiment("sync_vs_cavmae")


def test_shrunken_ablation_run(tmp_path, capsys):
    script = _script()
    args = ["--out", str(tmp_path), "--recipe", "configs/demo.py:test", "--steps", "2",
            "--seeds", "0", "--num_clips", "12", "--duration", "3",
            "--variants", "sync,sync_moments"]
    assert script.main(args) == 0
    out = json.loads((tmp_path / "results.json").read_text())
    assert list(out["summary"]) == ["sync", "sync_moments"]
    for variant in ("sync", "sync_moments"):
        row = out["summary"][variant]
        assert row["seeds"] == 1 and row["A->V R@1"]["chance"] == 50.0  # 2 held-out clips
        assert row["frame->window +/-1"] is not None
        run = out["runs"][variant][0]
        assert run["num_clips"] == 2 and "moments" in run and run["train_seconds"] > 0
    table = (tmp_path / "results.md").read_text()
    assert table.splitlines()[0].startswith("| variant | A->V R@1") and "| chance |" in table
    assert (tmp_path / "results.png").stat().st_size > 10_000
    # The moments variant trained with 4 moments per clip, as its config says.
    saved = json.loads((tmp_path / "runs" / "sync_moments_s0" / "config.json").read_text())
    assert saved["data"]["moments_per_clip"] == 4
    # The recipe's unmasked contrast does not leak into the official-objective variants.
    assert saved["model"]["contrastive_unmasked"] is False
    # A rerun redoes nothing: each finished run's report is reused.
    stamp = (tmp_path / "runs" / "sync_s0" / "eval" / "retrieval.json").stat().st_mtime_ns
    assert script.main(args) == 0
    assert (tmp_path / "runs" / "sync_s0" / "eval" / "retrieval.json").stat().st_mtime_ns == stamp


def test_moment_oracle_on_constructed_events(tmp_path, capsys):
    """Two events, one per half of a 10 s clip: identity matching beats presence, both > 0."""
    oracle = _experiment("moment_oracle")
    clips = [{"duration": 10.0, "events": [{"onset": 0.0, "offset": 1.9},
                                           {"onset": 5.0, "offset": 6.9}]}] * 3
    result = oracle.evaluate(clips, num_frames=16, window_length=96)
    ident, pres = result["identity"]["frame_to_window"], result["presence"]["frame_to_window"]
    assert ident["within1"] > pres["within1"]
    assert ident["mean_abs_dt"] < pres["mean_abs_dt"]
    assert result["chance"]["within1"] == pytest.approx(100 * (3 * 16 - 2) / 16 ** 2)
    # The CLI reads a folder written by data_prep.synthetic.
    (tmp_path / "clips.jsonl").write_text("\n".join(json.dumps(c) for c in clips) + "\n")
    assert oracle.main(["--clips", str(tmp_path), "--json", str(tmp_path / "o.json")]) == 0
    assert "identity" in capsys.readouterr().out
    assert json.loads((tmp_path / "o.json").read_text())["identity"]["frame_to_window"]["r1"] > 0


def test_moment_oracle_splits_a_model_by_objects_on_screen(tmp_path, capsys):
    """A perfect model is perfect in every category; the empty-screen share comes from events."""
    oracle = _experiment("moment_oracle")
    clips = [{"id": f"clip_{i:05d}", "duration": 10.0,
              "events": [{"onset": 0.0, "offset": 2.5}, {"onset": 1.0, "offset": 2.5}]}
             for i in range(3)]
    (tmp_path / "clips.jsonl").write_text("\n".join(json.dumps(c) for c in clips) + "\n")
    times = np.tile(np.arange(16) * 10.0 / 16, (3, 1)).astype(np.float32)  # frame k at 0.625 k s
    eye = np.tile(np.eye(16, dtype=np.float32), (3, 1, 1))  # pair k's embeddings = one-hot k
    moments.save_embeddings(tmp_path / "emb.npz", eye, eye, clip_ids=[c["id"] for c in clips],
                            clip_index=np.arange(3), times=times, frame_k=np.arange(16),
                            labels=np.ones((3, 1), np.float32))
    emb = moments.load_embeddings(tmp_path / "emb.npz")
    result = oracle.by_objects_on_screen(clips, emb)
    # Frames at 0, 0.625 s: one object; 1.25, 1.875 s: two; the other 12: none.
    assert result["0"]["share"] == pytest.approx(75.0)
    assert result["1"]["share"] == pytest.approx(12.5)
    assert result["2+"]["share"] == pytest.approx(12.5)
    for cat in ("0", "1", "2+", "all"):
        for direction in ("frame_to_window", "window_to_frame"):
            assert result[cat]["model"][direction] == {"within1": 100.0, "mean_abs_dt": 0.0}
    # The identity matcher cannot tell the 12 empty frames apart: its misses are there.
    assert result["0"]["identity"]["frame_to_window"]["mean_abs_dt"] > 1.0
    # Clips without empty screens have no "0" row (not a row of NaNs).
    full = [dict(c, events=[{"onset": 0.0, "offset": 10.0}]) for c in clips]
    assert set(oracle.by_objects_on_screen(full, emb)) == {"1", "all"}
    assert oracle.main(["--clips", str(tmp_path), "--embeddings", str(tmp_path / "emb.npz")]) == 0
    assert "objects on screen" in capsys.readouterr().out
    with pytest.raises(ValueError, match="not in clips.jsonl"):
        oracle.by_objects_on_screen(clips[:2], emb)


def _probe_clips(n: int, rng: np.random.Generator) -> list[dict]:
    """n clips of 4 static events, 1.5 s each with 1 s gaps, random height/size/lightness/x."""
    clips = []
    for i in range(n):
        events = []
        for onset in (0.1, 2.6, 5.1, 7.6):
            size = float(rng.uniform(0.12, 0.22))
            events.append({"onset": onset, "offset": onset + 1.5, "bounces": [], "vx": 0.0,
                           "vy": 0.0, "size": size, "lightness": float(rng.uniform()),
                           "x0": float(rng.uniform(size, 1 - size)),
                           "y0": float(rng.uniform(size, 1 - size))})
        clips.append({"id": f"clip_{i:05d}", "label": i % 2, "duration": 10.0, "events": events})
    return clips


def test_moment_probe_reads_what_constructed_embeddings_carry(tmp_path, capsys):
    """Frame embeddings that encode (height, size, lightness, x) probe to R^2 ~ 1; window
    embeddings without x probe to ~1 on the rest and ~0 on x; random embeddings to ~0.

    Each attribute a in [0, 1] is a unit pair (cos, sin)(a * pi / 2), so every embedding has
    the same norm and the probe's L2 normalization keeps the code (nearly) linear."""
    probe = _experiment("moment_probe")
    rng = np.random.default_rng(0)
    clips = _probe_clips(40, rng)
    (tmp_path / "clips.jsonl").write_text("\n".join(json.dumps(c) for c in clips) + "\n")
    k = 16

    def code(values):  # [4] in [0, 1] -> [8] of norm 2
        angle = np.asarray(values) * np.pi / 2
        return np.stack([np.cos(angle), np.sin(angle)], -1).reshape(-1)

    times = np.tile(np.arange(k) * 10.0 / k, (len(clips), 1)).astype(np.float32)
    video = np.stack([[code(v) for v in c] for c in rng.uniform(size=(len(clips), k, 4))])
    audio = np.stack([[code(v) for v in c] for c in rng.uniform(size=(len(clips), k, 4))])
    windows = audio_lib.window_table(k, 64) * 0.01  # [K, 2] seconds
    for c, clip in enumerate(clips):
        for j, t in enumerate(times[c]):
            for e in clip["events"]:  # static events: the attributes are constant
                attrs = [e["y0"], (e["size"] - 0.12) / 0.1, e["lightness"], e["x0"]]
                if e["onset"] <= t < e["offset"]:  # on screen at the frame
                    video[c, j] = code(attrs)
                lo, hi = windows[j]
                if min(hi, e["offset"]) - max(lo, e["onset"]) > 0.5 * (hi - lo):  # heard
                    audio[c, j] = code(attrs[:3] + [0.0])  # a mono sound: no x
    video, audio = video.astype(np.float32), audio.astype(np.float32)
    ids = [c["id"] for c in clips]
    for name, rows in (("train", slice(0, 30)), ("test", slice(30, 40))):
        moments.save_embeddings(tmp_path / f"{name}.npz", audio[rows], video[rows],
                                clip_ids=ids[rows], clip_index=np.arange(len(ids))[rows],
                                times=times[rows], frame_k=np.arange(k),
                                labels=np.eye(2, dtype=np.float32)[[c["label"] for c in
                                                                    clips[rows]]])
    train = probe.probe_rows(clips, moments.load_embeddings(tmp_path / "train.npz"), 64)
    test = probe.probe_rows(clips, moments.load_embeddings(tmp_path / "test.npz"), 64)
    assert len(train["frame"][0]) > 200 and len(train["window"][0]) > 100
    frame = probe.probe_r2(train["frame"], test["frame"], 2)
    window = probe.probe_r2(train["window"], test["window"], 2)
    assert np.all(frame > 0.9), frame
    assert np.all(window[:3] > 0.9) and window[3] < 0.3, window
    noise = [(rng.normal(size=x.shape), *rest) for x, *rest in (train["frame"], test["frame"])]
    assert np.all(probe.probe_r2(*noise, 2) < 0.3)
    out = tmp_path / "probe.json"
    assert probe.main(["--clips", str(tmp_path), "--train", str(tmp_path / "train.npz"),
                       "--test", str(tmp_path / "test.npz"), "--json", str(out)]) == 0
    assert "frame embedding" in capsys.readouterr().out
    assert json.loads(out.read_text())["frame"]["r2"]["height"] > 0.9
