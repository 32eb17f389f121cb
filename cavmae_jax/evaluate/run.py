"""Evaluate any checkpoint: retrieval (A->V, V->A) or classification, with its provenance.

    python -m cavmae_jax.evaluate --checkpoint=W --data_dir=D --task=retrieval
    python -m cavmae_jax.evaluate --checkpoint=W/checkpoints/300 ...   # a chosen step
    python -m cavmae_jax.evaluate --checkpoint=PARAMS_DIR ...          # exported / converted

The model config comes from the checkpoint; no training config or optimizer is needed.
Retrieval embeds every (window_k, frame_k) pair of each clip with `features` (Sync: the global
tokens; CAV-MAE: the token means), aggregates over pairs (`diagonal_mean` by default) and scores
the whole pool. With `eval.middle_frame_only` (the CAV-MAE protocol) one middle pair per clip is
used. Classification averages per-frame probabilities over all N frames (official).
The report names the step, checkpoint, data folder, split and config it came from.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import pathlib
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from tqdm import tqdm

from cavmae_jax import audio as audio_lib
from cavmae_jax import config as config_lib
from cavmae_jax import inference, parallel, video
from cavmae_jax.config import Config
from cavmae_jax.data import pipeline
from cavmae_jax.evaluate import classification, moments, moments_plot, retrieval
from cavmae_jax.models.cavmae import CAVMAE
from cavmae_jax.models.heads import CAVMAEClassifier
from cavmae_jax.train import console
from cavmae_jax.train.run import Run, load_checkpoint

log = logging.getLogger(__name__)
TASKS = ("retrieval", "classification")


def _embed_fn(model: CAVMAE | CAVMAEClassifier, task: str, mode: str):
    if task == "retrieval":  # [n, L, 128], [n, S, S, 3] pixels -> 2 x [n, D]
        return inference.pair_embed_fn(model)

    def embed(params, audio, frames):  # -> [n, C] logits
        return model.apply({"params": params}, audio, video.normalize_image(frames), mode,
                           method=CAVMAEClassifier.classify)
    return jax.jit(embed)


def _gather_per_clip(x: jax.Array, pairs: int) -> np.ndarray:
    """All processes' rows of a global [c * K, ...] output, as host [c, K, ...]."""
    x = np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return x.reshape(-1, pairs, *x.shape[1:])


_ID_BYTES = 512  # clip ids travel between processes as fixed-width UTF-8 (longer ones are cut)


def _encode_ids(ids: Any) -> np.ndarray:
    """[c] str -> [c, _ID_BYTES] uint8 (zero-padded UTF-8), gatherable across processes."""
    raw = np.asarray(ids).reshape(-1).astype(str)
    return np.frombuffer(np.char.encode(raw, "utf-8").astype(f"S{_ID_BYTES}").tobytes(),
                         np.uint8).reshape(len(raw), _ID_BYTES)


def _decode_ids(codes: np.ndarray) -> np.ndarray:
    """Inverse of `_encode_ids`: [c, _ID_BYTES] uint8 -> [c] str."""
    raw = np.ascontiguousarray(codes, np.uint8).view(f"S{_ID_BYTES}").reshape(-1)
    return np.asarray([b.decode("utf-8", "ignore") for b in raw], dtype=str)


