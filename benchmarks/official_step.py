"""Times the official PyTorch CAV-MAE Sync pretraining step on this machine, for model_step.py.

The quoted reference rates for the official code (17.0 / 4.8 / 0.81 samples/s) were measured
elsewhere; this script measures the official code on the same machine and in the same hour as
`model_step.py`, so the two can be compared directly. It imports `models.cav_mae_sync.CAVMAE`
from a checkout of the official repository (github.com/edsonroteia/cav-mae-sync) and needs an
environment of its own (the official code imports timm 0.4.5, which needs torchvision), e.g.

    python -m venv /tmp/official && /tmp/official/bin/pip install torch torchvision timm==0.4.5
    /tmp/official/bin/python benchmarks/official_step.py --official_repo PATH --size small

Same step as model_step.py: Sync as released (audio_length 416, global tokens, 8 registers, no
contrastive heads, mask 0.75 / 0.75), forward + backward + AdamW (lr 1e-4, wd 0.05) on random
inputs, float32, `--threads` intra-op threads; min and median of the timed steps.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import pathlib
import platform
import statistics
import sys
import time

import torch

# Run as `python benchmarks/official_step.py`: import the shared sizes from the repository root.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
from benchmarks.sizes import SIZES  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--official_repo", required=True, help="checkout of cav-mae-sync")
    p.add_argument("--size", choices=list(SIZES), default="small")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--audio_length", type=int, default=416)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)

    src = pathlib.Path(args.official_repo) / "src"
    if not (src / "models" / "cav_mae_sync.py").is_file():
        raise SystemExit(f"{src}/models/cav_mae_sync.py not found: pass the repository root")
    sys.path.insert(0, str(src))
    from models.cav_mae_sync import CAVMAE  # the official module

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    load_before = list(os.getloadavg())
    with contextlib.redirect_stdout(io.StringIO()):  # the constructor prints its settings
        model = CAVMAE(audio_length=args.audio_length, modality_specific_depth=11,
                       num_register_tokens=8, cls_token=True, contrastive_heads=False,
                       **SIZES[args.size])
    model.train()
    trainable = [q for q in model.parameters() if q.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=1e-4, weight_decay=0.05)
    audio = torch.randn(args.batch, args.audio_length, 128)
    imgs = torch.randn(args.batch, 3, 224, 224)

    times = []
    for i in range(args.warmup + args.steps):
        t0 = time.perf_counter()
        loss = model(audio, imgs)[0]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
    t_min, t_med = min(times), statistics.median(times)
    result = {
        "code": "official cav-mae-sync (PyTorch)", "size": args.size, "batch": args.batch,
        "audio_length": args.audio_length, "dtype": "float32", "threads": args.threads,
        "params": sum(q.numel() for q in model.parameters()),
        "torch": torch.__version__, "host": platform.node(), "cpu_count": os.cpu_count(),
        "load_avg_before": load_before, "load_avg_after": list(os.getloadavg()),
        "step_s": times, "step_s_min": t_min, "step_s_median": t_med,
        "samples_per_s": args.batch / t_min, "samples_per_s_median": args.batch / t_med,
        "loss": loss.item(),
    }
    print(f"official Sync {args.size}, batch {args.batch}, float32, {args.threads} threads, "
          f"torch {torch.__version__}: step min / median {t_min * 1e3:.1f} / "
          f"{t_med * 1e3:.1f} ms, {result['samples_per_s']:.2f} samples/s "
          f"(load before {' '.join(f'{x:.2f}' for x in load_before)})")
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
