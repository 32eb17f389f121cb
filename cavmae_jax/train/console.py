"""What a person sees: our lines on the console, the libraries' INFO logs only on request.

`setup(verbosity)` is called first by every command: at verbosity 0 (the default) the console
shows this project's INFO lines and everyone's warnings; `--verbosity=1` also shows the
libraries' INFO logs (Orbax, Grain, JAX). `banner` prints what a run is about to do.
"""

from __future__ import annotations

import logging
import pathlib
import sys
from typing import TYPE_CHECKING

import jax
import numpy as np

if TYPE_CHECKING:
    from cavmae_jax.train.run import Run

OUR_LOGGERS = ("cavmae_jax", "data_prep", "configs", "__main__")


class _Format(logging.Formatter):
    """'message' for INFO, 'WARNING: message' above it."""

    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage()
        if record.exc_info:
            msg += "\n" + self.formatException(record.exc_info)
        return msg if record.levelno <= logging.INFO else f"{record.levelname}: {msg}"


def setup(verbosity: int = 0) -> None:
    """Console logging: ours at INFO, libraries at WARNING (INFO with verbosity >= 1)."""
    root = logging.getLogger()
    library_level = logging.INFO if verbosity >= 1 else logging.WARNING
    root.setLevel(library_level)
    logging.getLogger("absl").setLevel(library_level)  # Orbax and Grain log through absl
    for name in OUR_LOGGERS:
        logging.getLogger(name).setLevel(logging.INFO)
    if not root.handlers:
        root.addHandler(logging.StreamHandler(sys.stderr))
    for handler in root.handlers:
        handler.setFormatter(_Format())


def say(line: str) -> None:
    """One line on stdout, from process 0 only."""
    if jax.process_index() == 0:
        print(line, flush=True)


def _count(tree) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))


def banner(run: Run, workdir: pathlib.Path, start_step: int) -> None:
    """What the run is: model, size, devices and mesh, data, schedule, fresh or resumed."""
    cfg, m = run.config, run.config.model
    splits = run.metadata.get("splits", {})
    sizes = ", ".join(f"{name} {int(s.get('num_records', 0))}" for name, s in splits.items())
    kind = {"pretrain": "pretraining", "finetune": f"finetuning ({cfg.finetune.mode})"}[cfg.task]
    dev = jax.devices()[0]
    mesh = " x ".join(f"{k} {v}" for k, v in run.mesh.shape.items())
    lines = [
        f"{kind} {m.arch} in {workdir}: "
        + (f"resumed from step {start_step}" if start_step else "fresh start")
        + (f", init_from {cfg.train.init_from}" if cfg.train.init_from and not start_step
           else ""),
        f"  model  dim {m.embed_dim}, {m.modality_specific_depth}+{m.joint_depth} layers, "
        f"audio {m.audio_length} frames, {_count(run.abstract_params) / 1e6:.2f} M params, "
        f"{m.dtype}",
        f"  data   {cfg.data.dir} ({sizes or 'no splits'}); batch {cfg.train.global_batch_size}"
        f", {run.steps_per_epoch} steps/epoch",
        f"  optim  {cfg.optim.name} lr {cfg.optim.lr:g}; {run.total_steps} steps; log every "
        f"{cfg.train.log_every}, checkpoint every {cfg.train.checkpoint_every}"
        + (f", eval every {cfg.train.eval_every}" if cfg.train.eval_every else ""),
        f"  jax    {jax.__version__}, {jax.process_count()} process(es), {jax.device_count()} "
        f"device(s) ({dev.platform}), mesh {mesh}",
    ]
    say("\n".join(lines))