def collect(run: Run, params: Any, task: str, embed=None) -> dict[str, np.ndarray]:
    """Runs every pair of every eval clip through the model; per-clip arrays in clip order.

    Returns `labels` [N, C], `clip_index` [N], `ids` [N] str, `times` [N, K] (seconds of each
    pair, see `pipeline.pair_times`), `frame_k` [K], and `audio`, `video` [N, K, D]
    (retrieval) or `logits` [N, K, C] (classification).
    """
    cfg = run.config
    it = pipeline.make_retrieval_iterator(
        cfg.data.dir, cfg.data.eval_split, process_index=jax.process_index(),
        process_count=jax.process_count(), clips_per_batch=cfg.eval.batch_size, config=cfg.data)
    total = int(run.metadata["splits"][cfg.data.eval_split]["num_records"])
    embed = embed or _embed_fn(run.model, task, cfg.finetune.mode)
    outputs: dict[str, list] = {"out": [], "clip_index": [], "valid": [], "labels": [],
                                "times": [], "ids": []}
    bar = tqdm(total=total, desc=f"eval {task}", unit="clip", leave=False,
               disable=jax.process_index() != 0)
    gather = lambda x: np.asarray(multihost_utils.process_allgather(np.asarray(x)))
    for batch in it:
        c, n = batch["audio"].shape[:2]
        k = [n // 2] if cfg.eval.middle_frame_only else list(range(n))
        audio = batch["audio"][:, k].reshape(c * len(k), *batch["audio"].shape[2:])
        frames = batch["video"][:, k].reshape(c * len(k), *batch["video"].shape[2:])
        if (c * len(k)) % jax.local_device_count():
            raise config_lib.ConfigError(
                f"config.eval.batch_size ({c}) x pairs per clip ({len(k)}) must divide over "
                f"{jax.local_device_count()} local devices")
        inputs = parallel.host_batch_to_global({"audio": audio, "video": frames}, run.mesh)
        out = embed(params, inputs["audio"], inputs["video"])
        outputs["out"].append(jax.tree.map(functools.partial(_gather_per_clip, pairs=len(k)), out))
        clip_index = gather(batch["clip_index"]).reshape(-1)
        outputs["clip_index"].append(clip_index)
        outputs["valid"].append(gather(batch["valid"]).reshape(-1))
        outputs["labels"].append(
            gather(batch["labels"]).reshape(len(clip_index), batch["labels"].shape[-1]))
        outputs["times"].append(gather(batch["times"][:, k]).reshape(len(clip_index), len(k)))
        outputs["ids"].append(gather(_encode_ids(batch["id"])).reshape(len(clip_index), -1))
        bar.update(int(np.sum(batch["valid"])) * jax.process_count())
    bar.close()
    valid = np.concatenate(outputs["valid"])
    order = np.argsort(np.concatenate(outputs["clip_index"])[valid], kind="stable")
    stack = lambda xs: np.concatenate(xs)[valid][order]
    result = {"labels": stack(outputs["labels"]), "clip_index": stack(outputs["clip_index"]),
              "times": stack(outputs["times"]), "ids": _decode_ids(stack(outputs["ids"])),
              "frame_k": np.asarray(k, np.int32)}
    if task == "retrieval":
        result["audio"] = stack([o[0] for o in outputs["out"]])  # [N, K, D]
        result["video"] = stack([o[1] for o in outputs["out"]])
    else:
        result["logits"] = stack(outputs["out"])  # [N, K, C]
    return result


def retrieval_report(run: Run, data: dict[str, np.ndarray]
                     ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """R@k / MedR both ways, beside chance, from collected embeddings."""
    report, details = retrieval.evaluate_retrieval(
        data["audio"], data["video"], run.config.eval.strategy,
        run.config.eval.num_clips or None, return_details=True)
    n = report["num_clips"]
    report["chance"] = {f"r{k}": 100.0 * min(k, n) / n for k in (1, 5, 10)}
    report["pairs_per_clip"] = int(data["audio"].shape[1])
    return report, details


def moments_report(run: Run, data: dict[str, np.ndarray], sim: np.ndarray
                   ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Moment metrics (evaluate/moments.py) on the clips the retrieval report scored.

    Args:
      data: `collect` output (`audio`, `video` [N, K, D], `times` [N, K], `labels` [N, C]).
      sim: [n, n] the retrieval report's clip-level similarity (its first n clips).
    """
    n = sim.shape[0]
    k = data["audio"].shape[1]
    total = int(run.metadata.get("settings", {}).get("target_length", audio_lib.TARGET_LENGTH))
    windows = None
    if k > 1 and 0 < run.config.data.window_length <= total:  # all N pairs: the official table
        windows = audio_lib.window_table(k, run.config.data.window_length, total)
    return moments.moment_report(data["audio"][:n], data["video"][:n], times=data["times"][:n],
                                 labels=data["labels"][:n], sim=sim,
                                 strategy=run.config.eval.strategy, windows=windows)


class RetrievalEvaluator:
    """Retrieval on the eval split with the run's model, for periodic eval during training."""

    def __init__(self, run: Run):
        if run.config.task != "pretrain":
            raise config_lib.ConfigError("config.train.eval_every runs retrieval, which needs "
                                         "task='pretrain'; set it to 0 for finetuning")
        self.run = run
        # The classifier's encoder is not the pretraining model: embed with the run's CAVMAE.
        self._embed = _embed_fn(run.model, "retrieval", run.config.finetune.mode)

    def __call__(self, params: Any) -> dict[str, Any]:
        return retrieval_report(self.run, collect(self.run, params, "retrieval", self._embed))[0]

    @staticmethod
    def scalars(report: dict[str, Any]) -> dict[str, float]:
        return {f"eval/{d}_{k}": float(report[d][k]) for d in ("a2v", "v2a")
                for k in ("r1", "r5", "r10", "medr")}

    @staticmethod
    def summary(report: dict[str, Any]) -> str:
        return (f"A->V R@1 {report['a2v']['r1']:.1f}, V->A R@1 {report['v2a']['r1']:.1f} "
                f"(chance {report['chance']['r1']:.1f}, {report['num_clips']} clips)")


def default_output(kind: str, directory: str | os.PathLike, step: int | None,
                   latest: bool) -> pathlib.Path:
    """Where a report goes: W/eval for a run's latest step, W/eval/step_N for an older one,
    PARAMS/eval for a params directory."""
    directory = pathlib.Path(directory)
    if kind == "params":
        return directory / "eval"
    run_dir = directory.parent.parent  # W/checkpoints/N -> W
    return run_dir / "eval" if latest else run_dir / "eval" / f"step_{step}"


def evaluate(checkpoint: str | os.PathLike, task: str = "retrieval",
             overrides: Config | None = None, data_dir: str | None = None,
             split: str | None = None, output: str | os.PathLike | None = None,
             strategy: str | None = None, num_clips: int | None = None) -> dict[str, Any]:
    """Evaluates any checkpoint; writes <output>/<task>.json (+ PNG) and returns the report.

    The model comes from the checkpoint's config; `overrides` (a --config given on the command
    line) supplies the data and eval sections, and the whole config for checkpoints saved
    without one; `data_dir`, `split`, `strategy`, `num_clips` override single fields.
    """
    if task not in TASKS:
        raise config_lib.ConfigError(f"--task must be one of {TASKS}, got {task!r}")
    loaded = load_checkpoint(checkpoint, fallback=overrides)
    cfg = loaded.config
    if overrides is not None:
        changed = config_lib.differences(dataclasses.asdict(cfg.model),
                                         dataclasses.asdict(overrides.model))
        if changed and loaded.config is not overrides:
            log.info("the model is built from the checkpoint's config (--config differs in %s)",
                     ", ".join(k for k, _, _ in changed))
        data = overrides.data if overrides.data.dir else dataclasses.replace(
            overrides.data, dir=cfg.data.dir)
        cfg = cfg.replace(data=data, eval=overrides.eval)
    data = cfg.data
    if data_dir:
        data = dataclasses.replace(data, dir=data_dir)
    if split:
        data = dataclasses.replace(data, eval_split=split)
    ev = cfg.eval
    if strategy:
        ev = dataclasses.replace(ev, strategy=strategy)
    if num_clips is not None:
        ev = dataclasses.replace(ev, num_clips=num_clips)
    # window_length follows the checkpoint's model (0 = the model's audio_length).
    cfg = config_lib.build(cfg.replace(data=dataclasses.replace(data, window_length=0), eval=ev))
    config_lib.require_data(cfg)
    if task == "classification" and cfg.task != "finetune":
        raise config_lib.ConfigError(f"{checkpoint} is a pretraining model; classification needs "
                                     "a finetuned classifier (task='finetune')")
    run = Run.build(cfg)
    if cfg.data.eval_split not in run.metadata.get("splits", {}):
        raise config_lib.ConfigError(
            f"{cfg.data.dir} has no split {cfg.data.eval_split!r} (it has: "
            f"{', '.join(run.metadata.get('splits', {})) or 'none'}); pass --split")
    params = run.params_on_mesh(loaded.params)
    console.say(f"evaluating {loaded.describe()} on {cfg.data.dir} ({cfg.data.eval_split})")
    collected = collect(run, params, task)
    details = moment_details = None
    if task == "retrieval":
        report, details = retrieval_report(run, collected)
        report["moments"], moment_details = moments_report(run, collected, details["sim"])
    else:
        kind = "sigmoid" if cfg.finetune.loss == "bce" else "softmax"
        probs = classification.aggregate_frames(collected["logits"], kind)
        targets = collected["labels"]
        report = {"top1": classification.top1_accuracy(probs, targets),
                  "num_clips": int(len(probs)),
                  "frames_averaged": int(collected["logits"].shape[1])}
        if (targets > 0).any(0).any():
            report["mAP"] = classification.mean_average_precision(probs, (targets > 0.5) * 1.0)
    latest = loaded.kind == "step" and _is_latest(loaded.path)
    out_dir = pathlib.Path(output) if output else default_output(
        loaded.kind, loaded.path, loaded.step, latest)
    report["provenance"] = {"checkpoint": loaded.path, "kind": loaded.kind, "step": loaded.step,
                            "data_dir": cfg.data.dir, "split": cfg.data.eval_split,
                            "config": cfg.to_dict()}
    if jax.process_index() == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
        _write_json(out_dir / f"{task}.json", report)
        if details is not None:
            retrieval.plot_retrieval(details["sim"], report, out_dir / "retrieval.png")
            moments_plot.plot_moments(moment_details, report["moments"], out_dir / "moments.png")
            moments.save_embeddings(
                out_dir / "embeddings.npz", collected["audio"], collected["video"],
                clip_ids=collected["ids"], clip_index=collected["clip_index"],
                labels=collected["labels"], times=collected["times"],
                frame_k=collected["frame_k"])
        console.say(format_report(task, report))
        console.say(f"wrote {out_dir / f'{task}.json'}")
    return report


def _is_latest(step_dir: str) -> bool:
    from cavmae_jax.train import checkpoint

    p = pathlib.Path(step_dir)
    kind, resolved, _ = checkpoint.resolve(p.parent)
    return kind == "step" and pathlib.Path(resolved) == p


def _write_json(path: pathlib.Path, payload: dict[str, Any]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    os.replace(tmp, path)


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
    if "moments" in report:
        lines += moments.format_moments(report["moments"])
    return "\n".join(lines)
