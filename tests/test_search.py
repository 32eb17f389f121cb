"""Moment search (cavmae_jax.search): segmentation, index, queries both ways, report, CLI.

One module-wide setup: two 25 s synthetic videos (one with a hostile file name), a 16 s
audio-only file and a broken file, indexed once with a freshly initialized tiny Sync model
(configs/demo.py:test, saved as a params directory). An untrained model still maps identical
inputs to identical embeddings, so an exact piece of an indexed file must come back first,
at its own time.
"""

import json
import os
import pathlib
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
import soundfile as sf
from _procs import ROOT, env, run_cli

from cavmae_jax import config as config_lib
from cavmae_jax import video
from cavmae_jax.models import init_model_params
from cavmae_jax.search import (
    Embedder,
    Index,
    IndexMismatch,
    NotAnIndex,
    Searcher,
    audio_query,
    build_index,
    image_query,
    iter_segments,
    video_query,
    write_report,
)
from cavmae_jax.search.embed import describe_mismatch
from cavmae_jax.train import checkpoint
from cavmae_jax.train.run import build_model, resolve_config
from configs import demo

ODD = '<b>&"x".mp4'
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _save_params(path: pathlib.Path, seed: int) -> pathlib.Path:
    """A params directory of the tiny test model with seeded random weights (no init run:
    the model's real init costs many seconds of compilation)."""
    cfg = config_lib.build(demo.get_config("test"))
    model = build_model(resolve_config(cfg, {}, 1))
    shapes = jax.eval_shape(lambda: init_model_params(model, jax.random.PRNGKey(0)))
    rng = np.random.default_rng(seed)

    def fill(path, s):
        if jax.tree_util.keystr(path).endswith("['scale']"):
            return np.ones(s.shape, s.dtype)
        return (0.05 * rng.standard_normal(s.shape)).astype(s.dtype)

    params = jax.tree_util.tree_map_with_path(fill, shapes)
    checkpoint.save_params(path, params, {"config": cfg.to_dict()})
    return path


def _write_mute_video(path: pathlib.Path, seconds: int = 12, fps: int = 10) -> None:
    """A video without a sound track: a bright bar moving down a grey frame."""
    import av

    with av.open(str(path), "w") as c:
        stream = c.add_stream("libx264", rate=fps)
        stream.width = stream.height = 64
        stream.pix_fmt = "yuv420p"
        for i in range(seconds * fps):
            img = np.full((64, 64, 3), 60 + i % 120, np.uint8)
            img[(2 * i) % 64] = 255
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(packet)
        for packet in stream.encode():
            c.mux(packet)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("search")
    subprocess.run([sys.executable, "-m", "data_prep.synthetic", "--output", str(root / "gen"),
                    "--num_clips", "2", "--seed", "3", "--duration", "25", "--size", "64", "64",
                    "--no_progress"], cwd=ROOT, check=True, capture_output=True)
    media = root / "media"
    media.mkdir()
    shutil.copy(root / "gen" / "clip_00000.mp4", media / "a.mp4")
    shutil.copy(root / "gen" / "clip_00001.mp4", media / ODD)
    t = np.arange(16 * 16000) / 16000.0
    tone = 0.3 * np.sin(2 * np.pi * (300 + 40 * t) * t) * (0.6 + 0.4 * np.sin(2 * np.pi * t))
    sf.write(media / "tone.wav", tone.astype(np.float32), 16000, subtype="PCM_16")
    (media / "broken.mp4").write_bytes(b"this is not a video" * 100)
    _write_mute_video(media / "mute.mp4")
    params = _save_params(root / "params", 0)
    other = _save_params(root / "other_params", 1)
    embedder = Embedder.from_checkpoint(params)
    summary = build_index(embedder, media, root / "idx", progress=False, say=lambda s: None)
    return {"root": root, "media": media, "params": params, "other": other, "embedder": embedder,
            "index": root / "idx", "summary": summary}


@pytest.fixture(scope="module")
def searcher(setup):
    return Searcher(setup["index"], setup["embedder"])


def _rows(index: Index, name: str) -> np.ndarray:
    f = next(f for f in index.files if f["name"] == name)
    return np.asarray(index.moments[f["first"]:f["first"] + f["count"]])


