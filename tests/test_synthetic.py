"""The synthetic dataset, checked through real mp4 files decoded with PyAV."""

import csv
import hashlib
import json
import pathlib
import signal
import subprocess
import sys
import time

import _procs
import av
import numpy as np
import pytest
from scipy import fft as sfft

from cavmae_jax.data import synthetic
from data_prep import synthetic as prep

SR = 16000


def decode(path: pathlib.Path) -> dict:
    """Decode an mp4: RGB frames, mono float audio at its own rate, codec names."""
    with av.open(str(path)) as c:
        vs, aus = c.streams.video[0], c.streams.audio[0]
        info = {"vcodec": vs.codec_context.name, "acodec": aus.codec_context.name,
                "pix_fmt": vs.codec_context.pix_fmt, "fps": float(vs.average_rate),
                "channels": aus.codec_context.channels, "rate": aus.codec_context.sample_rate}
        frames = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(vs)])
    with av.open(str(path)) as c:
        chunks = [f.to_ndarray() for f in c.decode(c.streams.audio[0])]
    audio = np.concatenate(chunks, axis=1)  # fltp: [C, S]
    return {**info, "frames": frames, "audio": audio}


def chroma(frames: np.ndarray) -> np.ndarray:
    """Per-pixel max - min channel: high on the coloured objects, low on grey/dark pixels."""
    f = frames.astype(np.int16)
    return f.max(-1) - f.min(-1)


def rms_at(audio: np.ndarray, times: np.ndarray, half: int) -> np.ndarray:
    """RMS of ``audio`` in windows of +-half samples centred at ``times`` (seconds)."""
    out = []
    for t in times:
        c = int(round(t * SR))
        seg = audio[max(c - half, 0):c + half]
        out.append(np.sqrt(np.mean(seg.astype(np.float64) ** 2)) if seg.size else 0.0)
    return np.array(out)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> pathlib.Path:
    """Eight 10 s clips (one per class) written by the CLI."""
    out = tmp_path_factory.mktemp("synthetic")
    prep.main(["--output", str(out), "--num_clips", "8", "--seed", "5", "--no_progress"])
    return out


@pytest.fixture(scope="module")
def clips(dataset) -> list[dict]:
    """Per-clip ground truth from clips.jsonl plus the decoded mp4."""
    rows = [json.loads(line) for line in (dataset / "clips.jsonl").read_text().splitlines()]
    for row in rows:
        row.update(decode(dataset / row["path"]))
    return rows


def test_class_table():
    table = synthetic.class_table(synthetic.MAX_CLASSES)
    assert len({c.name for c in table}) == synthetic.MAX_CLASSES
    assert len({(c.shape, c.timbre) for c in table}) == synthetic.MAX_CLASSES
    first = table[:8]
    assert len({c.shape for c in first}) == len({c.timbre for c in first}) == 8
    assert len({c.hue for c in first}) == 8
    for bad in (0, synthetic.MAX_CLASSES + 1):
        with pytest.raises(ValueError):
            synthetic.class_table(bad)


