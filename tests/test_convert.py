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