def test_long_video_is_cut_into_consecutive_segments(setup):
    spec = setup["embedder"].spec
    segs = list(iter_segments(setup["media"] / "a.mp4", spec))
    assert [s.start_s for s in segs] == [0.0, 10.0, 20.0]
    info = video.probe(setup["media"] / "a.mp4")
    for s in segs:
        assert s.audio.shape == (16, spec.window_length, 128) and s.frames.shape[0] == 16
        # Frame k of segment j: the official index within the segment, offset by j*fps*10.
        start_frame = round(s.index * info.fps * 10)
        expect = video.official_frame_indices(info.frame_count - start_frame, info.fps, 16, 10.0,
                                              start_frame)
        np.testing.assert_array_equal(s.frame_index, expect)
        np.testing.assert_allclose(s.times, expect / info.fps)
        assert np.all(np.diff(s.times) > 0) and s.start_s <= s.times[0] < s.start_s + 10
    assert segs[2].duration_s == pytest.approx(5.0, abs=0.05)
    # The 16 s audio-only file: segments at 0 and 10 s, pair k at k * 10 / 16 s, no frames.
    tone = list(iter_segments(setup["media"] / "tone.wav", spec))
    assert [s.start_s for s in tone] == [0.0, 10.0] and tone[0].frames is None
    np.testing.assert_allclose(tone[1].times, 10 + np.arange(16) * 10 / 16)


def test_index_holds_every_moment_with_its_time(setup):
    s, index = setup["summary"], Index(setup["index"])
    assert sorted(s.processed) == sorted(["a.mp4", ODD, "tone.wav", "mute.mp4"])
    assert [f for f, _ in s.failed] == ["broken.mp4"] and "FFmpeg" in s.failed[0][1]
    assert len(index) == 16 * (3 + 3 + 2 + 1) == s.moments
    assert index.audio.dtype == np.float16 and isinstance(index.audio, np.memmap)
    a = _rows(index, "a.mp4")
    assert list(np.unique(a["segment"])) == [0, 1, 2] and np.all(np.diff(a["time"]) > 0)
    assert a["time"][16] == pytest.approx(10.0) and a["win_start"][16] == pytest.approx(10.0)
    assert not _rows(index, "tone.wav")["has_video"].any() and a["has_video"].all()
    mute = _rows(index, "mute.mp4")  # no sound track: picture-only moments
    assert mute["has_video"].all() and not mute["has_audio"].any() and a["has_audio"][:32].all()
    assert not a["has_audio"][-4:].any()  # the short last segment: windows past its sound
    np.testing.assert_allclose(mute["time"], video.official_frame_indices(120, 10.0) / 10.0)
    manifest = json.loads((setup["index"] / "manifest.json").read_text())
    assert manifest["identity"]["inputs"]["jpeg_quality"] == 75
    assert manifest["failures"][0]["name"] == "broken.mp4"


def test_sound_finds_its_own_moment(setup, searcher):
    """An exact window of an indexed file: sound->sound returns that file at that window."""
    row = _rows(searcher.index, ODD)[16 + 8]  # segment 1, pair 8
    q = audio_query(setup["embedder"], setup["media"] / ODD, row["win_start"], row["win_end"])
    assert not q.padded
    hit = searcher.search(q, top=5)["by_sound"].hits[0]
    assert hit.file == ODD and hit.score > 0.99
    assert hit.time == hit.window[0] == pytest.approx(row["win_start"], abs=0.65)
    assert hit.pair == pytest.approx(8, abs=1) and hit.segment == 1


def _distinct(index: Index, rows: slice) -> int:
    """The row in `rows` whose picture is least like any other moment's (synthetic clips have
    stretches of identical empty frames, which no search can tell apart)."""
    v = np.asarray(index.video, np.float32)
    sims = v[rows] @ v.T
    for i in range(sims.shape[0]):
        sims[i, rows.start + i] = -1
    return rows.start + int(np.argmin(sims.max(1)))


def test_picture_finds_its_own_moment(setup, searcher, tmp_path):
    first = _rows_index(searcher.index, "a.mp4").start
    r = _distinct(searcher.index, slice(first + 32, first + 48))  # the short last segment
    row = searcher.index.moments[r]
    with video.FrameStream(setup["media"] / "a.mp4") as stream:
        frame = stream.take([int(row["frame"])])[int(row["frame"])]
    frame.save(tmp_path / "still.png")
    results = searcher.search(image_query(setup["embedder"], tmp_path / "still.png"), top=5)
    hit = results["by_picture"].hits[0]
    assert hit.file == "a.mp4" and hit.score > 0.99
    assert hit.time == pytest.approx(row["time"], abs=0.65)
    assert results["by_sound"].hits  # picture -> sound runs too
    # A video moment: its frame finds itself by picture.
    vq = video_query(setup["embedder"], setup["media"] / "a.mp4", float(row["time"]))
    hits = searcher.search(vq, top=3)
    assert hits["by_picture"].hits[0].file == "a.mp4"
    assert hits["by_picture"].hits[0].time == pytest.approx(row["time"], abs=0.65)
    assert vq.audio is not None and hits["by_sound"].hits