def test_folder_layout(dataset, clips):
    with open(dataset / "labels.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["id"] for r in rows] == [f"clip_{i:05d}" for i in range(8)]
    names = [c.name for c in synthetic.class_table(8)]
    assert sorted(r["labels"] for r in rows) == sorted(names)  # one clip per class
    meta = json.loads((dataset / "classes.json").read_text())
    assert [c["name"] for c in meta["classes"]] == names
    assert (dataset / "README.txt").read_text().startswith("Synthetic")
    assert not list(dataset.glob("*.tmp.mp4"))


def test_streams_durations_and_content(clips):
    for row in clips:
        assert row["vcodec"] == "h264" and row["pix_fmt"] == "yuv420p"
        assert row["acodec"] == "aac" and row["channels"] == 1 and row["rate"] == SR
        assert row["fps"] == pytest.approx(16.0)
        assert row["frames"].shape == (160, 128, 128, 3)
        n = row["audio"].shape[1]
        assert 160000 <= n < 160000 + 1024  # AAC rounds the tail up to a 1024-sample frame
    # The decoded mp4 is the generated clip: pixels close, audio aligned to the sample.
    row = clips[0]
    clip = synthetic.generate_clip(row["seed"], row["label"])
    assert np.abs(row["frames"].astype(np.int16) - clip.frames).mean() < 4.0
    a, b = row["audio"][0, :160000], clip.audio
    lags = range(-64, 65)
    xc = [np.dot(a[1000 + lag:150000 + lag], b[1000:150000]) for lag in lags]
    assert lags[int(np.argmax(xc))] == 0
    assert np.corrcoef(a, b)[0, 1] > 0.99


def test_sound_follows_pictures(clips):
    """Audio loudness tracks on-screen object intensity frame by frame, with no lag."""
    for row in clips:
        times = np.arange(160) / 16.0
        visual = np.maximum(chroma(row["frames"]) - 40, 0).sum(axis=(1, 2)).astype(float)
        loud = rms_at(row["audio"][0], times, half=400)
        corrs = {lag: np.corrcoef(visual[max(lag, 0):160 + min(lag, 0)],
                                  loud[max(-lag, 0):160 - max(lag, 0)])[0, 1]
                 for lag in (-3, 0, 3)}
        assert corrs[0] > 0.6, (row["label_name"], corrs)
        assert corrs[0] > max(corrs[-3], corrs[3]), (row["label_name"], corrs)


def test_within_a_class_only_timing_links_sound_and_picture():
    """Clips of one class share their shape, colour and timbre, so what tells them apart across
    the modalities is when their events happen: a clip's picture activity follows its own
    sound (r > 0.6) and not that of another clip of its class (|r| small on average). (The
    clip-level distractors, background and hum, come from separate random streams for the
    picture and the sound, so they carry nothing from one modality to the other.)"""
    cfg = synthetic.ClipConfig(duration=10.0, fps=16, height=64, width=64, num_classes=2)
    clips = [synthetic.generate_clip(seed, 1, cfg) for seed in range(12)]
    times = np.arange(160) / 16.0
    picture, sound = [], []
    for clip in clips:
        frames = clip.frames.astype(np.float32)
        still = np.median(frames, axis=0)  # the background (objects come and go)
        picture.append(np.abs(frames - still).mean(axis=(1, 2, 3)))
        loud = rms_at(clip.audio, times, half=800)
        sound.append(loud)
    r = np.array([[np.corrcoef(p, a)[0, 1] for a in sound] for p in picture])
    own, other = np.diag(r), r[~np.eye(len(clips), dtype=bool)]
    assert own.min() > 0.6, own
    assert abs(other.mean()) < 0.1 and np.abs(other).max() < own.min(), (other.mean(), own)


def test_without_gaps_every_moment_has_an_object_and_its_note():
    """`gaps=False`: at every frame some event is fully faded in (its object on screen, its note
    sounding) and the audio is never silent; with the default gaps some frames show none."""
    def shown(clip, t):  # events past their attack and before their release at time t
        return sum(e["onset"] + synthetic.ATTACK_S <= t <= e["offset"] - synthetic.RELEASE_S
                   for e in clip.events)

    cfg = synthetic.ClipConfig(duration=10.0, fps=16, height=64, width=64, gaps=False)
    gappy = synthetic.ClipConfig(duration=10.0, fps=16, height=64, width=64)
    times = np.arange(160) / 16.0
    empty_with_gaps = 0
    for label in range(8):
        clip = synthetic.generate_clip([3, label], label, cfg)
        on = np.array([shown(clip, t) for t in times])
        assert on.min() >= 1, (clip.class_name, np.nonzero(on == 0)[0])
        assert rms_at(clip.audio, times, half=160).min() > 1e-3, clip.class_name
        other = synthetic.generate_clip([3, label], label, gappy)
        empty_with_gaps += sum(shown(other, t) == 0 for t in times)
    assert empty_with_gaps > 100, empty_with_gaps



def test_a_bounce_before_the_first_sample_is_cut_not_an_error():
    """Clip 221 of seed 0 without gaps (`data_prep.synthetic --gaps off`) bounces 4 ms before
    0 s (its first note starts at -ATTACK_S): its click is cut at the first sample. It used to
    stop the whole dataset with a broadcast error."""
    cfg = synthetic.ClipConfig(duration=10.0, fps=16, height=32, width=32, gaps=False)
    clip = synthetic.generate_clip([0, 0, 221], 7, cfg)
    early = [b for e in clip.events for b in e["bounces"] if b < 0]
    assert early, "the clip no longer has a bounce before 0 s; pick another"
    assert np.isfinite(clip.audio).all()
    assert np.abs(clip.audio[:160]).max() > 1e-3  # the note (and what is left of the click)


def band_energy(audio: np.ndarray, start: float, f0: float, n: int = 512) -> float:
    """Energy of ``audio[start : start + n samples]`` in a narrow band around ``f0``."""
    s = int(round(start * SR))
    spec = np.abs(np.fft.rfft(audio[s:s + n] * np.hanning(n), 4 * n)) ** 2
    freqs = np.fft.rfftfreq(4 * n, 1.0 / SR)
    bw = max(0.06 * f0, 40.0)
    return float(spec[np.abs(freqs - f0) < bw].sum())


def test_onsets_in_both_streams(clips):
    """Each event onset is a jump in energy at the note's pitch and a visible change in the next
    frame; 0.3 s earlier there is no such jump (so it is timing, not mere loudness)."""
    hits, shifted, total = 0, 0, 0
    for row in clips:
        audio = row["audio"][0]
        frames = row["frames"].astype(np.int16)
        change = np.abs(np.diff(frames, axis=0)).mean(axis=(1, 2, 3))  # change[i]: i -> i+1
        for ev in row["events"]:
            t, f0 = ev["onset"], ev["pitch_hz"]
            i = int(np.ceil(t * 16.0))  # first frame at or after the onset
            if not 1 <= i < 160 or t < 0.35:
                continue
            total += 1
            jump = band_energy(audio, t + 0.005, f0) / (band_energy(audio, t - 0.04, f0) + 1e-12)
            hits += jump > 2.5 and change[i - 1] > 3 * np.median(change)
            early = t - 0.3
            shifted += band_energy(audio, early + 0.005, f0) > 2.5 * band_energy(
                audio, early - 0.04, f0)
    assert hits >= 0.9 * total, (hits, total)
    assert shifted <= 0.35 * total, (shifted, total)


def test_pitch_follows_height(clips):
    """Fine-grained pairing: the note's pitch is set by the object's height in the same frame."""
    row = next(r for r in clips if r["label_name"].endswith("_sine"))
    audio, frames = row["audio"][0], row["frames"]
    col = chroma(frames) > 60
    errors = []
    win = 1024
    for i in range(160):
        t = i / 16.0
        active = [e for e in row["events"] if e["onset"] + 0.05 < t < e["offset"] - 0.15]
        if len(active) != 1 or col[i].sum() < 50:
            continue
        c = int(round(t * SR))
        seg = audio[c - win // 2:c + win // 2]
        if seg.size < win:
            continue
        spec = np.abs(np.fft.rfft(seg * np.hanning(win), 8 * win))
        f_peak = np.argmax(spec) * SR / (8 * win)
        y = np.nonzero(col[i])[0].mean() / frames.shape[1]  # centroid height, 0 = top
        f_pred = synthetic.pitch_for_height(y, synthetic.class_table(8)[row["label"]].base_hz)
        errors.append(abs(np.log2(f_peak / f_pred)))
    assert len(errors) >= 10
    assert np.median(errors) < 0.1 and np.mean(np.array(errors) < 0.25) > 0.85, errors


def _timbre_features(audio: np.ndarray) -> np.ndarray:
    """Pitch-agnostic timbre descriptor: cepstral stats of log band energies + harmonic profile."""
    n, hop = 1024, 256
    frames = np.lib.stride_tricks.sliding_window_view(audio, n)[::hop] * np.hanning(n)
    mag = np.abs(np.fft.rfft(frames, axis=1))
    energy = (mag ** 2).sum(1)
    mag = mag[energy > np.percentile(energy, 50)]
    edges = np.geomspace(100, 7900, 41) * n / SR
    bands = np.stack([(mag[:, int(lo):int(hi) + 1] ** 2).sum(1)
                      for lo, hi in zip(edges[:-1], edges[1:], strict=True)], 1)
    ceps = sfft.dct(np.log(bands + 1e-8), axis=1, norm="ortho")[:, :16]
    prof = []
    for spec in mag:
        k = int(np.argmax(spec[8:])) + 8
        idx = np.round(np.arange(1, 13) * k / 2).astype(int)
        idx = idx[idx < spec.size - 1]
        amp = np.maximum.reduce([spec[idx - 1], spec[idx], spec[idx + 1]])
        p = np.full(12, -80.0)
        p[:idx.size] = 20 * np.log10(amp / spec[k] + 1e-4)
        prof.append(p)
    prof = np.array(prof)
    return np.concatenate([ceps.mean(0), ceps.std(0), np.abs(np.diff(ceps, axis=0)).mean(0),
                           prof.mean(0), prof.std(0)])


def test_classes_have_distinct_sounds_and_colours(tmp_path):
    """Leave-one-out nearest class centroid on decoded mp4s: colours exact, timbre well above
    chance (1/8), using generic features that know nothing about the generator."""
    config = synthetic.ClipConfig(duration=3.0)
    feats, hues, labels = [], [], []
    for label in range(8):
        for r in range(4):
            clip = synthetic.generate_clip([11, label, r], label, config)
            path = tmp_path / f"{label}_{r}.mp4"
            synthetic.write_clip_mp4(path, clip.frames, clip.fps, clip.audio, clip.sample_rate)
            d = decode(path)
            feats.append(_timbre_features(d["audio"][0]))
            px = d["frames"][chroma(d["frames"]) > 60].astype(float) / 255.0
            r_, g_, b_ = px[:, 0], px[:, 1], px[:, 2]
            # Mean hue angle of the coloured pixels (circular mean in the chromaticity plane).
            hues.append(np.degrees(np.arctan2(np.sqrt(3) * (g_ - b_).mean(),
                                              (2 * r_ - g_ - b_).mean())) % 360)
            labels.append(label)
    labels = np.array(labels)
    class_hues = np.array([c.hue for c in synthetic.class_table(8)])
    err = np.abs((np.array(hues)[:, None] - class_hues[None] + 180) % 360 - 180)
    assert np.array_equal(err.argmin(1), labels)

    f = np.array(feats)
    f = (f - f.mean(0)) / (f.std(0) + 1e-9)
    correct = 0
    for i in range(len(labels)):
        rest = np.arange(len(labels)) != i
        cents = np.stack([f[rest & (labels == c)].mean(0) for c in range(8)])
        correct += int(np.argmin(((cents - f[i]) ** 2).sum(1)) == labels[i])
    assert correct / len(labels) >= 0.7, correct


def test_same_seed_same_bytes_and_parallel(tmp_path):
    a, b = synthetic.generate_clip([3, 1], 2), synthetic.generate_clip([3, 1], 2)
    assert np.array_equal(a.frames, b.frames) and np.array_equal(a.audio, b.audio)
    c = synthetic.generate_clip([3, 2], 2)
    assert not np.array_equal(a.frames, c.frames)
    args = ["--num_clips", "3", "--seed", "7", "--duration", "3", "--no_progress"]
    prep.main(["--output", str(tmp_path / "serial"), *args])
    prep.main(["--output", str(tmp_path / "parallel"), "--workers", "2", *args])

    def digest(p: pathlib.Path) -> str:
        return hashlib.sha256(p.read_bytes()).hexdigest()

    for i in range(3):
        name = f"clip_{i:05d}.mp4"
        assert digest(tmp_path / "serial" / name) == digest(tmp_path / "parallel" / name)
    assert (tmp_path / "serial" / "labels.csv").read_text() == (
        tmp_path / "parallel" / "labels.csv").read_text()


def test_same_bytes_in_every_process(tmp_path):
    """Fresh processes draw byte-identical mp4s. (With x264's mbtree on, some 64 x 64 files
    differed from one process to the next: 3 to 19 of 40 clips between two processes.)"""
    args = ["--num_clips", "12", "--seed", "0", "--gaps", "off", "--size", "64", "64",
            "--no_progress"]
    digests = []
    for run in range(3):
        out = tmp_path / str(run)
        subprocess.run([sys.executable, "-m", "data_prep.synthetic", "--output", str(out), *args],
                       check=True, cwd=pathlib.Path(__file__).parents[1])
        digests.append([hashlib.sha256((out / f"clip_{i:05d}.mp4").read_bytes()).hexdigest()
                        for i in range(12)])
    differ = [i for i in range(12) if len({d[i] for d in digests}) > 1]
    assert not differ, f"clips {differ} differ between processes"


@_procs.linux_only
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_workers_end_with_the_drawing_process(tmp_path, sig):
    """Killing `data_prep.synthetic --workers 2` (even with SIGKILL) ends its workers within
    seconds; none is left behind, drawing or blocked."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "data_prep.synthetic", "--output", str(tmp_path / "out"),
         "--num_clips", "400", "--size", "64", "64", "--workers", "2", "--no_progress"],
        cwd=pathlib.Path(__file__).parents[1], stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not list((tmp_path / "out").glob("clip_*.mp4")):  # the workers are drawing
            assert proc.poll() is None and time.monotonic() < deadline, "no clip drawn"
            time.sleep(0.2)
        workers = _procs.children(proc.pid)
        assert len(workers) >= 2, workers
        proc.send_signal(sig)
        proc.wait(timeout=10)
    finally:
        proc.kill()
        proc.wait()
    deadline = time.monotonic() + 5
    while not all(_procs.gone(p) for p in workers):
        assert time.monotonic() < deadline, f"workers {workers} outlived their parent"
        time.sleep(0.1)


def test_stereo_44k_short_clip(tmp_path):
    config = synthetic.ClipConfig(duration=3.0, fps=10, height=96, width=160, sample_rate=44100,
                                  channels=2, num_classes=12)
    clip = synthetic.generate_clip(0, 11, config)
    assert clip.frames.shape == (30, 96, 160, 3) and clip.audio.shape == (132300, 2)
    path = tmp_path / "s.mp4"
    synthetic.write_clip_mp4(path, clip.frames, clip.fps, clip.audio, clip.sample_rate)
    d = decode(path)
    assert d["channels"] == 2 and d["rate"] == 44100 and d["frames"].shape == (30, 96, 160, 3)
    assert 132300 <= d["audio"].shape[1] < 132300 + 1024


def test_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError):
        synthetic.generate_clip(0, 8, synthetic.ClipConfig(num_classes=8))
    with pytest.raises(ValueError):
        synthetic.write_clip_mp4(tmp_path / "x.mp4", np.zeros((2, 5, 4, 3), np.uint8), 10,
                                 np.zeros(100, np.float32), SR)
