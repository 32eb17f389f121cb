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

`save_params` / `load_params` write and read a params-only checkpoint plus a JSON metadata dict
(converted official weights, finetuning init).
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
    ):
        """Opens (or creates) the checkpoint directory `workdir`.

        Args:
            workdir: directory holding one sub-directory per saved step.
            max_to_keep: how many of the latest checkpoints survive (older ones are deleted);
                None keeps all.
            save_interval_steps: `save()` writes when step % save_interval_steps == 0
                (or with force=True).
            use_async: write arrays in a background thread (call `wait()` before reading them).
        """
        if save_interval_steps < 1:
            raise ValueError(f"save_interval_steps must be >= 1, got {save_interval_steps}.")
        self.directory = _absolute(workdir)
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
        """(state, step) of the newest checkpoint, or None if there is none. See `restore`."""
        step = self.latest_step()
        if step is None:
            return None
        logging.info("Checkpoint: restoring step %d from %s", step, self.directory)
        return self.restore(step, abstract_state, data_iter), step

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