def test_hits_merge_nearby_moments_and_skip_missing_sides(searcher):
    scores = searcher.scores(searcher.index.audio[40].astype(np.float32), "video")
    assert np.isneginf(scores[_rows_index(searcher.index, "tone.wav")]).all()
    by_sound = searcher.scores(searcher.index.audio[40].astype(np.float32), "audio")
    assert np.isneginf(by_sound[_rows_index(searcher.index, "mute.mp4")]).all()
    hits = searcher.rank(scores, top=10, merge_s=5.0)
    for i, h in enumerate(hits):
        assert all(not (g.file_id == h.file_id and abs(g.time - h.time) <= 5.0)
                   for g in hits[:i])
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def _rows_index(index: Index, name: str) -> slice:
    f = next(f for f in index.files if f["name"] == name)
    return slice(f["first"], f["first"] + f["count"])


def test_short_sound_is_padded_and_said(setup):
    q = audio_query(setup["embedder"], setup["media"] / "tone.wav", 1.0, 1.3)
    assert q.padded and "zero-padded" in q.notes[0]


def test_reindex_processes_only_new_or_changed_files(setup, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(setup["media"] / "tone.wav", folder / "one.wav")
    idx = tmp_path / "idx"
    quiet = dict(progress=False, say=lambda s: None)
    first = build_index(setup["embedder"], folder, idx, **quiet)
    assert first.processed == ["one.wav"]
    again = build_index(setup["embedder"], folder, idx, **quiet)
    assert again.processed == [] and again.skipped == 1
    before = Index(idx).audio.copy()
    st = (folder / "one.wav").stat()
    os.utime(folder / "one.wav", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # touched
    shutil.copy(setup["media"] / "tone.wav", folder / "two.wav")  # added
    third = build_index(setup["embedder"], folder, idx, **quiet)
    assert sorted(third.processed) == ["one.wav", "two.wav"] and third.moments == 64
    index = Index(idx)
    np.testing.assert_array_equal(index.audio[:32], before)
    # One generation of arrays, no temp leftovers.
    assert sorted(p.name.split(".")[0] for p in idx.iterdir() if p.suffix == ".npy") == [
        "audio", "moments", "video"]
    assert not [p for p in idx.iterdir() if p.name.startswith(".tmp")]


def test_a_failed_update_leaves_the_index_as_it_was(setup, tmp_path, monkeypatch):
    from cavmae_jax.search import store

    folder, idx = tmp_path / "in", tmp_path / "idx"
    folder.mkdir()
    shutil.copy(setup["media"] / "tone.wav", folder / "one.wav")
    build_index(setup["embedder"], folder, idx, progress=False)
    before = {p.name: p.read_bytes() for p in idx.iterdir() if p.is_file()}
    shutil.copy(setup["media"] / "tone.wav", folder / "two.wav")

    def crash(path, text):
        raise OSError("disk full")

    monkeypatch.setattr(store, "atomic_write_text", crash)
    with pytest.raises(OSError, match="disk full"):
        build_index(setup["embedder"], folder, idx, progress=False)
    after = {p.name: p.read_bytes() for p in idx.iterdir() if p.is_file()}
    assert after == before and not [p for p in idx.iterdir() if p.is_dir()]
    assert len(Index(idx)) == 32


def test_index_of_another_model_is_refused(setup, tmp_path):
    manifest = (setup["index"] / "manifest.json").read_text()
    other = Embedder.from_checkpoint(setup["other"])
    with pytest.raises(IndexMismatch, match="weights differ"):
        build_index(other, setup["media"] / "tone.wav", setup["index"], progress=False)
    with pytest.raises(IndexMismatch, match="does not match the index"):
        Searcher(setup["index"], other)
    assert (setup["index"] / "manifest.json").read_text() == manifest
    ident = json.loads(manifest)["identity"]
    changed = json.loads(json.dumps(ident))
    changed["model"]["embed_dim"] = 64
    changed["inputs"]["window_length"] = 416
    why = describe_mismatch(ident, changed)
    assert "model.embed_dim: 32 -> 64" in why and "inputs.window_length: 64 -> 416" in why
    not_index = tmp_path / "plain"
    not_index.mkdir()
    (not_index / "notes.txt").write_text("mine")
    with pytest.raises(NotAnIndex):
        build_index(setup["embedder"], setup["media"] / "tone.wav", not_index, progress=False)


@pytest.fixture(scope="module")
def report(setup, searcher, tmp_path_factory):
    row = _rows(searcher.index, ODD)[8]
    q = audio_query(setup["embedder"], setup["media"] / ODD, row["win_start"], row["win_end"])
    out = tmp_path_factory.mktemp("report") / "report"
    return write_report(out, q, searcher.search(q, top=3), searcher.index)


def test_report_is_self_contained_and_escaped(report):
    page = report.read_text()
    assert "&lt;b&gt;&amp;&quot;x&quot;.mp4" in page and ODD not in page
    assert "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "https://" not in page and "<svg" in page
    import re

    refs = re.findall(r'src="([^"]+)"', page)
    assert any(r.endswith(".jpg") for r in refs) and any(r.endswith(".wav") for r in refs)
    for r in refs:
        assert (report.parent / r).is_file(), r
    wave, rate = sf.read(report.parent / "media" / "by_sound_00.wav")
    assert rate == 16000 and 0.6 < len(wave) / rate < 0.7  # the matched 0.655 s window


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary: the report is not rendered")
def test_report_renders_in_a_browser(report, tmp_path):
    from PIL import Image

    shot = tmp_path / "shot.png"
    subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}",
                    "--window-size=1200,1600", report.as_uri()],
                   capture_output=True, timeout=120, check=False)
    assert shot.is_file(), "chromium wrote no screenshot"
    with Image.open(shot) as img:
        small = np.asarray(img.convert("L").resize((120, 160)))
    assert small.std() > 10 and len(np.unique(small)) > 20  # text, frames and strips drawn


