"""Long inputs and worker processes: bounded memory, one pass, crashed and orphaned workers.

The long inputs are real Matroska files written with PyAV: 16x16 H.264 at 2 fps and mono FLAC
at 16 kHz (a 30-minute file takes about a second to write and is 12 MB).
"""

from __future__ import annotations

import fractions
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import av
import numpy as np
import pytest
from _av_clips import write_clip
from _procs import children, gone, linux_only
from array_record.python.array_record_module import ArrayRecordReader

from cavmae_jax import audio, video
from cavmae_jax.data import records
from data_prep import convert


def write_long(path: pathlib.Path, seconds: int, fps: int = 2, size: int = 16,
               sample_rate: int = 16000) -> pathlib.Path:
    """`seconds` of a tone whose loudness changes every second, and frames whose gray level
    changes with every frame (mod 256)."""
    t = np.arange(sample_rate) / sample_rate
    tone = np.sin(2 * np.pi * 440 * t)
    with av.open(str(path), "w", format="matroska") as out:
        vs = out.add_stream("libx264", rate=fps)
        vs.width = vs.height = size
        vs.pix_fmt = "yuv420p"
        vs.options = {"preset": "ultrafast", "g": str(10 * fps)}
        aus = out.add_stream("flac", rate=sample_rate)
        aus.layout = "mono"
        for s in range(seconds):
            pcm = (tone * (0.05 + 0.04 * (s % 7)) * 32767).astype(np.int16)[None]
            frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
            frame.sample_rate, frame.pts = sample_rate, s * sample_rate
            frame.time_base = fractions.Fraction(1, sample_rate)
            for p in aus.encode(frame):
                out.mux(p)
            for k in range(s * fps, (s + 1) * fps):
                img = np.full((size, size, 3), (7 * k) % 256, np.uint8)
                for p in vs.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                    out.mux(p)
        for stream in (aus, vs):
            for p in stream.encode(None):
                out.mux(p)
    return path


@pytest.fixture(scope="module")
def long_files(tmp_path_factory) -> dict[int, pathlib.Path]:
    """Minutes -> a long file."""
    root = tmp_path_factory.mktemp("long")
    return {m: write_long(root / f"long{m}.mkv", 60 * m) for m in (5, 10, 30)}


def _folder(tmp_path: pathlib.Path, name: str, files: dict[str, pathlib.Path]) -> pathlib.Path:
    d = tmp_path / name
    d.mkdir()
    for fname, src in files.items():
        shutil.copyfile(src, d / fname)
    return d


def _records(out: pathlib.Path) -> list[dict]:
    recs = []
    for shard in sorted(out.glob("*.array_record-*")):
        reader = ArrayRecordReader(str(shard))
        recs += [records.decode(b) for b in reader.read_all()]
        reader.close()
    return recs


# The parent's peak is VmHWM where /proc has it: ru_maxrss survives exec and can report the peak
# of the (v)forking test process instead. The workers' is the largest child's ru_maxrss.
_MEASURE = textwrap.dedent("""
    import json, os, resource, sys
    def own_peak_mb():
        if os.path.exists("/proc/self/status"):
            for line in open("/proc/self/status"):
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if __name__ == "__main__":
        from data_prep import convert
        rc = convert.main(sys.argv[1:])
        print(json.dumps({"rc": rc, "parent_mb": own_peak_mb(),
                          "worker_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
                          / 1024}))
""")


