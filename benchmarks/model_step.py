"""Times one CAV-MAE / CAV-MAE Sync pretraining step: forward + backward + AdamW update.

The step is the training loop's own: `train.run.Run` built from a config (AdamW, the sin-cos
tables frozen), its jitted `train_step` with the state donated, metrics of the logging branch.
Reports per-step time (min / median), samples/s, peak memory, the analytic FLOPs per sample
beside XLA's cost analysis, and the MFU they imply against a peak (`--peak_tflops`; on CPU the
default peak is a measured 4096^2 float32 matmul). The script fails if the step compiles more
than once. Not part of pytest.

  .venv/bin/python benchmarks/model_step.py --arch sync --size small --batch 4 [--json OUT]

Analytic FLOPs count 2 * multiply-accumulates of every matmul of the forward pass (patch
embeddings, qkv / attention scores / attention-weighted values / proj, MLP, decoder embed and
prediction heads; not norms, softmax, GELU or the loss), and fwd + bwd = 3 x fwd.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import resource
import statistics
import sys
import time
from typing import Any

# `python benchmarks/model_step.py` puts benchmarks/ first on sys.path, where sibling scripts
# (benchmarks/data_prep.py) would shadow packages of the same name; use the repo root instead.
_HERE = pathlib.Path(__file__).resolve().parent
sys.path[:] = [q for q in sys.path if pathlib.Path(q or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks.sizes import SIZES  # noqa: E402
from cavmae_jax import config, hostmem  # noqa: E402
from cavmae_jax.models import masking  # noqa: E402
from cavmae_jax.models.config import ModelConfig  # noqa: E402
from cavmae_jax.train.run import Run  # noqa: E402

# The released Sync model (global tokens, 8 registers, no contrastive heads) and CAV-MAE.
ARCHS: dict[str, dict[str, Any]] = {
    "sync": dict(arch="sync", audio_length=416, global_tokens=True, num_register_tokens=8,
                 contrastive_heads=False),
    "cavmae": dict(arch="cavmae", audio_length=1024, global_tokens=False, num_register_tokens=0,
                   contrastive_heads=False),
}
# Official PyTorch, 2 CPU cores, float32, Sync, audio_length 416, batch 4, AdamW step included.
TORCH_CPU_SAMPLES_PER_S = {"tiny": 17.0, "small": 4.8, "base": 0.81}
# Dense bf16 peak TFLOP/s per accelerator (vendor datasheets, no sparsity).
DEVICE_PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "TPU v4": 275.0,
                      "TPU v5 lite": 197.0, "TPU v5p": 459.0}
COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


def model_config(arch: str, size: str, dtype: str, audio_length: int | None,
                 attention_impl: str, remat: bool,
                 remat_policy: str = "nothing_saveable") -> ModelConfig:
    kwargs: dict[str, Any] = dict(ARCHS[arch], **SIZES[size], modality_specific_depth=11,
                                  joint_depth=1, mlp_ratio=4.0, mask_ratio_a=0.75,
                                  mask_ratio_v=0.75, dtype=dtype, remat=remat,
                                  remat_policy=remat_policy,
                                  attention_impl=attention_impl)
    if audio_length:
        kwargs["audio_length"] = audio_length
    return ModelConfig(**kwargs)


# ----------------------------------------------------------------------------- analytic FLOPs
def _block_flops(tokens: int, dim: int, mlp_ratio: float, queries: int | None = None) -> int:
    """2 * MACs of one ViT block on `tokens` tokens: qkv, QK^T, AV, proj, fc1, fc2; with
    `queries` (`Block.first_tokens`), outputs for only that many tokens (qkv still for all)."""
    n, d = tokens, dim
    q = n if queries is None else queries
    macs = n * d * 3 * d + 2 * q * n * d + q * d * d + 2 * q * d * int(d * mlp_ratio)
    return 2 * macs


def analytic_flops(c: ModelConfig) -> dict[str, int]:
    """Forward FLOPs per sample of `CAVMAE.pretrain`, by part (see the module docstring)."""
    d, dd, p = c.embed_dim, c.decoder_embed_dim, c.patch_size
    la, lv = c.num_patches_a, c.num_patches_v
    ka, kv = masking.num_kept(la, c.mask_ratio_a), masking.num_kept(lv, c.mask_ratio_v)
    g, r = int(c.global_tokens), c.num_register_tokens
    blk = lambda n, dim, q=None: _block_flops(n, dim, c.mlp_ratio, q)
    heads = 2 if c.contrastive_heads else 0
    # The modality passes' last block computes only the global token when nothing else is used
    # (CAVMAE._modality_joint's global_only).
    last = 1 if c.global_tokens and not c.global_local_losses else None
    modality_pass = lambda n: ((c.joint_depth + heads - 1) * blk(n, d) + blk(n, d, last))
    parts = {
        "patch_embed": 2 * (la * p * p * 1 + lv * p * p * c.in_chans) * d,
        "encoder_a": c.modality_specific_depth * blk(g + ka + r, d),
        "encoder_v": c.modality_specific_depth * blk(g + kv + r, d),
        "joint_av": c.joint_depth * blk(ka + kv, d),
        "joint_a_v": modality_pass(g + ka) + modality_pass(g + kv),
        "decoder": (2 * (ka + kv) * d * dd + c.decoder_depth * blk(la + lv, dd)
                    + 2 * dd * (la * p * p + lv * p * p * c.in_chans)),
    }
    parts["total"] = sum(parts.values())
    return parts


# ----------------------------------------------------------------------------- measurement
def cpu_matmul_gflops(n: int = 4096, repeats: int = 5) -> float:
    """Best float32 n x n matmul rate of this host through XLA, in GFLOP/s."""
    x = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
    mm = jax.jit(lambda a: a @ a)
    mm(x).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        mm(x).block_until_ready()
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def default_peak_tflops(device: jax.Device) -> tuple[float, str]:
    if device.platform == "cpu":
        return cpu_matmul_gflops() / 1e3, "measured 4096^2 float32 matmul"
    kind = device.device_kind
    for name, tflops in DEVICE_PEAK_TFLOPS.items():
        if name.lower() in kind.lower():
            return tflops, f"{kind} dense bf16 datasheet"
    raise SystemExit(f"no default peak for device {kind!r}; pass --peak_tflops")


def peak_memory_bytes(device: jax.Device) -> tuple[int, str]:
    stats = device.memory_stats() if device.platform != "cpu" else None
    if stats and "peak_bytes_in_use" in stats:
        return int(stats["peak_bytes_in_use"]), "device peak_bytes_in_use"
    # ru_maxrss is KiB on Linux; it also counts compilation and the Python process.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "process max RSS"


def make_batch(c: ModelConfig, batch: int, seed: int = 0) -> dict[str, jax.Array]:
    rng = np.random.default_rng(seed)
    audio = rng.standard_normal((batch, c.audio_length, c.num_mel_bins), np.float32)
    # Pixels, as the pipeline delivers them; the step normalizes on the device.
    video = rng.integers(0, 256, (batch, c.img_size, c.img_size, c.in_chans), np.uint8)
    return {"audio": jax.device_put(audio), "video": jax.device_put(video)}


def run(args: argparse.Namespace) -> dict[str, Any]:
    device = jax.devices()[0]
    cfg = model_config(args.arch, args.size, args.dtype, args.audio_length, args.attention_impl,
                       args.remat, args.remat_policy)
    run_cfg = config.Config(
        model=cfg, optim=config.OptimConfig(name="adamw", lr=1e-4, weight_decay=0.05,
                                            warmup_steps=10),
        train=config.TrainConfig(global_batch_size=args.batch, num_steps=1000))
    run_ = Run.build(run_cfg, devices=[device], metadata={})
    state = run_.init_state()
    batch = make_batch(cfg, args.batch)
    num_params = sum(x.size for x in jax.tree.leaves(state.params))

    # Every XLA compilation reports this event; none may happen once the step is compiled.
    compiles: list[float] = []

    def on_event(event: str, duration: float, **_: Any) -> None:
        if event == COMPILE_EVENT:
            compiles.append(duration)

    jax.monitoring.register_event_duration_secs_listener(on_event)
    step = run_.train_step  # the loop's own jitted step (shardings, donation)
    t0 = time.perf_counter()
    # Compile once, ahead of time, and time that executable: in JAX 0.10.2 a jitted call does
    # not reuse an AOT `.lower().compile()` (it compiles the same step a second time).
    compiled = step.lower(state, batch, np.bool_(True)).compile()
    compile_s = time.perf_counter() - t0
    compiles_at_start = len(compiles)
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    mem = compiled.memory_analysis()
    xla_flops = float(cost.get("flops", float("nan"))) if cost else float("nan")

    times, faults = [], []
    for i in range(args.warmup + args.steps):
        f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        t0 = time.perf_counter()
        state, metrics = compiled(state, batch, np.bool_(True))
        jax.block_until_ready((state, metrics))
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
            faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
    recompiles = len(compiles) - compiles_at_start
    if recompiles:
        raise SystemExit(f"the train step recompiled {recompiles} time(s) after compiling once")
    loss = float(metrics["loss"])
    if not np.isfinite(loss):
        raise SystemExit(f"non-finite loss {loss}")
    peak_tflops, peak_source = ((args.peak_tflops, "--peak_tflops") if args.peak_tflops
                                else default_peak_tflops(device))
    flops = analytic_flops(cfg)
    step_flops = 3 * flops["total"] * args.batch
    t_min, t_med = min(times), statistics.median(times)
    mem_bytes, mem_source = peak_memory_bytes(device)
    return {
        "arch": args.arch, "size": args.size, "batch": args.batch, "dtype": args.dtype,
        "audio_length": cfg.audio_length, "attention_impl": cfg.attention_impl,
        "remat": cfg.remat, "remat_policy": cfg.remat_policy if cfg.remat else None,
        "params": int(num_params), "device": device.device_kind, "platform": device.platform,
        "host": platform.node(), "cpu_count": os.cpu_count(), "jax": jax.__version__,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""),
        "page_faults_per_step": statistics.median(faults),
        "load_avg_before": args.load_before, "load_avg_after": list(os.getloadavg()),
        "compile_s": compile_s, "backend_compiles": compiles_at_start, "recompiles": recompiles,
        "step_s": times, "step_s_min": t_min, "step_s_median": t_med,
        "samples_per_s": args.batch / t_min, "samples_per_s_median": args.batch / t_med,
        "loss": loss,
        "analytic_fwd_flops_per_sample": flops,
        "analytic_step_flops": step_flops,
        "xla_step_flops": xla_flops,
        "xla_over_analytic": xla_flops / step_flops,
        "peak_tflops": peak_tflops, "peak_source": peak_source,
        "mfu": step_flops / t_min / (peak_tflops * 1e12),
        "peak_memory_bytes": mem_bytes, "peak_memory_source": mem_source,
        "xla_temp_bytes": int(mem.temp_size_in_bytes) if mem else None,
        "xla_argument_bytes": int(mem.argument_size_in_bytes) if mem else None,
        "torch_cpu_samples_per_s": (TORCH_CPU_SAMPLES_PER_S.get(args.size)
                                    if args.arch == "sync" and args.dtype == "float32"
                                    and args.batch == 4 and cfg.audio_length == 416 else None),
    }


def print_table(r: dict[str, Any]) -> None:
    gib = 2**30
    rows = [
        ("model", f"{r['arch']} {r['size']} ({r['params'] / 1e6:.1f} M params), "
                  f"audio_length {r['audio_length']}, attention {r['attention_impl']}, "
                  f"remat {r['remat_policy'] if r['remat'] else False}"),
        ("batch / dtype", f"{r['batch']} / {r['dtype']}"),
        ("device", f"{r['device']} ({r['platform']}, {r['cpu_count']} CPUs), jax {r['jax']}"),
        ("load avg before / after",
         f"{' '.join(f'{x:.2f}' for x in r['load_avg_before'])} / "
         f"{' '.join(f'{x:.2f}' for x in r['load_avg_after'])}"),
        ("compile", f"{r['compile_s']:.1f} s, {r['backend_compiles']} backend compile(s), "
                    f"{r['recompiles']} during the steps"),
        ("step time min / median", f"{r['step_s_min'] * 1e3:.1f} / "
                                   f"{r['step_s_median'] * 1e3:.1f} ms over "
                                   f"{len(r['step_s'])} steps"),
        ("samples/s (min time)", f"{r['samples_per_s']:.2f}"),
        ("host memory", f"{r['page_faults_per_step']:.0f} page faults per step; GLIBC_TUNABLES="
                        f"{r['glibc_tunables'] or '(unset)'}"),
    ]
    if r["torch_cpu_samples_per_s"]:
        ref = r["torch_cpu_samples_per_s"]
        rows.append(("vs official PyTorch", f"{ref} samples/s -> "
                                            f"{r['samples_per_s'] / ref:.2f}x"))
    f = r["analytic_fwd_flops_per_sample"]
    rows += [
        ("analytic fwd GFLOP/sample",
         f"{f['total'] / 1e9:.2f} (" + ", ".join(f"{k} {v / 1e9:.2f}" for k, v in f.items()
                                                  if k != "total") + ")"),
        ("step GFLOP analytic / XLA", f"{r['analytic_step_flops'] / 1e9:.1f} / "
                                      f"{r['xla_step_flops'] / 1e9:.1f} "
                                      f"(ratio {r['xla_over_analytic']:.2f})"),
        ("peak TFLOP/s", f"{r['peak_tflops']:.3f} ({r['peak_source']})"),
        ("MFU", f"{100 * r['mfu']:.1f} %"),
        ("peak memory", f"{r['peak_memory_bytes'] / gib:.2f} GiB ({r['peak_memory_source']}); "
                        f"XLA temp {r['xla_temp_bytes'] / gib:.2f} GiB, "
                        f"arguments {r['xla_argument_bytes'] / gib:.2f} GiB"),
        ("loss", f"{r['loss']:.4f}"),
    ]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", choices=sorted(ARCHS), default="sync")
    parser.add_argument("--size", choices=list(SIZES), default="tiny")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--audio_length", type=int, default=None,
                        help="fbank frames (default: 416 for sync, 1024 for cavmae)")
    parser.add_argument("--attention_impl", choices=["xla", "fused"], default="xla")
    parser.add_argument("--remat", action="store_true")
    parser.add_argument("--remat_policy", default="nothing_saveable",
                        help="with --remat: a jax.checkpoint_policies name (see ModelConfig)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps after compiling")
    parser.add_argument("--peak_tflops", type=float, default=None,
                        help="device peak; default: measured matmul on CPU, datasheet bf16 else")
    parser.add_argument("--json", default=None, help="write the result here")
    args = parser.parse_args(argv)
    args.load_before = list(os.getloadavg())
    result = run(args)
    print_table(result)
    if hint := hostmem.cpu_hint(result["platform"]):
        print(f"note: {hint}")
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