def test_cli_query_writes_results(setup, tmp_path):
    out = tmp_path / "q.json"
    proc = run_cli("cavmae_jax.search", "query", f"--index={setup['index']}",
                   f"--audio={setup['media'] / 'a.mp4'}", "--start=12", "--end=12.3",
                   "--top=3", f"--json={out}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "zero-padded" in proc.stdout and "by sound (audio->audio)" in proc.stdout
    data = json.loads(out.read_text())
    assert data["query"]["padded"] and len(data["results"]["by_sound"]) == 3
    hit = data["results"]["by_sound"][0]
    assert hit["file"] in ("a.mp4", ODD, "tone.wav") and -1 <= hit["score"] <= 1
    assert set(data["results"]) == {"by_sound", "by_picture"}


def test_cli_bad_inputs_get_one_line(setup, tmp_path):
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF....nonsense" * 50)
    silent = tmp_path / "silent.wav"
    sf.write(silent, np.zeros(32000, np.float32), 16000, subtype="PCM_16")
    fake = tmp_path / "fake.png"
    fake.write_text("not a picture")
    empty = tmp_path / "empty_dir"
    empty.mkdir()
    idx, out = f"--index={setup['index']}", tmp_path / "out.json"
    cases = [
        ((idx, f"--audio={bad}"), "cannot read the sound"),
        ((idx, f"--audio={silent}"), "is silent"),
        ((idx, f"--image={fake}"), "is not an image"),
        ((f"--index={empty}", f"--image={fake}"), "is not a search index"),
        ((idx, f"--video={setup['media'] / 'a.mp4'}", "--at=99"), "past the end"),
        ((idx, f"--audio={setup['media'] / 'tone.wav'}", f"--checkpoint={setup['other']}"),
         "does not match the index"),
        (("index", f"--checkpoint={setup['params']}", f"--input={setup['media']}",
          f"--index={setup['media']}"), "is not a search index"),
        (("index", f"--checkpoint={setup['params']}", f"--input={tmp_path / 'nowhere'}", idx),
         "input not found"),
    ]
    procs = [subprocess.Popen([sys.executable, "-m", "cavmae_jax.search",
                               *(() if args[0] == "index" else ("query",)), *args,
                               f"--json={out}"], cwd=ROOT, env=env(1, None),
                              stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
             for args, _ in cases]
    for (_, message), p in zip(cases, procs, strict=True):
        _, err = p.communicate(timeout=300)
        lines = err.strip().splitlines()
        assert p.returncode == 2 and len(lines) == 1, err[-2000:]
        assert lines[0].startswith("error: ") and message in lines[0], lines[0]
    assert not out.exists() and not list(tmp_path.glob(".out.json*"))