def _peak_rss(tmp_path: pathlib.Path, *args: str) -> dict:
    """Runs the convert CLI in a fresh process; its own and its workers' peak RSS (MB)."""
    script = tmp_path / "measure.py"
    script.write_text(_MEASURE)
    root = str(pathlib.Path(__file__).parents[1])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, str(script), *args, "--workers", "2", "--no_progress"],
                          capture_output=True, text=True, timeout=120, cwd=root, env=env)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_long_input_memory_stays_bounded(tmp_path, long_files):
    """A 30-minute input converts in about the memory of a 10 s clip, with or without
    --split_long. Decoding its whole audio track would need 115 MB for the 16 kHz float32
    waveform alone, and twice that while concatenating (the earlier code peaked at ~400 MB)."""
    short = tmp_path / "short"
    short.mkdir()
    write_clip(short / "c.mp4", seconds=10.0, fps=4, size=(16, 16))
    base = _peak_rss(tmp_path, "--input", str(short), "--output", str(tmp_path / "o_short"))
    src = _folder(tmp_path, "in", {"long.mkv": long_files[30]})
    whole = _peak_rss(tmp_path, "--input", str(src), "--output", str(tmp_path / "o_whole"))
    split = _peak_rss(tmp_path, "--input", str(src), "--output", str(tmp_path / "o_split"),
                      "--split_long", "--num_frames", "4")
    track_mb = 30 * 60 * 16000 * 4 / 2**20
    for run in (whole, split):
        for who in ("parent_mb", "worker_mb"):
            assert run[who] < 300 and run[who] < base[who] + track_mb / 2, (who, run, base)
    meta = json.loads((tmp_path / "o_split" / "metadata.json").read_text())
    assert meta["num_records"] == 180 and meta["num_failed"] == 0
    assert not list((tmp_path / "o_split" / ".convert").glob("spill-*"))  # spill files removed


def test_long_input_without_split_reads_only_its_start(tmp_path, long_files):
    """Without --split_long a record uses the first clip of the input: only the start of the
    audio is decoded, and the record is what the same start converted alone gives."""
    cfg = convert.ConvertConfig(num_frames=4)
    item = convert.Item(id="x", split="train", source="x", video=str(long_files[30]))
    t0 = time.perf_counter()
    (ex,) = convert.process_clip(item, cfg)
    assert time.perf_counter() - t0 < 10  # the old whole-track decode took longer, not a bound
    head = audio.load_audio(long_files[30], max_samples=16000 * 60)
    assert ex["source"]["duration_s"] == 60.0  # the decoded part (convert.clips.MAX_AUDIO_SECONDS)
    fbank, n = audio.wave_to_fbank(head)
    np.testing.assert_array_equal(ex["fbank"], fbank)
    assert n == ex["num_fbank_frames"] == 1024


def _count_opens(monkeypatch) -> list[str]:
    opened: list[str] = []
    real = av.open

    def counting(path, *args, **kwargs):
        opened.append(str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(av, "open", counting)
    return opened


def test_split_long_is_one_pass_and_matches_random_access(tmp_path, long_files, monkeypatch):
    """--split_long decodes each input once, front to back, whatever its length (the earlier
    code decoded the video again from the start for every segment: quadratic time), and every
    segment equals a direct read of its own audio samples and frames."""
    opens, seconds = {}, {}
    for minutes in (5, 10):
        src = _folder(tmp_path, f"in{minutes}", {"long.mkv": long_files[minutes]})
        opened = _count_opens(monkeypatch)
        t0 = time.process_time()  # CPU time: other tests running beside it do not count
        assert convert.main(["--input", str(src), "--output", str(tmp_path / f"o{minutes}"),
                             "--split_long", "--num_frames", "4", "--workers", "1",
                             "--no_progress"]) == 0
        seconds[minutes] = time.process_time() - t0
        monkeypatch.undo()
        opens[minutes] = len(opened)
    # probe + one audio pass + one video pass, for 30 and for 60 segments alike
    assert opens[5] == opens[10] == 3, opens
    assert seconds[10] < 4 * seconds[5], seconds  # coarse: linear is 2x, quadratic 4x and more

    recs = _records(tmp_path / "o5")
    assert [r["id"] for r in recs] == [f"long_seg{j:03d}" for j in range(30)]
    path = long_files[5]
    wave = audio.load_audio(path)
    info = video.probe(path)
    for j in (0, 13, 29):
        r = recs[j]
        seg = wave[j * 160000:(j + 1) * 160000]
        fbank, n = audio.wave_to_fbank(seg)
        np.testing.assert_array_equal(r["fbank"], fbank.astype(np.float16).astype(np.float32))
        assert r["num_fbank_frames"] == n and r["source"]["start_s"] == 10.0 * j
        frames, idx, _ = video.read_frames(path, 4, 10.0, 20 * j, info=info)
        np.testing.assert_array_equal(r["source_frame_index"], idx)
        for got, want in zip(r["frames"], frames, strict=True):
            assert np.abs(got.astype(int) - want).max() <= 8  # the same frame, JPEG-coded


def _holding(pids: list[int], suffix: str) -> list[int]:
    """The pids among `pids` that have a file ending in `suffix` open."""
    out = []
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}").endswith(suffix):
                    out.append(pid)
                    break
            except OSError:
                continue
    return out


