"""Evaluate a checkpoint: retrieval (A->V, V->A) or classification, written to W/eval/<task>.json.

    python -m cavmae_jax.evaluate --config=configs/demo.py --workdir=W --config.data.dir=D \\
        --task=retrieval [--strategy=diagonal_mean] [--num_clips=N]
    python -m cavmae_jax.evaluate ... --checkpoint=PARAMS_DIR   # e.g. a converted official model

Retrieval embeds every (window_k, frame_k) pair of each clip with `features` (Sync: the global
tokens; CAV-MAE: the token means), aggregates over pairs (`diagonal_mean` by default) and scores
the whole pool. With `config.eval.middle_frame_only` (the CAV-MAE protocol) one middle pair per
clip is used. Classification averages per-frame probabilities over all N frames (official).
"""

import functools
import json
import logging
import pathlib
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils
from tqdm import tqdm

from cavmae_jax import parallel, video
from cavmae_jax.data import pipeline
from cavmae_jax.evaluate import classification, retrieval
from cavmae_jax.models.cavmae import CAVMAE
from cavmae_jax.models.config import ModelConfig
from cavmae_jax.models.heads import CAVMAEClassifier
from cavmae_jax.train import checkpoint, loop

log = logging.getLogger(__name__)
TASKS = ("retrieval", "classification")


def load_params(config: ml_collections.ConfigDict, run: loop.Run, workdir: pathlib.Path,
                params_dir: str | None) -> Any:
    """Params from a params directory (converted official / exported) or W's latest checkpoint."""
    shardings = run.state_shardings.params
    if params_dir:
        params, meta = checkpoint.load_params(params_dir)
        log.info("evaluating params from %s (%s)", params_dir, meta.get("source", "ours"))
        return jax.device_put(loop.merge_init(jax.device_get(
            jax.eval_shape(lambda: run.abstract_state.params)), params), shardings)
    ckpt = checkpoint.Checkpointer(workdir / "checkpoints", use_async=False)
    restored = ckpt.restore_latest(run.abstract_state)
    ckpt.close()
    if restored is None:
        raise FileNotFoundError(f"no checkpoint in {workdir / 'checkpoints'}: train first, or "
                                "pass --checkpoint=DIR (e.g. from python -m cavmae_jax.convert)")
    state, step = restored
    log.info("evaluating %s at step %d", workdir, step)
    return state.params


def _embed_fn(model: CAVMAE, task: str, mode: str):
    if task == "retrieval":
        def embed(params, audio, frames):  # [n, L, 128], [n, S, S, 3] pixels -> 2 x [n, D]
            f = model.apply({"params": params}, audio, video.normalize_image(frames),
                            method=CAVMAE.features)
            return f["global_a"], f["global_v"]
    else:
        def embed(params, audio, frames):  # -> [n, C] logits
            return model.apply({"params": params}, audio, video.normalize_image(frames), mode,
                               method=CAVMAEClassifier.classify)
    return jax.jit(embed)


def _gather_per_clip(x: jax.Array, pairs: int) -> np.ndarray:
    """All processes' rows of a global [c * K, ...] output, as host [c, K, ...]."""
    x = np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return x.reshape(-1, pairs, *x.shape[1:])


