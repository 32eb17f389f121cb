"""Times retrieval scoring at the VGGSound protocol size (1,545 clips x 16 pairs x 768 dims).

For every aggregation strategy: the similarity matrix, then the metrics of both directions.
Prints a table and optionally writes JSON. Not part of pytest.

  .venv/bin/python benchmarks/retrieval.py [--json OUT] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

import _report  # benchmarks/_report.py
import numpy as np

from cavmae_jax.evaluate import retrieval as R


def _time(fn, repeats: int) -> tuple[dict[str, float], object]:
    """Min and median wall seconds over `repeats` calls (after one warm-up), and the last result.

    Compare the min: on a shared host, contention only ever adds time.
    """
    out = fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return {"min": min(times), "median": statistics.median(times)}, out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--num_clips", type=int, default=1545)
    p.add_argument("--pairs", type=int, default=16)
    p.add_argument("--dim", type=int, default=768)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--strategies", nargs="+", default=list(R.STRATEGIES), choices=R.STRATEGIES)
    p.add_argument("--json", dest="json_out", default=None, help="write results here")
    args = p.parse_args(argv)

    rng = np.random.default_rng(0)
    shape = (args.num_clips, args.pairs, args.dim)
    # Noisy copies, so that the metrics are neither 0 nor 100 for every strategy.
    audio = rng.standard_normal(shape, dtype=np.float32)
    video = audio + 30.0 * rng.standard_normal(shape, dtype=np.float32)

    rows = []
    for strategy in args.strategies:
        t_sim, sim = _time(lambda s=strategy: R.similarity(audio, video, s), args.repeats)
        t_met, (m_a2v, m_v2a) = _time(
            lambda sim=sim: (R.retrieval_metrics(sim), R.retrieval_metrics(sim.T)), args.repeats
        )
        t_all, _ = _time(lambda s=strategy: R.evaluate_retrieval(audio, video, s), args.repeats)
        rows.append(
            {
                "strategy": strategy,
                "similarity_s": t_sim,
                "metrics_both_dirs_s": t_met,
                "evaluate_retrieval_s": t_all,
                "a2v_r1": m_a2v["r1"],
                "v2a_r1": m_v2a["r1"],
            }
        )

    print(
        f"retrieval scoring: N={args.num_clips} K={args.pairs} D={args.dim} float32, numpy "
        f"{np.__version__}, {os.cpu_count()} CPUs; seconds, min (median) of {args.repeats}"
    )
    header = (
        f"{'strategy':<14} {'similarity':>17} {'metrics (both)':>17} {'evaluate_retrieval':>19}"
        "  A2V R@1  V2A R@1"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        cells = [
            f"{r[key]['min']:.3f} ({r[key]['median']:.3f})"
            for key in ("similarity_s", "metrics_both_dirs_s", "evaluate_retrieval_s")
        ]
        print(
            f"{r['strategy']:<14} {cells[0]:>17} {cells[1]:>17} {cells[2]:>19}"
            f"  {r['a2v_r1']:7.2f}  {r['v2a_r1']:7.2f}"
        )
    result = {
        "config": {
            "num_clips": args.num_clips,
            "pairs": args.pairs,
            "dim": args.dim,
            "dtype": "float32",
            "repeats": args.repeats,
        },
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": sys.version.split()[0],
            "numpy": np.__version__,
        },
        "results": rows,
    }
    if args.json_out:
        _report.write_json(args.json_out, result)
    return result


if __name__ == "__main__":
    main()
