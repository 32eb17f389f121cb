"""Conversion of unusual audio (rates, channel counts) and a conversion killed midway."""

import json
import signal
import subprocess
import sys
import time

import numpy as np
import soundfile as sf
from _av_clips import write_clip
from array_record.python.array_record_module import ArrayRecordReader
from PIL import Image

from cavmae_jax import audio
from cavmae_jax.data import records
from data_prep import convert


def _records(out):
    recs = []
    for shard in sorted(out.glob("*.array_record-*")):
        reader = ArrayRecordReader(str(shard))
        recs += [records.decode(b) for b in reader.read_all()]
        reader.close()
    return {r["id"]: r for r in recs}


def test_8k_48k_and_six_channel_audio_convert_correctly(tmp_path):
    """Each file is resampled to 16 kHz from its first channel: the tone lands in its mel bin."""
    Image.fromarray(np.full((40, 60, 3), 90, np.uint8)).save(tmp_path / "still.png")
    cases = {"sr8k": (8000, 1, 700.0), "sr48k": (48000, 2, 1500.0), "six": (48000, 6, 3000.0)}
    rows = ["visual,audio,labels,id"]
    for name, (sr, channels, freq) in cases.items():
        t = np.arange(2 * sr) / sr
        # Channel c carries a tone at (c + 1) x freq: only the first one must be used.
        wave = np.stack([0.3 * np.sin(2 * np.pi * freq * (c + 1) * t) for c in range(channels)], 1)
        sf.write(tmp_path / f"{name}.wav", wave, sr)
        rows.append(f"still.png,{name}.wav,tone,{name}")
    (tmp_path / "pairs.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "out"
    assert convert.main(["--input", str(tmp_path / "pairs.csv"), "--output", str(out),
                         "--num_frames", "4", "--no_progress"]) == 0
    recs = _records(out)
    banks = audio.kaldi_mel_banks(128, 512, 16000)
    for name, (_, _, freq) in cases.items():
        r = recs[name]
        assert r["num_fbank_frames"] == 198  # 2 s at 16 kHz
        peak = int(np.argmax(r["fbank"][: r["num_fbank_frames"]].mean(0)))
        assert peak == int(np.argmax(banks[:, int(round(freq / 16000 * 512))])), name
        assert r["frames"].shape == (4, 224, 224, 3)


def test_conversion_killed_midway_resumes_to_identical_output(tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    for i in range(12):
        write_clip(videos / f"c{i:02d}.mp4", seconds=1.5, fps=10, size=(64, 48),
                   tone_hz=300 + 50 * i)
    args = ["--input", str(videos), "--shard_size", "1", "--workers", "1", "--no_progress"]
    reference = tmp_path / "reference"
    assert convert.main(args + ["--output", str(reference)]) == 0

    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "data_prep.convert", *args,
                             "--output", str(out)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while len(list(out.glob("train.array_record-*-of-00012"))) < 2 and time.time() < deadline:
        assert proc.poll() is None, "the conversion finished before it could be killed"
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = sorted(p.name for p in out.glob("train.array_record-*-of-00012"))
    assert 2 <= len(done) < 12  # killed midway: some shards finished, others not
    assert not (out / "metadata.json").exists()

    assert convert.main(args + ["--output", str(out)]) == 0  # the rerun resumes
    ref_shards = sorted(reference.glob("*.array_record-*"))
    assert [p.name for p in sorted(out.glob("*.array_record-*"))] == [p.name for p in ref_shards]
    for p in ref_shards:
        assert (out / p.name).read_bytes() == p.read_bytes(), p.name
    assert not list(out.glob("*.tmp"))
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["num_records"] == 12
