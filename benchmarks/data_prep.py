"""Times `data_prep.convert` on 10 s synthetic videos: clips/s in total and per worker.

Writes `--num_clips` synthetic mp4s once (not timed), then converts them into a fresh output
folder with each worker count (spawned processes included in the time). `--with_tfds` adds the
TFDS builder (in-process, and on Beam's DirectRunner with the same worker counts) when the
[beam] extra is installed. Prints a table and optionally writes JSON. Not part of pytest.

  .venv/bin/python benchmarks/data_prep.py [--num_clips 32] [--workers 1 2] [--json OUT]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

# Run as a script, this file's folder comes first on sys.path and its name would shadow the
# `data_prep` package: drop that folder. The project imports live inside main(), so the spawned
# convert workers (which re-import this file as __mp_main__) do not pay for them.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]


def _timed(fn: Callable[[str], Any], root: str, name: str, repeats: int) -> tuple[float, Any]:
    """Min wall seconds of `fn(fresh_output_dir)` over `repeats` runs (contention only adds)."""
    best, out = float("inf"), None
    for r in range(repeats):
        t0 = time.perf_counter()
        out = fn(os.path.join(root, f"{name}_{r}"))
        best = min(best, time.perf_counter() - t0)
    return best, out


def _row(tool: str, workers: int, n: int, seconds: float, records: int) -> dict[str, Any]:
    return {"tool": tool, "workers": workers, "clips": n, "records": records,
            "seconds": seconds, "clips_per_s": n / seconds,
            "clips_per_s_per_worker": n / seconds / workers}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--num_clips", type=int, default=32)
    p.add_argument("--duration", type=float, default=10.0, help="seconds per clip")
    p.add_argument("--size", type=int, default=128, help="synthetic frame height = width")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--repeats", type=int, default=2, help="runs per row; the table shows the min")
    p.add_argument("--with_tfds", action="store_true",
                   help="also time data_prep.tfds_builder (needs the [beam] extra)")
    p.add_argument("--workdir", default=None, help="keep inputs/outputs here (default: temp)")
    p.add_argument("--json", dest="json_out", default=None, help="write results here")
    args = p.parse_args(argv)

    from cavmae_jax.data import synthetic as synth
    from data_prep import convert
    from data_prep import synthetic as prep

    tmp = tempfile.TemporaryDirectory() if args.workdir is None else None
    root = args.workdir or tmp.name
    clips = os.path.join(root, "clips")
    config = synth.ClipConfig(duration=args.duration, height=args.size, width=args.size)
    t0 = time.perf_counter()
    prep.write_dataset(clips, args.num_clips, 0, config, workers=max(args.workers),
                       progress=False)
    t_gen = time.perf_counter() - t0
    cfg = convert.ConvertConfig()
    rows = []
    for w in args.workers:
        sec, meta = _timed(lambda out, w=w: convert.convert(clips, out, cfg, workers=w,
                                                            progress=False),
                           root, f"convert_w{w}", args.repeats)
        rows.append(_row("data_prep.convert", w, args.num_clips, sec, meta["num_records"]))
    if args.with_tfds:
        from data_prep import tfds_builder

        src = tfds_builder.Source(clips)
        runs = [("tfds_builder (no Beam)", 1, None, None)] + [
            ("tfds_builder (Beam DirectRunner)", w, "DirectRunner",
             [f"--direct_num_workers={w}", "--direct_running_mode=multi_processing"])
            for w in args.workers]
        for i, (tool, w, runner, opts) in enumerate(runs):
            sec, b = _timed(lambda d, r=runner, o=opts: tfds_builder.build(
                src, d, cfg, beam_runner=r, beam_options=o), root, f"tfds_{i}", args.repeats)
            rows.append(_row(tool, w, args.num_clips, sec, b.info.metadata["num_records"]))

    print(f"{args.num_clips} synthetic clips, {args.duration:g} s, {args.size}x{args.size}, "
          f"written in {t_gen:.1f} s; {os.cpu_count()} CPUs")
    print(f"{'tool':34s} {'workers':>7s} {'seconds':>8s} {'clips/s':>8s} {'per worker':>10s}")
    for r in rows:
        print(f"{r['tool']:34s} {r['workers']:7d} {r['seconds']:8.2f} {r['clips_per_s']:8.2f} "
              f"{r['clips_per_s_per_worker']:10.2f}")
    result = {"benchmark": "data_prep", "num_clips": args.num_clips, "duration_s": args.duration,
              "repeats": args.repeats, "seconds_are": "min over repeats",
              "frame_size": args.size, "settings": dataclasses.asdict(cfg),
              "cpu_count": os.cpu_count(), "python": sys.version.split()[0],
              "platform": platform.platform(), "rows": rows}
    if args.json_out:
        os.makedirs(os.path.dirname(os.path.abspath(args.json_out)), exist_ok=True)
        with open(args.json_out, "w") as f:
            json.dump(result, f, indent=2)
    if tmp is not None:
        tmp.cleanup()
    return result


if __name__ == "__main__":
    main()