def collect(config: ml_collections.ConfigDict, run: loop.Run, params: Any,
            task: str) -> dict[str, np.ndarray]:
    """Runs every pair of every clip through the model; returns per-clip arrays in clip order."""
    cfg = run.model.config
    clips = config.eval.batch_size
    it = pipeline.make_retrieval_iterator(
        config.data.dir, config.data.eval_split, process_index=jax.process_index(),
        process_count=jax.process_count(), clips_per_batch=clips,
        config=loop.pipeline_config(config, cfg, train=False))
    meta_split = run.metadata["splits"][config.data.eval_split]
    total = int(meta_split["num_records"])
    embed = _embed_fn(run.model, task, config.finetune.mode)
    outputs: dict[str, list] = {"out": [], "clip_index": [], "valid": [], "labels": []}
    bar = tqdm(total=total, desc=f"eval {task}", unit="clip", disable=jax.process_index() != 0)
    for batch in it:
        c, n = batch["audio"].shape[:2]
        k = [n // 2] if config.eval.middle_frame_only else list(range(n))
        audio = batch["audio"][:, k].reshape(c * len(k), *batch["audio"].shape[2:])
        frames = batch["video"][:, k].reshape(c * len(k), *batch["video"].shape[2:])
        if (c * len(k)) % jax.local_device_count():
            raise ValueError(f"eval.batch_size ({c}) x pairs per clip ({len(k)}) must divide "
                             f"over {jax.local_device_count()} local devices")
        inputs = parallel.host_batch_to_global({"audio": audio, "video": frames}, run.mesh)
        out = embed(params, inputs["audio"], inputs["video"])
        out = jax.tree.map(functools.partial(_gather_per_clip, pairs=len(k)), out)
        gather = lambda x: np.asarray(multihost_utils.process_allgather(np.asarray(x)))
        outputs["out"].append(out)
        clip_index = gather(batch["clip_index"]).reshape(-1)
        outputs["clip_index"].append(clip_index)
        outputs["valid"].append(gather(batch["valid"]).reshape(-1))
        outputs["labels"].append(
            gather(batch["labels"]).reshape(len(clip_index), batch["labels"].shape[-1]))
        bar.update(int(np.sum(batch["valid"])) * jax.process_count())
    bar.close()
    valid = np.concatenate(outputs["valid"])
    order = np.argsort(np.concatenate(outputs["clip_index"])[valid], kind="stable")
    stack = lambda xs: np.concatenate(xs)[valid][order]
    result = {"labels": stack(outputs["labels"])}
    if task == "retrieval":
        result["audio"] = stack([o[0] for o in outputs["out"]])  # [N, K, D]
        result["video"] = stack([o[1] for o in outputs["out"]])
    else:
        result["logits"] = stack(outputs["out"])  # [N, K, C]
    return result


def evaluate(config: ml_collections.ConfigDict, model_cfg: ModelConfig, workdir: str, task: str,
             params_dir: str | None = None) -> dict[str, Any]:
    """Runs `task` and writes W/eval/<task>.json (+ a PNG for retrieval); returns the report."""
    if task not in TASKS:
        raise ValueError(f"--task must be one of {TASKS}, got {task!r}")
    if task == "classification" and config.task != "finetune":
        raise ValueError("classification needs a finetuned classifier: use a config with "
                         "task='finetune' (e.g. --config.task=finetune)")
    workdir = pathlib.Path(workdir)
    run = loop.build_run(config, model_cfg)
    params = load_params(config, run, workdir, params_dir)
    data = collect(config, run, params, task)
    out_dir = workdir / "eval"
    if task == "retrieval":
        num = config.eval.num_clips or None
        report, details = retrieval.evaluate_retrieval(
            data["audio"], data["video"], config.eval.strategy, num, return_details=True)
        n = report["num_clips"]
        report["chance"] = {f"r{k}": 100.0 * min(k, n) / n for k in (1, 5, 10)}
        report["pairs_per_clip"] = int(data["audio"].shape[1])
    else:
        kind = "sigmoid" if config.finetune.loss == "bce" else "softmax"
        probs = classification.aggregate_frames(data["logits"], kind)
        targets = data["labels"]
        report = {"top1": classification.top1_accuracy(probs, targets),
                  "num_clips": int(len(probs)), "frames_averaged": int(data["logits"].shape[1])}
        if (targets > 0).any(0).any():
            report["mAP"] = classification.mean_average_precision(probs, (targets > 0.5) * 1.0)
    if jax.process_index() == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / f"{task}.json").write_text(json.dumps(report, indent=2) + "\n")
        if task == "retrieval":
            retrieval.plot_retrieval(details["sim"], report, out_dir / "retrieval.png")
        print(format_report(task, report), flush=True)
    return report


def format_report(task: str, report: dict[str, Any]) -> str:
    if task == "classification":
        extra = f"  mAP {report['mAP']:.4f}" if "mAP" in report else ""
        return f"classification on {report['num_clips']} clips: top-1 {report['top1']:.4f}{extra}"
    lines = [f"retrieval on {report['num_clips']} clips ({report['strategy']}, "
             f"{report['pairs_per_clip']} pair(s) per clip)",
             f"{'':6}{'R@1':>8}{'R@5':>8}{'R@10':>8}{'MedR':>8}"]
    for d, name in (("a2v", "A->V"), ("v2a", "V->A")):
        m = report[d]
        lines.append(f"{name:6}{m['r1']:8.1f}{m['r5']:8.1f}{m['r10']:8.1f}{m['medr']:8.1f}")
    ch = report["chance"]
    lines.append(f"{'chance':6}{ch['r1']:8.1f}{ch['r5']:8.1f}{ch['r10']:8.1f}")
    return "\n".join(lines)