def _start_convert(src: pathlib.Path, out: pathlib.Path) -> subprocess.Popen:
    """The convert CLI in a subprocess; its output goes to files (pipes would stay open as long
    as any worker lives), `<out>.stdout` and `<out>.stderr`."""
    with open(f"{out}.stdout", "w") as so, open(f"{out}.stderr", "w") as se:
        return subprocess.Popen(
            [sys.executable, "-m", "data_prep.convert", "--input", str(src), "--output", str(out),
             "--split_long", "--num_frames", "2", "--workers", "2", "--no_progress"],
            stdout=so, stderr=se, cwd=pathlib.Path(__file__).parents[1])


def _wait_for(cond, timeout: float, what: str):
    deadline = time.time() + timeout
    while time.time() < deadline:
        got = cond()
        if got:
            return got
        time.sleep(0.005)
    raise AssertionError(f"timed out waiting for {what}")


@linux_only
def test_worker_killed_midway_is_recorded_and_the_run_goes_on(tmp_path, long_files):
    """A worker killed while converting an input (as the OOM killer does) fails only that input:
    failures.jsonl names it, the other inputs are converted, and a rerun skips it."""
    files = {"m_long.mkv": long_files[10]}
    src = _folder(tmp_path, "in", files)
    for name in ("a", "b", "z"):
        write_clip(src / f"{name}.mp4", seconds=1.0, fps=4, size=(16, 16))
    out = tmp_path / "out"
    proc = _start_convert(src, out)
    try:
        (victim,) = _wait_for(lambda: _holding(children(proc.pid), "m_long.mkv"), 60,
                              "a worker converting m_long.mkv")
        os.kill(victim, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        proc.kill()
    stderr = pathlib.Path(f"{out}.stderr").read_text()
    assert proc.returncode == 0, stderr
    assert "worker process died (killed: out of memory?) converting m_long.mkv" in stderr
    fails = [json.loads(x) for x in (out / "failures.jsonl").read_text().splitlines()]
    assert fails == [{"id": "m_long", "path": "m_long.mkv", "split": "train",
                      "reason": "worker process died (killed: out of memory?)"}]
    assert sorted(r["id"] for r in _records(out)) == ["a", "b", "z"]

    rerun = subprocess.run([sys.executable, "-m", "data_prep.convert", "--input", str(src),
                            "--output", str(out), "--split_long", "--num_frames", "2",
                            "--workers", "2", "--no_progress"], capture_output=True, text=True,
                           timeout=60, cwd=pathlib.Path(__file__).parents[1])
    assert rerun.returncode == 0 and "0 inputs processed now" in rerun.stdout, rerun.stdout
    assert "1 failed" in rerun.stdout


@linux_only
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_workers_exit_when_convert_is_killed(tmp_path, long_files, sig):
    """Killing the convert process (even with SIGKILL) ends its workers within seconds, also
    those in the middle of an input; none is left blocked."""
    src = _folder(tmp_path, "in", {f"l{i}.mkv": long_files[10] for i in range(3)})
    proc = _start_convert(src, tmp_path / "out")
    try:
        busy = _wait_for(lambda: (lambda b: b if len(b) == 2 else None)(
            _holding(children(proc.pid), ".mkv")), 60, "two busy workers")
        workers = children(proc.pid)
        assert set(busy) <= set(workers)
        proc.send_signal(sig)
        proc.wait(timeout=10)
    finally:
        proc.kill()
        proc.wait()
    _wait_for(lambda: all(gone(p) for p in workers), 5, f"workers {workers} to exit")
