"""Host-0 metric writing (TensorBoard + JSONL + one console line) and the NaN/Inf guard.

Every process may construct a `MetricWriter` and call it; only process 0 writes. Values are
pulled to host with `float()`, so pass metrics the step already reduced to scalars.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import pathlib
import time
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

_CONSOLE_SKIP = ("examples_per_sec", "steps_per_sec", "eta_s")


def _to_float(value: Any) -> float:
    """Python float of a scalar (numpy, jax or Python); raises on non-scalars."""
    arr = np.asarray(jax.device_get(value))
    if arr.size != 1:
        raise ValueError(f"Metric values must be scalars, got shape {arr.shape}.")
    return float(arr.reshape(()))


def check_finite(metrics: Mapping[str, Any], step: int) -> None:
    """Raises FloatingPointError naming `step` and every non-finite metric (loss parts, norms)."""
    bad = {}
    for name, value in metrics.items():
        arr = np.asarray(jax.device_get(value))
        if arr.dtype.kind in "fc" and not np.all(np.isfinite(arr)):
            bad[name] = arr.reshape(-1)[~np.isfinite(arr.reshape(-1))][0].item()
    if bad:
        parts = ", ".join(f"{k}={v}" for k, v in sorted(bad.items()))
        raise FloatingPointError(f"Non-finite metrics at step {step}: {parts}")


def _truncate_jsonl(path: pathlib.Path, last_step: int) -> None:
    """Keeps the rows of `path` with step <= last_step (all of them are dropped at step 0)."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if int(json.loads(line).get("step", 0)) <= last_step:
                keep.append(line)
        except (ValueError, AttributeError):
            continue  # a line cut by a crash
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(f"{line}\n" for line in keep), encoding="utf-8")
    os.replace(tmp, path)


def _is_lr(name: str) -> bool:
    """'lr', 'train/lr', 'head_lr', 'learning_rate' are learning rates (printed as %.2e)."""
    leaf = name.split("/")[-1]
    return leaf in ("lr", "learning_rate") or leaf.endswith("_lr")


def _format_eta(seconds: float) -> str:
    return str(datetime.timedelta(seconds=int(max(seconds, 0.0))))


class MetricWriter:
    """Writes scalars to `workdir`/tensorboard, `workdir`/metrics.jsonl and the console.

    Throughput and ETA are measured between consecutive `write` calls that carry
    `num_examples` (the number of examples processed since the previous such call).
    """

    def __init__(self, workdir: str | os.PathLike, total_steps: int, resume_step: int = 0):
        """Opens the writers; `resume_step`: rows after it in metrics.jsonl (from a run that
        went on past its last checkpoint) are dropped, so a resumed run does not repeat them."""
        self.workdir = pathlib.Path(workdir)
        self.total_steps = int(total_steps)
        self.active = jax.process_index() == 0
        self._last: tuple[int, float] | None = None  # (step, time) of the last throughput mark
        self._tb = None
        self._jsonl = None
        if self.active:
            from tensorboardX import SummaryWriter  # heavy import; host 0 only

            self.workdir.mkdir(parents=True, exist_ok=True)
            _truncate_jsonl(self.workdir / "metrics.jsonl", resume_step)
            self._tb = SummaryWriter(str(self.workdir / "tensorboard"))
            self._jsonl = open(self.workdir / "metrics.jsonl", "a", encoding="utf-8")  # noqa: SIM115

    def start_timer(self, step: int) -> None:
        """Marks the throughput clock at `step` (call once before the first timed step)."""
        self._last = (step, time.perf_counter())

    def write(
        self,
        step: int,
        metrics: Mapping[str, Any],
        num_examples: int | None = None,
        console: bool = True,
    ) -> dict[str, float]:
        """Writes `metrics` (scalars) for `step`; returns the floats written (plus throughput).

        Keys are used verbatim as TensorBoard tags ('train/loss', 'eval/r1', ...). With
        `num_examples`, examples_per_sec, steps_per_sec and eta_s are added.
        """
        scalars = {k: _to_float(v) for k, v in metrics.items()}
        now = time.perf_counter()
        if num_examples is not None and self._last is not None and now > self._last[1]:
            last_step, last_time = self._last
            dt = now - last_time
            steps = max(step - last_step, 0)
            scalars["examples_per_sec"] = num_examples / dt
            scalars["steps_per_sec"] = steps / dt
            if steps:
                scalars["eta_s"] = (self.total_steps - step) * dt / steps
        if num_examples is not None:
            self._last = (step, now)
        if not self.active:
            return scalars
        for name, value in scalars.items():
            self._tb.add_scalar(name, value, global_step=step)
        # JSON has no NaN/Inf: write them as strings so every line stays valid JSON.
        finite = {k: (v if math.isfinite(v) else str(v)) for k, v in scalars.items()}
        record = {"step": int(step), **finite}
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()
        if console:
            print(self.console_line(step, scalars), flush=True)
        return scalars

    def console_line(self, step: int, scalars: Mapping[str, float]) -> str:
        """'step 120/1000 | loss 0.4321 loss_c 0.0123 | lr 1.00e-04 | 56.1 ex/s | ETA 0:12:34'."""
        parts = [f"step {step}/{self.total_steps}"]
        values = [
            f"{k} {v:.4g}" for k, v in scalars.items() if k not in _CONSOLE_SKIP and not _is_lr(k)
        ]
        if values:
            parts.append(" ".join(values))
        lrs = [f"{k} {v:.2e}" for k, v in scalars.items() if _is_lr(k)]
        if lrs:
            parts.append(" ".join(lrs))
        if "examples_per_sec" in scalars:
            parts.append(f"{scalars['examples_per_sec']:.1f} ex/s")
        if "eta_s" in scalars:
            parts.append(f"ETA {_format_eta(scalars['eta_s'])}")
        return " | ".join(parts)

    def write_config(self, config: Mapping[str, Any] | Any) -> None:
        """Dumps the run config to `workdir`/config.json (host 0) for the record."""
        if not self.active:
            return
        as_dict = config.to_dict() if hasattr(config, "to_dict") else dict(config)
        with open(self.workdir / "config.json", "w", encoding="utf-8") as f:
            json.dump(as_dict, f, indent=2, sort_keys=True, default=str)

    def flush(self) -> None:
        if self._tb is not None:
            self._tb.flush()
        if self._jsonl is not None:
            self._jsonl.flush()

    def close(self) -> None:
        """Flushes and closes the files (idempotent)."""
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None

    def __enter__(self) -> MetricWriter:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
