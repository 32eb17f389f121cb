"""data_prep.convert end to end on real media files: round trip, failures, determinism, resume."""

import json
import pathlib

import numpy as np
import pytest
import soundfile as sf
from _av_clips import gray_to_index, write_clip
from array_record.python.array_record_module import ArrayRecordReader

from cavmae_jax import audio, video
from cavmae_jax.data import records
from data_prep import convert


def _read_split(out: pathlib.Path, split: str = "train") -> list[dict]:
    recs = []
    for shard in sorted(out.glob(f"{split}.array_record-*")):
        reader = ArrayRecordReader(str(shard))
        recs += [records.decode(b) for b in reader.read_all()]
        reader.close()
    return recs


def _failures(out: pathlib.Path) -> dict[str, str]:
    lines = (out / "failures.jsonl").read_text().splitlines()
    return {json.loads(x)["id"]: json.loads(x)["reason"] for x in lines}


def _shard_bytes(out: pathlib.Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.glob("*.array_record-*"))}


def _mel_peak_bin(fb: np.ndarray, n_real: int) -> int:
    return int(np.argmax(fb[:n_real].mean(0)))


def _expected_mel_bin(freq: float) -> int:
    banks = audio.kaldi_mel_banks(128, 512, 16000)
    return int(np.argmax(banks[:, int(round(freq / 16000 * 512))]))


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    (root / "sub").mkdir()
    write_clip(root / "a.mp4", seconds=2.0, fps=10, size=(64, 48), tone_hz=440)
    write_clip(root / "sub" / "b.mkv", seconds=1.5, fps=12, size=(48, 64), tone_hz=1000,
               container="matroska")
    write_clip(root / "silent.mp4", seconds=1.0, fps=10, size=(32, 32), amplitude=0.0)
    write_clip(root / "noaudio.mp4", seconds=1.0, fps=10, size=(32, 32), audio=False)
    write_clip(root / "novideo.mp4", seconds=1.0, video=False)
    (root / "junk.mp4").write_text("this is not a video\n")
    (root / "empty.mp4").write_bytes(b"")
    good = (root / "a.mp4").read_bytes()
    (root / "trunc.mp4").write_bytes(good[: len(good) // 2])
    (root / "notes.txt").write_text("ignored: not a video extension")
    return root


@pytest.fixture(scope="module")
def converted(folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("out1")
    rc = convert.main(["--input", str(folder), "--output", str(out), "--workers", "1",
                       "--shard_size", "2", "--no_progress"])
    return out, rc


def test_folder_round_trip(converted):
    out, rc = converted
    assert rc == 0
    recs = {r["id"]: r for r in _read_split(out)}
    assert sorted(recs) == ["a", "silent", "sub/b"]
    a = recs["a"]
    assert a["fbank"].shape == (1024, 128) and a["fbank"].dtype == np.float32
    assert abs(a["num_fbank_frames"] - audio.num_fbank_frames(32000)) <= 3  # AAC edges
    assert np.all(a["fbank"][a["num_fbank_frames"]:] == 0)  # official zero padding
    assert _mel_peak_bin(a["fbank"], a["num_fbank_frames"]) == _expected_mel_bin(440)  # channel 0
    assert recs["sub/b"]["fbank"].shape == (1024, 128)
    assert _mel_peak_bin(recs["sub/b"]["fbank"], 100) == _expected_mel_bin(1000)
    assert a["frames"].shape == (16, 224, 224, 3) and a["frames"].dtype == np.uint8
    expected = video.official_frame_indices(20, 10.0, 16)
    np.testing.assert_array_equal(a["source_frame_index"], expected)
    assert [gray_to_index(f[90:130, 90:130].mean()) for f in a["frames"]] == expected.tolist()
    np.testing.assert_array_equal(a["windows"], audio.window_table(16, 416, 1024))
    assert a["labels"].tolist() == []
    assert a["source"]["path"] == "a.mp4" and a["source"]["silent"] is False
    assert recs["silent"]["source"]["silent"] is True


def test_folder_metadata_and_failures(converted):
    out, _ = converted
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["num_records"] == 3 and meta["splits"]["train"]["num_records"] == 3
    assert meta["splits"]["train"]["num_inputs"] == 8  # notes.txt is not an input
    assert meta["splits"]["train"]["shards"] == [
        f"train.array_record-{i:05d}-of-00004" for i in range(4)]
    assert meta["silent_ids"] == ["silent"]
    assert meta["settings"]["num_frames"] == 16 and meta["settings"]["window_length"] == 416
    assert meta["array_record_options"] == "group_size:1,uncompressed"
    assert meta["fbank_stats"]["num_values"] > 0 and meta["fbank_stats"]["std"] > 0
    assert meta["tool"] == "data_prep.convert" and meta["tool_version"]
    fails = _failures(out)
    assert set(fails) == {"empty", "junk", "noaudio", "novideo", "trunc"}
    assert "empty (0 bytes)" in fails["empty"]
    assert "FFmpeg cannot read it" in fails["junk"]
    assert "FFmpeg cannot read it" in fails["trunc"]
    assert "no audio stream" in fails["noaudio"]
    assert "no video stream" in fails["novideo"]


def test_deterministic_across_runs_and_worker_counts(converted, folder, tmp_path):
    out1, _ = converted
    out2 = tmp_path / "out2"
    rc = convert.main(["--input", str(folder), "--output", str(out2), "--workers", "2",
                       "--shard_size", "2", "--no_progress"])
    assert rc == 0
    assert _shard_bytes(out2) == _shard_bytes(out1)
    assert (out2 / "failures.jsonl").read_bytes() == (out1 / "failures.jsonl").read_bytes()


def test_resume_skips_finished_and_redoes_missing(converted, folder, tmp_path):
    out1, _ = converted
    out = tmp_path / "out3"
    args = ["--input", str(folder), "--output", str(out), "--workers", "1", "--shard_size", "2",
            "--no_progress"]
    assert convert.main(args) == 0
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("*.array_record-*")}
    victim = out / "train.array_record-00002-of-00004"
    victim.unlink()
    (out / "train.array_record-00003-of-00004.tmp").write_bytes(b"partial")  # a killed run
    cfg = convert.ConvertConfig()
    meta = convert.convert(str(folder), str(out), cfg, shard_size=2, progress=False)
    assert meta["_converted_now"] == 2  # only the missing shard's two inputs
    after = {p.name: p.stat().st_mtime_ns for p in out.glob("*.array_record-*")}
    assert sorted(after) == sorted(before)
    assert all(after[k] == before[k] for k in after if k != victim.name)
    assert not list(out.glob("*.tmp"))
    assert _shard_bytes(out) == _shard_bytes(out1)
    names = [p.name for p in sorted(out.glob("train.array_record-*"))]
    index = records.read_labels_index(records.labels_index_path(out, "train"), names)
    assert [x.tolist() for x in index] == [r["labels"].tolist() for r in _read_split(out)]
    # Other settings into the same folder are refused rather than mixed.
    with pytest.raises(SystemExit, match="different conversion"):
        convert.convert(str(folder), str(out), convert.ConvertConfig(num_frames=8), shard_size=2,
                        progress=False)


def _write_wav(path, seconds, freq=440.0, sr=16000, channels=1):
    t = np.arange(int(seconds * sr)) / sr
    x = 0.3 * np.sin(2 * np.pi * freq * t)
    sf.write(path, np.stack([x] * channels, 1), sr)
    return path


def test_official_datafile(tmp_path):
    frames_root = tmp_path / "frames"
    rng = np.random.default_rng(0)
    for vid in ["v1", "v2", "v3"]:
        for i in range(4):
            d = frames_root / f"frame_{i}"
            d.mkdir(parents=True, exist_ok=True)
            img = rng.integers(0, 255, (224, 224, 3), dtype=np.uint8)
            (d / f"{vid}.jpg").write_bytes(video.encode_jpeg(img, 75))
    big = np.zeros((300, 400, 3), np.uint8)
    (frames_root / "frame_2" / "v2.jpg").write_bytes(video.encode_jpeg(big))  # gets resized
    (frames_root / "frame_3" / "v3.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    for vid in ["v1", "v2", "v3"]:
        _write_wav(tmp_path / f"{vid}.wav", 1.0, channels=2)
    entries = [
        {"wav": str(tmp_path / "v1.wav"), "video_id": "v1", "video_path": str(frames_root),
         "labels": "/m/dog,/m/cat"},
        {"wav": "v2.wav", "video_id": "v2", "video_path": "frames", "labels": "/m/cat"},
        {"wav": str(tmp_path / "v3.wav"), "video_id": "v3", "video_path": str(frames_root),
         "labels": "/m/dog"},
        {"wav": str(tmp_path / "v4.wav"), "video_id": "v4", "video_path": str(frames_root),
         "labels": "/m/dog"},
        {"wav": str(tmp_path / "v1.wav"), "video_id": "v5", "video_path": str(frames_root),
         "labels": "/m/unicorn"},
        {"wav": str(tmp_path / "v1.wav"), "video_id": "v6", "video_path": str(tmp_path / "few"),
         "labels": "/m/dog"},
    ]
    for i in range(2):  # v6 has only 2 of the 4 frames
        (tmp_path / "few" / f"frame_{i}").mkdir(parents=True)
        (tmp_path / "few" / f"frame_{i}" / "v6.jpg").write_bytes(
            (frames_root / "frame_0" / "v1.jpg").read_bytes())
    datafile = tmp_path / "train.json"
    datafile.write_text(json.dumps({"data": entries}))
    label_csv = tmp_path / "labels.csv"
    label_csv.write_text('index,mid,display_name\n0,/m/cat,"Cat"\n1,/m/dog,"Dog"\n')
    out = tmp_path / "out"
    rc = convert.main(["--input", str(datafile), "--output", str(out), "--labels", str(label_csv),
                       "--num_frames", "4", "--window_length", "256", "--workers", "1",
                       "--split", "test", "--no_progress"])
    assert rc == 0
    recs = {r["id"]: r for r in _read_split(out, "test")}
    assert sorted(recs) == ["v1", "v2"]
    assert recs["v1"]["labels"].tolist() == [0, 1] and recs["v2"]["labels"].tolist() == [0]
    assert recs["v1"]["frames"].shape == (4, 224, 224, 3)
    np.testing.assert_array_equal(recs["v1"]["windows"], audio.window_table(4, 256))
    # 224x224 JPEGs are stored byte for byte.
    raw = records.decode(
        ArrayRecordReader(str(next(out.glob("test.array_record-*")))).read([0])[0],
        decode_frames=False)
    assert raw["frames_jpeg"][0] == (frames_root / "frame_0" / "v1.jpg").read_bytes()
    assert recs["v2"]["frames"][2].max() == 0  # the 400x300 black frame, resized
    assert recs["v1"]["num_fbank_frames"] == audio.num_fbank_frames(16000)
    fails = _failures(out)
    assert "unreadable image" in fails["v3"]
    assert "not found" in fails["v4"]
    assert "unknown label" in fails["v5"] and "/m/unicorn" in fails["v5"]
    assert "missing 2 of 4 pre-extracted frames" in fails["v6"] and "--num_frames 2" in fails["v6"]
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["labels"][1] == {"index": 1, "mid": "/m/dog", "display_name": "Dog"}
    assert meta["num_classes"] == 2 and meta["input"]["kind"] == "datafile"


def test_pairs_csv_and_exit_codes(tmp_path):
    img = np.zeros((100, 150, 3), np.uint8)
    img[:, :75] = 255
    (tmp_path / "still.png").write_bytes(b"")
    from PIL import Image

    Image.fromarray(img).save(tmp_path / "still.png")
    _write_wav(tmp_path / "tone.wav", 1.2, freq=1000, sr=22050)
    _write_wav(tmp_path / "tiny.wav", 300 / 16000)
    write_clip(tmp_path / "v.mp4", seconds=1.0, fps=10, size=(32, 32), tone_hz=440)
    csv_path = tmp_path / "pairs.csv"
    csv_path.write_text(
        "visual,audio,labels,split,id\n"
        "still.png,tone.wav,\"bird,song\",train,\n"
        "v.mp4,tone.wav,bird,eval,\n"
        "v.mp4,,song,train,\n"  # same id as the row above, but another split: fine
        "v.mp4,,song,train,\n"  # this one is a duplicate
        "still.png,tiny.wav,bird,train,tiny\n"
        "missing.mp4,tone.wav,bird,train,\n")
    out = tmp_path / "out"
    rc = convert.main(["--input", str(csv_path), "--output", str(out), "--num_frames", "2",
                       "--workers", "1", "--no_progress"])
    assert rc == 0
    train = {r["id"]: r for r in _read_split(out, "train")}
    evals = {r["id"]: r for r in _read_split(out, "eval")}
    assert sorted(train) == ["still", "v"] and sorted(evals) == ["v"]
    meta = json.loads((out / "metadata.json").read_text())
    assert [v["mid"] for v in meta["labels"]] == ["bird", "song"]
    assert train["still"]["labels"].tolist() == [0, 1]
    np.testing.assert_array_equal(train["still"]["frames"][0], train["still"]["frames"][1])
    # Separate 22.05 kHz audio resampled to 16 kHz; the video's own track is ignored.
    e = evals["v"]
    assert e["num_fbank_frames"] == audio.num_fbank_frames(int(1.2 * 16000))
    assert _mel_peak_bin(e["fbank"], e["num_fbank_frames"]) == _expected_mel_bin(1000)
    assert _mel_peak_bin(train["v"]["fbank"], 50) == _expected_mel_bin(440)
    fails = list(map(json.loads, (out / "failures.jsonl").read_text().splitlines()))
    reasons = " | ".join(f["reason"] for f in fails)
    assert len(fails) == 3
    assert "duplicate id 'v'" in reasons
    assert "audio too short: 300 samples" in reasons
    assert "not found" in reasons
    assert convert.main(["--input", str(csv_path), "--output", str(out), "--num_frames", "2",
                         "--workers", "1", "--no_progress", "--strict"]) == 1
    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_text("visual,audio\nmissing.mp4,tone.wav\n")
    assert convert.main(["--input", str(bad_csv), "--output", str(tmp_path / "o2"),
                         "--workers", "1", "--no_progress"]) == 1


def test_split_long(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    write_clip(src / "long.mp4", seconds=2.6, fps=10, size=(32, 32))
    out = tmp_path / "out"
    rc = convert.main(["--input", str(src), "--output", str(out), "--split_long",
                       "--clip_seconds", "1", "--num_frames", "4", "--workers", "1",
                       "--no_progress"])
    assert rc == 0
    recs = _read_split(out)
    assert [r["id"] for r in recs] == ["long_seg000", "long_seg001", "long_seg002"]
    for j, r in enumerate(recs):
        expected = video.official_frame_indices(26 - 10 * j, 10.0, 4, 1.0, start_frame=10 * j)
        np.testing.assert_array_equal(r["source_frame_index"], expected)
        got = [gray_to_index(f[100:124, 100:124].mean()) for f in r["frames"]]
        assert got == expected.tolist()
        assert r["source"]["segment"] == j and r["source"]["start_s"] == j
    assert recs[0]["num_fbank_frames"] == audio.num_fbank_frames(16000)


# ----------------------------------------------------------------------------- labels and splits


def _small_clip(path: pathlib.Path, tone_hz: float = 440.0) -> pathlib.Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_clip(path, seconds=0.5, fps=8, size=(32, 32), tone_hz=tone_hz)


def _run(inp, out, *extra) -> int:
    return convert.main(["--input", str(inp), "--output", str(out), "--num_frames", "2",
                         "--workers", "1", "--no_progress", *map(str, extra)])


def _label_names(out: pathlib.Path, split: str) -> dict[str, list[str]]:
    """Record id -> its label names, through metadata.json's vocabulary."""
    vocab = json.loads((out / "metadata.json").read_text())["labels"]
    names = {v["index"]: v["mid"] for v in vocab}
    return {r["id"]: [names[i] for i in r["labels"].tolist()] for r in _read_split(out, split)}


def test_per_clip_label_file_for_a_folder(tmp_path):
    root = tmp_path / "clips"
    for rel in ["a.mp4", "c.mp4", "d.mp4", "e.mp4", "sub/b.mp4", "x/dup.mp4", "y/dup.mp4"]:
        _small_clip(root / rel)
    labels = tmp_path / "labels.csv"
    labels.write_text(
        "id,path,labels,split\n"
        'a,,"Speech, man;Dog",\n'  # ';' separates, so the comma stays inside a name
        "b,,dog,val\n"  # the stem of sub/b.mp4 (unique), with its own split
        f",{root / 'c.mp4'},cat,\n"  # an absolute path
        ",./e.mp4,,\n"  # a path relative to --input; empty labels: unlabeled on purpose
        "dup,,dog,\n"  # two files have this stem
        "ghost,,dog,\n")  # no such file
    out = tmp_path / "out"
    assert _run(root, out, "--labels", labels) == 0
    meta = json.loads((out / "metadata.json").read_text())
    assert [v["mid"] for v in meta["labels"]] == ["Dog", "Speech, man", "cat", "dog"]
    assert meta["input"]["label_file"] == "per_clip" and meta["input"]["labels_unmatched"] == 1
    assert _label_names(out, "train") == {"a": ["Dog", "Speech, man"], "c": ["cat"], "e": []}
    assert _label_names(out, "val") == {"sub/b": ["dog"]}
    assert {k: v["num_records"] for k, v in meta["splits"].items()} == {"train": 3, "val": 1}
    fails = _failures(out)
    assert set(fails) == {"d", "x/dup", "y/dup"}
    assert "no labels entry in labels.csv" in fails["d"]
    assert "ambiguous" in fails["x/dup"] and "'y/dup'" in fails["y/dup"]

    # A fixed vocabulary sets the indices; a name outside it fails the clip.
    vocab = tmp_path / "class_labels_indices.csv"
    vocab.write_text('index,mid,display_name\n0,/m/09x0r,"Speech, man"\n1,/m/0bt9lr,Dog\n'
                     "2,/m/01yrx,cat\n")
    items, early, voc, _ = convert.collect_items(str(root), "train", 2, str(labels),
                                                 vocabulary_csv=str(vocab))
    assert {it.id: it.labels for it in items} == {"a": (0, 1), "c": (2,), "e": ()}
    assert [v["mid"] for v in voc] == ["/m/09x0r", "/m/0bt9lr", "/m/01yrx"]
    unknown = {f["id"]: f["reason"] for f in early}["sub/b"]
    assert "unknown label" in unknown and "'dog'" in unknown


def test_label_file_errors(tmp_path):
    root = tmp_path / "clips"
    root.mkdir()
    for name in ["a", "b"]:
        (root / f"{name}.mp4").write_bytes(b"not decoded by collect_items")
    bad = tmp_path / "bad.csv"
    bad.write_text("file,class\na,dog\n")
    with pytest.raises(SystemExit, match="neither a vocabulary"):
        convert.collect_items(str(root), "train", 2, str(bad))
    twice = tmp_path / "twice.csv"
    twice.write_text("id,labels\na,dog\nb,cat\na,cat\n")
    with pytest.raises(SystemExit, match="line 4: 'a' is listed twice"):
        convert.collect_items(str(root), "train", 2, str(twice))
    per_clip = tmp_path / "per_clip.csv"
    per_clip.write_text("id,labels,split\na,dog,bad/split\nb,cat,\n")
    with pytest.raises(SystemExit, match="both set the labels"):
        convert.collect_items(str(root), "train", 2, str(per_clip), label_dirs=True)
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("visual,audio\na.mp4,\n")
    with pytest.raises(SystemExit, match="goes with a folder --input"):
        convert.collect_items(str(pairs), "train", 2, str(per_clip))
    vocab = tmp_path / "vocab.csv"
    vocab.write_text("index,mid,display_name\n0,dog,Dog\n")
    with pytest.raises(SystemExit, match="give one"):
        convert.collect_items(str(root), "train", 2, str(vocab), vocabulary_csv=str(vocab))
    with pytest.raises(SystemExit, match="expected the index,mid,display_name"):
        convert.collect_items(str(root), "train", 2, str(per_clip), vocabulary_csv=str(per_clip))
    items, early, _, _ = convert.collect_items(str(root), "train", 2, str(per_clip))
    assert [it.id for it in items] == ["b"]
    assert "invalid split name 'bad/split'" in early[0]["reason"]
    with pytest.raises(SystemExit):  # argparse: the holdout split must differ
        convert.main(["--input", str(root), "--output", str(tmp_path / "o"), "--holdout", "0.5",
                      "--holdout_split", "train"])


def test_holdout_is_an_exact_deterministic_fraction(tmp_path):
    root = tmp_path / "clips"
    root.mkdir()
    ids = [f"clip_{i:03d}" for i in range(40)]
    for i in ids:
        (root / f"{i}.mp4").write_bytes(b"x")
    items, _, _, _ = convert.collect_items(str(root), "train", 2, holdout=0.25,
                                           holdout_split="test")
    test = sorted(it.id for it in items if it.split == "test")
    assert len(test) == 10 and len(items) == 40
    assert test == sorted(sorted(ids, key=convert.holdout_rank)[:10])  # smallest hashes
    # Explicit splits from a per-clip file are kept; only the other clips are candidates.
    labels = tmp_path / "labels.csv"
    labels.write_text("id,labels,split\n" + "".join(
        f"{i},c{k % 3},{'val' if k < 20 else ''}\n" for k, i in enumerate(ids)))
    items, _, _, _ = convert.collect_items(str(root), "train", 2, str(labels), holdout=0.25,
                                           holdout_split="test")
    by_split = {s: sorted(it.id for it in items if it.split == s) for s in ("train", "val", "test")}
    assert by_split["val"] == ids[:20]
    assert by_split["test"] == sorted(sorted(ids[20:], key=convert.holdout_rank)[:5])
    assert len(by_split["train"]) == 15


def test_synthetic_folder_end_to_end(tmp_path):
    from data_prep import synthetic as prep

    clips = tmp_path / "V"
    prep.main(["--output", str(clips), "--num_clips", "6", "--seed", "0", "--duration", "3",
               "--no_progress"])
    expected = dict(line.split(",") for line in (clips / "labels.csv").read_text().split()[1:])
    outs = []
    for workers in ("1", "2"):
        out = tmp_path / f"D{workers}"
        rc = convert.main(["--input", str(clips), "--labels", str(clips / "labels.csv"),
                           "--output", str(out), "--holdout", "0.34", "--holdout_split", "test",
                           "--workers", workers, "--no_progress"])
        assert rc == 0
        outs.append(out)
    assert _shard_bytes(outs[0]) == _shard_bytes(outs[1])
    meta = json.loads((outs[0] / "metadata.json").read_text())
    assert [v["mid"] for v in meta["labels"]] == sorted(set(expected.values()))
    assert {k: v["num_records"] for k, v in meta["splits"].items()} == {"train": 4, "test": 2}
    got = _label_names(outs[0], "train") | _label_names(outs[0], "test")
    assert got == {k: [v] for k, v in expected.items()}
    assert meta["num_failed"] == 0


def test_add_split_to_existing_output(tmp_path):
    def folder(name: str, clips: dict[str, str]) -> tuple[pathlib.Path, pathlib.Path]:
        root = tmp_path / name
        for i, clip in enumerate(clips):
            _small_clip(root / f"{clip}.mp4", tone_hz=300 + 100 * i)
        (root / "labels.csv").write_text(
            "id,labels\n" + "".join(f"{k},{v}\n" for k, v in clips.items()))
        return root, root / "labels.csv"

    a, a_labels = folder("A", {"a1": "x", "a2": "y"})
    b, b_labels = folder("B", {"b1": "y", "bad": "y"})
    (b / "bad.mp4").write_text("not a video")
    c, c_labels = folder("C", {"c1": "z"})
    out = tmp_path / "out"
    assert _run(a, out, "--labels", a_labels) == 0
    train_before = _shard_bytes(out)
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.glob("train.*")}
    assert _run(b, out, "--labels", b_labels, "--split", "val") == 0
    meta = json.loads((out / "metadata.json").read_text())
    assert {k: v["num_records"] for k, v in meta["splits"].items()} == {"train": 2, "val": 1}
    assert meta["splits"]["train"]["input"]["path"] == str(a)
    assert meta["splits"]["val"]["input"]["path"] == str(b)
    assert meta["splits"]["val"]["num_failed"] == 1 and meta["num_failed"] == 1  # bad.mp4
    assert [v["mid"] for v in meta["labels"]] == ["x", "y"]
    # B alone would make 'y' class 0; the folder's vocabulary makes it 1, as in train.
    assert [r["labels"].tolist() for r in _read_split(out, "val")] == [[1]]
    assert _label_names(out, "train") == {"a1": ["x"], "a2": ["y"]}
    assert {k: v for k, v in _shard_bytes(out).items() if k.startswith("train")} == train_before
    assert mtimes == {p.name: p.stat().st_mtime_ns for p in out.glob("train.*")}
    assert _failures(out).keys() == {"bad"}

    # Resume: rerunning either input converts nothing and keeps both splits; a lost shard of
    # one split is redone without touching the other.
    cfg = convert.ConvertConfig(num_frames=2)
    meta = convert.convert(str(a), str(out), cfg, label_csv=str(a_labels), progress=False)
    assert meta["_converted_now"] == 0 and sorted(meta["splits"]) == ["train", "val"]
    val_shard = out / "val.array_record-00000-of-00001"
    val_bytes = val_shard.read_bytes()
    val_shard.unlink()
    meta = convert.convert(str(b), str(out), cfg, "val", str(b_labels), progress=False)
    assert meta["_converted_now"] == 2 and val_shard.read_bytes() == val_bytes
    assert mtimes == {p.name: p.stat().st_mtime_ns for p in out.glob("train.*")}

    # Refusals: new label names, another vocabulary, other inputs for a split, other settings.
    with pytest.raises(SystemExit, match="Pass --vocabulary .* or convert all splits in one run"):
        convert.convert(str(c), str(out), cfg, "extra", str(c_labels), progress=False)
    assert not (out / ".convert" / "split-extra.json").exists()
    vocab = tmp_path / "vocab.csv"
    vocab.write_text("index,mid,display_name\n0,x,X\n1,y,Y\n2,z,Z\n")
    with pytest.raises(SystemExit, match="another label vocabulary"):
        convert.convert(str(c), str(out), cfg, "extra", str(c_labels), vocabulary_csv=str(vocab),
                        progress=False)
    with pytest.raises(SystemExit, match="split 'val' .* holds a different conversion"):
        convert.convert(str(a), str(out), cfg, "val", str(a_labels), progress=False)
    with pytest.raises(SystemExit, match="different conversion .*num_frames"):
        convert.convert(str(c), str(out), convert.ConvertConfig(num_frames=4), "extra",
                        str(c_labels), progress=False)
    assert sorted(json.loads((out / "metadata.json").read_text())["splits"]) == ["train", "val"]

    # With a fixed vocabulary from the start, a split may bring names the others lack.
    out2 = tmp_path / "out2"
    assert _run(a, out2, "--labels", a_labels, "--vocabulary", vocab) == 0
    assert _run(c, out2, "--labels", c_labels, "--vocabulary", vocab, "--split", "extra") == 0
    assert _label_names(out2, "extra") == {"c1": ["z"]}
    assert _label_names(out2, "train") == {"a1": ["x"], "a2": ["y"]}
    meta = json.loads((out2 / "metadata.json").read_text())
    assert meta["num_classes"] == 3 and meta["num_records"] == 3
