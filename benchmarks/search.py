"""Times one moment-search query over a large index (default 1,000,000 moments x 768 dims).

Builds a synthetic index on disk in the real format (float16 unit vectors, memory-mapped; files
of one hour, 16 moments per 10 s segment), opens it with `cavmae_jax.search.Searcher`, and
times: loading the two embedding sides into memory (once per process), then one query end to
end -- a sound query scored against every moment's picture and sound, both ranked to the top
10 hits with nearby moments merged. The model's query embedding (one forward pass) is not
included; `make demo`-sized models take milliseconds for it. Prints a table and writes JSON.
Not part of pytest.

  .venv/bin/python benchmarks/search.py [--moments 1000000] [--dim 768] [--repeats 5]
      [--json benchmarks/results/cpu-2core/search.json] [--index_dir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import shutil
import statistics
import sys
import tempfile
import time

import _report  # benchmarks/_report.py, imported while this folder is still on sys.path
import numpy as np

# Run as a script, this folder comes first on sys.path, and its data_prep.py would shadow the
# data_prep package that cavmae_jax.search imports: look in the repository root instead.
if sys.path and pathlib.Path(sys.path[0]).resolve() == pathlib.Path(__file__).resolve().parent:
    sys.path[0] = str(pathlib.Path(__file__).resolve().parents[1])

from cavmae_jax.search import store  # noqa: E402
from cavmae_jax.search.query import Query  # noqa: E402
from cavmae_jax.search.searcher import Searcher  # noqa: E402
from cavmae_jax.search.segments import InputSpec  # noqa: E402


def make_index(directory: pathlib.Path, moments: int, dim: int, seed: int = 0) -> None:
    """A synthetic index of `moments` rows in the on-disk format, written a chunk at a time."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    names = {k: f"{k}.bench.npy" for k in (*store.SIDES, "moments")}
    per_file = 360 * 16  # one hour of 10 s segments
    for side in store.SIDES:
        arr = np.lib.format.open_memmap(directory / names[side], mode="w+", dtype=np.float16,
                                        shape=(moments, dim))
        for i in range(0, moments, 65536):
            x = rng.standard_normal((min(65536, moments - i), dim), dtype=np.float32)
            arr[i:i + len(x)] = x / np.linalg.norm(x, axis=1, keepdims=True)
        arr.flush()
        del arr
    rows = np.zeros(moments, store.MOMENT_DTYPE)
    idx = np.arange(moments)
    rows["file"], within = np.divmod(idx, per_file)
    rows["segment"], rows["pair"] = np.divmod(within, 16)
    rows["has_video"] = rows["has_audio"] = True
    rows["time"] = rows["segment"] * 10.0 + rows["pair"] * 0.625
    rows["win_start"] = rows["time"]
    rows["win_end"] = rows["time"] + 4.175
    rows["frame"] = (rows["time"] * 25).astype(np.int64)
    np.save(directory / names["moments"], rows)
    n_files = int(rows["file"][-1]) + 1
    files = [{"path": f"/footage/{i:04d}.mp4", "name": f"{i:04d}.mp4", "size": 0,
              "mtime_ns": 0, "first": i * per_file,
              "count": min(per_file, moments - i * per_file), "segments": 360,
              "has_video": True, "duration_s": 3600.0} for i in range(n_files)]
    identity = {"model": {"embed_dim": dim}, "inputs": InputSpec().to_dict(),
                "weights": "synthetic", "checkpoint": "synthetic"}
    manifest = {"format": store.FORMAT, "version": store.VERSION, "identity": identity,
                "checkpoint": "synthetic", "source_checkpoint": "", "dim": dim,
                "arrays": names, "files": files, "failures": [], "moments": moments}
    store.atomic_write_text(directory / store.MANIFEST, json.dumps(manifest) + "\n")


def _times(fn, repeats: int) -> dict[str, float]:
    fn()  # warm-up (compiles the scan)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return {"min": min(times), "median": statistics.median(times)}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--moments", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=768)
    p.add_argument("--top", type=int, default=10)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--index_dir", default=None, help="build the index here (default: a temp "
                   "folder, deleted afterwards)")
    p.add_argument("--json", dest="json_out", default="benchmarks/results/cpu-2core/search.json")
    args = p.parse_args(argv)

    tmp = None
    if args.index_dir:
        directory = pathlib.Path(args.index_dir)
    else:
        tmp = tempfile.mkdtemp(prefix="search_bench_")
        directory = pathlib.Path(tmp) / "idx"
    try:
        t0 = time.perf_counter()
        make_index(directory, args.moments, args.dim)
        build_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        searcher = Searcher(directory)
        searcher.preload()
        load_s = time.perf_counter() - t0
        rng = np.random.default_rng(1)
        q = rng.standard_normal(args.dim).astype(np.float32)
        q /= np.linalg.norm(q)
        query = Query("audio", "bench", audio=q)
        scores = searcher.scores(q, "video")
        rows = [
            ("score one side", _times(lambda: searcher.scores(q, "video"), args.repeats)),
            (f"rank top {args.top}", _times(lambda: searcher.rank(scores, args.top),
                                             args.repeats)),
            ("query: both sides, ranked", _times(lambda: searcher.search(query, args.top),
                                                  args.repeats)),
        ]
        # The same scoring straight from the memory map with numpy (no preload), for reference.
        mm = searcher.index.video

        def numpy_scan():
            out = np.empty(len(mm), np.float32)
            buf = np.empty((32768, args.dim), np.float32)
            for i in range(0, len(mm), 32768):
                b = buf[:len(mm[i:i + 32768])]
                np.copyto(b, mm[i:i + 32768])
                np.dot(b, q, out=out[i:i + len(b)])
            return out

        rows.append(("numpy from mmap, one side", _times(numpy_scan, min(args.repeats, 2))))
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)

    gb = 2 * args.moments * args.dim * 2 / 1e9
    print(f"moment search: {args.moments:,} moments x {args.dim} dims float16 ({gb:.2f} GB, "
          f"both sides), {os.cpu_count()} CPUs, numpy {np.__version__}; seconds, min (median) "
          f"of {args.repeats}")
    print(f"build synthetic index {build_s:.1f} s; open + load both sides {load_s:.2f} s")
    header = f"{'step':<28} {'seconds':>17}"
    print(header)
    print("-" * len(header))
    for name, t in rows:
        print(f"{name:<28} {t['min']:>8.3f} ({t['median']:.3f})")
    import jax

    result = {
        "config": {"moments": args.moments, "dim": args.dim, "dtype": "float16",
                   "top": args.top, "repeats": args.repeats},
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "python": sys.version.split()[0], "numpy": np.__version__,
                    "jax": jax.__version__},
        "build_s": build_s, "load_s": load_s,
        "results": [{"step": name, "seconds": t} for name, t in rows],
    }
    if args.json_out:
        _report.write_json(args.json_out, result)
    return result


if __name__ == "__main__":
    main()
