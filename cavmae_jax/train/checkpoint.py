"""Checkpoints: the ONLY module that imports Orbax.

`Checkpointer` saves the train state and the Grain iterator together (one Orbax step directory
holding `state/` and `data_iter/`), keeps the latest `max_to_keep`, and restores onto whatever
mesh the abstract target's shardings describe. It also owns preemption: `should_stop(step)`
turns a SIGTERM (single process) or JAX's preemption sync point (multi-process) into a flag the
loop checks every step:

    ckpt = Checkpointer(workdir / 'ckpt', max_to_keep=3, save_interval_steps=1000)
    ckpt.install_sigterm_handler()
    restored = ckpt.restore_latest(abstract_state, data_iter)  # abstract leaves carry shardings
    state, step = restored if restored else (init_state, 0)
    for step in range(step + 1, total_steps + 1):
        state, metrics = train_step(state, next(data_iter))
        ckpt.save(step, state, data_iter)      # saves every save_interval_steps; before next()
        if ckpt.should_stop(step):
            ckpt.save(step, state, data_iter, force=True)
            break
    ckpt.close()                               # waits for async saves

The Grain iterator state is one JSON per process: restoring it needs the same process count.
Each step directory also holds the run's config (`config/`, JSON), so a step can be evaluated,
finetuned from or exported without the training config (`read_config`, `restore_params`).
`restore_latest` falls back to the newest step that reads, naming the ones that did not.

`save_params` / `load_params` write and read a params-only checkpoint plus a JSON metadata dict
(converted official weights, exports, the finetuning weight average); `resolve` tells which of
the three a path is: a run folder (its latest step), a step directory or a params directory.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Mapping
from typing import Any

import grain
import grain.checkpoint
import jax
import orbax.checkpoint as ocp
from etils import epath

PyTree = Any

_STATE = "state"
_DATA_ITER = "data_iter"
_PARAMS = "params"
_METADATA = "metadata"
_CONFIG = "config"


class CheckpointError(RuntimeError):
    """No readable checkpoint where one was expected; the message says where and why."""


def _absolute(path: str | os.PathLike) -> epath.Path:
    """Orbax needs absolute paths: make local ones absolute, keep URLs (gs://...) as they are."""
    if "://" in str(path):
        return epath.Path(path)
    return epath.Path(path).absolute()


class Checkpointer:
    """Periodic, async, preemption-aware checkpoints of (train state, Grain iterator)."""

    def __init__(
        self,
        workdir: str | os.PathLike,
        max_to_keep: int | None = 3,
        save_interval_steps: int = 1000,
        use_async: bool = True,
        config: Mapping[str, Any] | None = None,
    ):
        """Opens (or creates) the checkpoint directory `workdir`.

        Args:
            workdir: directory holding one sub-directory per saved step.
            max_to_keep: how many of the latest checkpoints survive (older ones are deleted);
                None keeps all.
            save_interval_steps: `save()` writes when step % save_interval_steps == 0
                (or with force=True).
            use_async: write arrays in a background thread (call `wait()` before reading them).
            config: the run's config (JSON-serializable), written into every saved step.
        """
        if save_interval_steps < 1:
            raise ValueError(f"save_interval_steps must be >= 1, got {save_interval_steps}.")
        self.directory = _absolute(workdir)
        self._interval = save_interval_steps
        options = ocp.CheckpointManagerOptions(
            save_decision_policy=ocp.checkpoint_managers.FixedIntervalPolicy(save_interval_steps),
            preservation_policy=ocp.checkpoint_managers.LatestN(max_to_keep),
            enable_async_checkpointing=use_async,
            create=True,
        )
        self._manager = ocp.CheckpointManager(self.directory, options=options)
        self._stop_requested = threading.Event()
        self._previous_handler: Any = None
        self._preemption_cache: tuple[int, bool] | None = None
        self._config = dict(config) if config is not None else None

    # -- saving and restoring -------------------------------------------------------------------

    def save(
        self,
        step: int,
        state: PyTree,
        data_iter: grain.DatasetIterator | None = None,
        force: bool = False,
    ) -> bool:
        """Saves `state` (and the iterator position) as `step` if due; returns whether it saved.

        Call it after the update for `step` and BEFORE drawing the next batch, so the iterator
        state matches the state pytree. All processes must call it.
        """
        items = {_STATE: ocp.args.StandardSave(state)}
        if data_iter is not None:
            items[_DATA_ITER] = grain.checkpoint.CheckpointSave(data_iter)
        if self._config is not None:
            items[_CONFIG] = ocp.args.JsonSave(self._config)
        saved = self._manager.save(step, args=ocp.args.Composite(**items), force=force)
        if saved:
            logging.info("Checkpoint: saving step %d to %s", step, self.directory)
        return saved

    def restore(
        self,
        step: int,
        abstract_state: PyTree,
        data_iter: grain.DatasetIterator | None = None,
    ) -> PyTree:
        """Restores the state of `step` onto `abstract_state`'s shapes, dtypes and shardings.

        `abstract_state` is a pytree of `jax.ShapeDtypeStruct(shape, dtype, sharding=...)` (or
        arrays) for the CURRENT mesh, e.g. from `jax.eval_shape` + `parallel.tree_shardings`;
        the checkpoint is resharded onto it. `data_iter`, if given, is restored in place.
        """
        items = {_STATE: ocp.args.StandardRestore(abstract_state)}
        if data_iter is not None:
            if (self.directory / str(step) / _DATA_ITER).exists():
                items[_DATA_ITER] = grain.checkpoint.CheckpointRestore(data_iter)
            else:
                logging.warning("Checkpoint %d has no data iterator; it starts fresh.", step)
        restored = self._manager.restore(step, args=ocp.args.Composite(**items))
        return restored[_STATE]

    def restore_latest(
        self,
        abstract_state: PyTree,
        data_iter: grain.DatasetIterator | None = None,
    ) -> tuple[PyTree, int] | None:
        """(state, step) of the newest readable checkpoint, or None if there is none.

        A step that fails to read (truncated file, bit flip, broken metadata) is skipped with a
        warning naming it and the error, and the next older one is tried; CheckpointError when
        steps exist but none reads. See `restore`.
        """
        steps = sorted(self._manager.all_steps(), reverse=True)
        failures = []
        for step in steps:
            logging.info("Checkpoint: restoring step %d from %s", step, self.directory)
            try:
                return self.restore(step, abstract_state, data_iter), step
            except Exception as e:  # noqa: BLE001 - any unreadable step: try the one before
                reason = _one_line(e)
                failures.append(f"step {step}: {reason}")
                aside = self.directory / f"{step}.unreadable"
                logging.warning("Checkpoint step %d in %s is unreadable (%s); moved to %s, "
                                "trying an older one.", step, self.directory, reason, aside.name)
                if jax.process_index() == 0 and not aside.exists():
                    (self.directory / str(step)).rename(aside)  # kept, out of the way
                self._manager.reload()
        if failures and len(failures) == len(steps):
            raise CheckpointError(f"no readable checkpoint in {self.directory} "
                                  f"({'; '.join(failures)}); move the folder away to start over")
        return None

    def due(self, step: int) -> bool:
        """Whether `save(step)` will write (the fixed interval; a forced save always writes)."""
        return step % self._interval == 0

    def latest_step(self) -> int | None:
        """The newest saved step (None if none)."""
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        """All saved steps, oldest first."""
        return sorted(self._manager.all_steps())

    def wait(self) -> None:
        """Blocks until pending async saves are committed."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        """Waits for pending saves, releases Orbax resources and the SIGTERM handler."""
        self._manager.wait_until_finished()
        self._manager.close()
        self.uninstall_sigterm_handler()

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- preemption -----------------------------------------------------------------------------

    def install_sigterm_handler(self) -> None:
        """On SIGTERM, set the stop flag instead of dying (single-process runs).

        In multi-process runs JAX's preemption service already listens for SIGTERM and
        `should_stop` asks it instead, so no Python handler is installed there.
        Must be called from the main thread.
        """
        if jax.process_count() > 1 or self._previous_handler is not None:
            return

        def handler(signum: int, frame: Any) -> None:
            del frame
            logging.warning("Received signal %d: will checkpoint and stop.", signum)
            self._stop_requested.set()

        self._previous_handler = signal.signal(signal.SIGTERM, handler)

    def uninstall_sigterm_handler(self) -> None:
        """Restores the SIGTERM handler that was active before `install_sigterm_handler`."""
        if self._previous_handler is not None:
            signal.signal(signal.SIGTERM, self._previous_handler)
            self._previous_handler = None

    def request_stop(self) -> None:
        """Sets the stop flag by hand (tests, or a loop that wants to stop cleanly)."""
        self._stop_requested.set()

    def should_stop(self, step: int) -> bool:
        """True when the loop should save `step` (force=True) and exit because of preemption.

        Multi-process: every process must call this at every step with the same `step`; it is
        True on all of them at the same step (JAX's preemption sync point).
        """
        if self._stop_requested.is_set():
            return True
        if jax.process_count() > 1:
            if self._preemption_cache is None or self._preemption_cache[0] != step:
                self._preemption_cache = (step, bool(self._manager.reached_preemption(step)))
            return self._preemption_cache[1]
        return False


def _one_line(e: BaseException) -> str:
    """The first line of an exception's message, with its type; long ones cut."""
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    text = f"{type(e).__name__}: {text}" if text else type(e).__name__
    return text if len(text) <= 300 else text[:297] + "..."


# -- any checkpoint, by path ------------------------------------------------------------------


def is_params_dir(path: str | os.PathLike) -> bool:
    p = _absolute(path)
    return (p / _PARAMS).is_dir() and (p / _METADATA).exists()


def is_step_dir(path: str | os.PathLike) -> bool:
    return (_absolute(path) / _STATE).is_dir()


def _steps_in(directory: epath.Path) -> list[int]:
    if not directory.is_dir():
        return []
    return sorted(int(d.name) for d in directory.iterdir()
                  if d.name.isdigit() and (d / _STATE).is_dir())


def resolve(path: str | os.PathLike) -> tuple[str, epath.Path, int | None]:
    """(kind, directory, step) of a checkpoint path; kind is 'step' or 'params'.

    Accepts a params directory, a step directory (`W/checkpoints/300`), a run's `checkpoints/`
    folder or a run folder `W` (both: the latest step). Raises FileNotFoundError / ValueError
    with one line saying what was expected.
    """
    p = _absolute(path)
    if not p.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if is_params_dir(p):
        return "params", p, None
    if is_step_dir(p):
        return "step", p, int(p.name) if p.name.isdigit() else None
    for folder in (p / "checkpoints", p):
        if steps := _steps_in(folder):
            return "step", folder / str(steps[-1]), steps[-1]
    raise ValueError(f"{path} is not a checkpoint: expected a training run folder, one of its "
                     "checkpoints/<step> directories, or a params directory (python -m "
                     "cavmae_jax.export)")


def read_config(step_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The run config saved in a step directory (None for checkpoints written before it was)."""
    path = _absolute(step_dir)
    if not (path / _CONFIG).exists():
        return None
    with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as ckptr:
        restored = ckptr.restore(path, args=ocp.args.Composite(**{_CONFIG: ocp.args.JsonRestore()}))
    return dict(restored[_CONFIG])


def restore_params(step_dir: str | os.PathLike, abstract_params: PyTree) -> PyTree:
    """Only the params of a training step directory (no optimizer state is read).

    `abstract_params`: `jax.ShapeDtypeStruct`s with shardings, e.g. the model's
    `jax.eval_shape` of its init placed on a mesh.
    """
    path = _absolute(step_dir)
    item = {"params": abstract_params}
    args = ocp.args.PyTreeRestore(
        item=item, restore_args=ocp.checkpoint_utils.construct_restore_args(item),
        partial_restore=True)
    with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as ckptr:
        restored = ckptr.restore(path, args=ocp.args.Composite(**{_STATE: args}))
    return restored[_STATE]["params"]


# -- params-only checkpoints ------------------------------------------------------------------


def save_params(
    directory: str | os.PathLike,
    params: PyTree,
    metadata: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> None:
    """Writes `params` and a JSON-serializable `metadata` dict to `directory` (synchronously).

    Use it for converted official checkpoints and finetuning inits; `metadata` can record the
    source file, architecture kwargs and the conversion key report.
    """
    path = _absolute(directory)
    with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as ckptr:
        ckptr.save(
            path,
            args=ocp.args.Composite(
                **{
                    _PARAMS: ocp.args.StandardSave(params),
                    _METADATA: ocp.args.JsonSave(dict(metadata or {})),
                }
            ),
            force=overwrite,
        )


def load_params(
    directory: str | os.PathLike, abstract_params: PyTree | None = None
) -> tuple[PyTree, dict[str, Any]]:
    """Reads (params, metadata) written by `save_params`.

    Without `abstract_params` the arrays come back as saved (replicated on this process's
    devices); with a tree of `jax.ShapeDtypeStruct(..., sharding=...)` they are placed and cast
    to match it (and a shape mismatch raises).
    """
    path = _absolute(directory)
    with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as ckptr:
        restored = ckptr.restore(
            path,
            args=ocp.args.Composite(
                **{
                    _PARAMS: ocp.args.StandardRestore(abstract_params),
                    _METADATA: ocp.args.JsonRestore(),
                }
            ),
        )
    return restored[_PARAMS], dict(restored[_METADATA] or {})
