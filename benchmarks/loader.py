"""Times the Grain pipelines (train, eval, retrieval) on real ArrayRecord shards.

Without --data_dir it first writes synthetic 10 s clips (data_prep.synthetic) and converts them
(data_prep.convert) into a temporary folder. For each pipeline and worker count it reports the
startup time (iterator creation + first batch) and the steady rate over the following batches.
Prints a table and optionally writes JSON. Not part of pytest.

  .venv/bin/python benchmarks/loader.py [--data_dir DIR] [--workers 0 2] [--json OUT] \
      [--step_json model_step.json]

With --step_json (the JSON that benchmarks/model_step.py wrote for the same model config) each
train row also shows how many times faster the pipeline delivers than the step consumes.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import pathlib
import platform
import sys
import tempfile
import time
from typing import Any

from absl import flags

from cavmae_jax.data import pipeline
from cavmae_jax.data import synthetic as synth

FINETUNE_AUGMENT = {"noise": True, "freqm": 48, "timem": 192, "mixup": 0.5, "label_smooth": 0.1}
SYNC_CROP_AUGMENT = {"crop_and_flip": True}


def make_shards(root: pathlib.Path, num_clips: int, duration: float, workers: int) -> str:
    """Synthetic mp4 clips -> data_prep.convert; all records in both 'train' and 'eval'."""
    # `python benchmarks/loader.py` puts benchmarks/ first on sys.path, where the convert
    # benchmark `benchmarks/data_prep.py` would shadow the `data_prep` package.
    here = pathlib.Path(__file__).resolve().parent
    sys.path[:] = [q for q in sys.path if pathlib.Path(q or ".").resolve() != here]
    sys.path.insert(0, str(here.parent))
    from data_prep import convert
    from data_prep import synthetic as prep

    cfg = synth.ClipConfig(duration=duration)
    rows = prep.write_dataset(root / "clips", num_clips, seed=0, config=cfg, workers=workers,
                              progress=False)
    with open(root / "pairs.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["visual", "labels", "id", "split"])
        for split in ("train", "eval"):
            for r in rows:
                w.writerow([str(root / "clips" / r["path"]), r["label_name"],
                            f"{split}_{r['id']}", split])
    out = root / "records"
    convert.main(["--input", str(root / "pairs.csv"), "--output", str(out), "--workers",
                  str(workers), "--no_progress"])
    return str(out)


def _time(make_iter, batches: int, per_batch: int) -> dict[str, float]:
    """Startup seconds (build + first batch), steady samples/s over the next `batches`, and the
    overall rate including startup (the honest number for short eval/retrieval passes)."""
    t0 = time.perf_counter()
    it = make_iter()
    next(it)
    t1 = time.perf_counter()
    done = 0
    for _ in range(batches):
        try:
            next(it)
        except StopIteration:
            break
        done += 1
    t2 = time.perf_counter()
    it.close()
    return {"startup_s": t1 - t0, "batches": done,
            "samples_per_s": done * per_batch / max(t2 - t1, 1e-9),
            "overall_per_s": (done + 1) * per_batch / max(t2 - t0, 1e-9)}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data_dir", default=None, help="data_prep.convert output (else synthetic)")
    p.add_argument("--train_split", default="train")
    p.add_argument("--eval_split", default="eval")
    p.add_argument("--num_clips", type=int, default=48, help="synthetic clips to write")
    p.add_argument("--duration", type=float, default=10.0, help="synthetic clip seconds")
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--batches", type=int, default=12, help="timed batches after the first")
    p.add_argument("--retrieval_clips", type=int, default=24, help="timed retrieval clips")
    p.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    p.add_argument("--read_threads", type=int, default=2)
    p.add_argument("--window_length", type=int, default=416)
    p.add_argument("--json", dest="json_out", default=None, help="write results here")
    p.add_argument("--step_json", default=None,
                   help="benchmarks/model_step.py --json output: compare with its samples/s")
    args = p.parse_args(argv)
    step = None
    if args.step_json:
        step = json.loads(pathlib.Path(args.step_json).read_text())
        print(f"train step ({step['arch']} {step['size']}, {step['dtype']}, batch "
              f"{step['batch']}): {step['samples_per_s']:.2f} samples/s")
    flags.FLAGS.mark_as_parsed()  # Grain workers read absl flags

    tmp = None
    data_dir = args.data_dir
    if data_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="loader_bench_")
        t0 = time.perf_counter()
        data_dir = make_shards(pathlib.Path(tmp.name), args.num_clips, args.duration,
                               max(1, (os.cpu_count() or 2)))
        print(f"wrote {args.num_clips} synthetic clips to {data_dir} in "
              f"{time.perf_counter() - t0:.1f} s")

    common = {"process_index": 0, "process_count": 1, "read_threads": args.read_threads,
              "window_length": args.window_length}
    b = args.batch_size
    cases = []
    for w in args.workers:
        cases += [
            ("train", "none", w, lambda w=w: pipeline.make_train_iterator(
                data_dir, args.train_split, global_batch_size=b, seed=0, worker_count=w,
                **common), b),
            ("train", "finetune", w, lambda w=w: pipeline.make_train_iterator(
                data_dir, args.train_split, global_batch_size=b, seed=0, worker_count=w,
                augment=FINETUNE_AUGMENT, **common), b),
            ("train", "crop+flip", w, lambda w=w: pipeline.make_train_iterator(
                data_dir, args.train_split, global_batch_size=b, seed=0, worker_count=w,
                augment=SYNC_CROP_AUGMENT, **common), b),
            ("eval", "none", w, lambda w=w: pipeline.make_eval_iterator(
                data_dir, args.eval_split, global_batch_size=b, worker_count=w, **common), b),
            ("retrieval", "none", w, lambda w=w: pipeline.make_retrieval_iterator(
                data_dir, args.eval_split, worker_count=w, **common), 1),
        ]

    rows = []
    for mode, aug, w, make, per_batch in cases:
        n = args.retrieval_clips if mode == "retrieval" else args.batches
        r = _time(make, n, per_batch)
        rows.append({"pipeline": mode, "augment": aug, "workers": w, "unit": (
            "clips" if mode == "retrieval" else "examples"), **r})
        if step and mode == "train":
            rows[-1]["x_step"] = r["samples_per_s"] / step["samples_per_s"]
        print(f"{mode:9s} aug={aug:9s} workers={w}: {r['samples_per_s']:7.1f} "
              f"{rows[-1]['unit']}/s  (startup {r['startup_s']:.2f} s, "
              f"overall {r['overall_per_s']:.1f}/s)", flush=True)

    print()
    print("| pipeline  | augment   | workers | steady /s | overall /s | unit     | startup s "
          "| x step |")
    print("|-----------|-----------|---------|-----------|------------|----------|-----------"
          "|--------|")
    for r in rows:
        x_step = f"{r['x_step']:6.0f}" if "x_step" in r else "     -"
        print(f"| {r['pipeline']:9s} | {r['augment']:9s} | {r['workers']:7d} | "
              f"{r['samples_per_s']:9.1f} | {r['overall_per_s']:10.1f} | {r['unit']:8s} | "
              f"{r['startup_s']:9.2f} | {x_step} |")
    result = {
        "benchmark": "loader",
        "data_dir": None if tmp else data_dir,
        "synthetic_clips": args.num_clips if tmp else None,
        "batch_size": b,
        "window_length": args.window_length,
        "read_threads": args.read_threads,
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "rows": rows,
        "step": step,
    }
    if args.json_out:
        os.makedirs(os.path.dirname(os.path.abspath(args.json_out)), exist_ok=True)
        with open(args.json_out, "w") as f:
            json.dump(result, f, indent=2)
    if tmp is not None:
        tmp.cleanup()
    return result


if __name__ == "__main__":  # required: Grain workers start with spawn
    main()
