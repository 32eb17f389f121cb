"""Times the demo recipe's train step at several frame sizes: what smaller frames buy.

The demo (`configs/demo.py`) trains 64 x 64 frames because, on 2 CPU cores, the step time is
what limits how many clips and steps fit in ten minutes. This script builds the recipe's own
train step (`train.run.Run`, the demo's model, optimizer and batch: 8 clips x 4 moments) for
each `--sizes` frame size and prints milliseconds a step. Not part of pytest.

  .venv/bin/python benchmarks/demo_step.py [--sizes 112 96 80 64] [--steps 20] [--json OUT]
"""

from __future__ import annotations

import argparse
import os
import pathlib
import platform
import statistics
import sys
import time
from typing import Any

# Run as a script: put the repository root, not benchmarks/, first on sys.path.
_HERE = pathlib.Path(__file__).resolve().parent
sys.path[:] = [q for q in sys.path if pathlib.Path(q or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks import _report  # noqa: E402
from benchmarks.model_step import make_batch  # noqa: E402
from cavmae_jax import config, hostmem  # noqa: E402
from cavmae_jax.train.run import Run  # noqa: E402
from configs import demo  # noqa: E402


def time_step(img_size: int, steps: int, warmup: int) -> dict[str, Any]:
    """Median and min seconds of the demo recipe's train step at `img_size` x `img_size`."""
    tree = demo.get_config()
    tree.model.img_size = img_size
    cfg = config.build(tree)
    run = Run.build(cfg, devices=[jax.devices()[0]], metadata={})
    state = run.init_state()
    batch = make_batch(cfg.model, cfg.train.global_batch_size)
    compiled = run.train_step.lower(state, batch, np.bool_(False)).compile()
    times = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        state, metrics = compiled(state, batch, np.bool_(False))
        jax.block_until_ready((state, metrics))
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    patches = (img_size // cfg.model.patch_size) ** 2
    return {"img_size": img_size, "video_patches": patches, "step_ms_median":
            1e3 * statistics.median(times), "step_ms_min": 1e3 * min(times),
            "step_ms": [1e3 * t for t in times]}


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[112, 96, 80, 64])
    parser.add_argument("--steps", type=int, default=20, help="timed steps per size")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps after compiling")
    parser.add_argument("--json", default=None, help="write the result here")
    args = parser.parse_args(argv)
    load_before = list(os.getloadavg())
    rows = [time_step(s, args.steps, args.warmup) for s in args.sizes]
    batch = demo.get_config().train.global_batch_size
    print(f"demo train step, batch {batch}, {jax.devices()[0].device_kind}, "
          f"{os.cpu_count()} CPU(s), load before {load_before[0]:.2f}")
    print(f"{'frame':>9} {'patches':>8} {'ms median':>10} {'ms min':>8}")
    for r in rows:
        print(f"{r['img_size']:>4} x {r['img_size']:<3} {r['video_patches']:>8} "
              f"{r['step_ms_median']:>10.1f} {r['step_ms_min']:>8.1f}")
    if hint := hostmem.cpu_hint(jax.devices()[0].platform):
        print(f"note: {hint}")
    if args.json:
        _report.write_json(args.json, {
            "batch": batch, "host": platform.node(), "cpu_count": os.cpu_count(),
            "jax": jax.__version__, "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""),
            "load_avg_before": load_before, "rows": rows})
    return rows


if __name__ == "__main__":
    main()
