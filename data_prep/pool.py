"""Converts inputs in spawned worker processes, in bounded memory, surviving a worker's death.

`converted_items(items, cfg, workers)` yields each input's results in input order: a list of
`("ok", ...)` / `("fail", reason)` tuples from `data_prep.clips.encoded_records`, or a `Spilled`
file of them when they are large (a long input cut by --split_long). A worker that dies (killed
for memory, a crash in a decoder) fails only the input it held, with "worker process died (...)",
and a new worker takes its place. Workers end with the converting process, also when it is
killed (SIGKILL included).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.connection
import os
import pathlib
import pickle
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

from data_prep.clips import ConvertConfig, encoded_records, failure_reason
from data_prep.inputs import Item

INLINE_BYTES = 8 << 20
"""An input's records up to this many bytes travel back in memory; beyond that (a long input cut
by --split_long) they go through a spill file, so that no process holds them all at once."""

_DEATH_POLL_S = 0.5  # how often a worker checks for its parent where prctl is unavailable
_READY = "ready"  # a worker's first message: it started (a death before it is not the input's)


class Spilled:
    """An input's results in a spill file; iterating reads them back one at a time (in order),
    then deletes the file."""

    def __init__(self, path: str, count: int):
        self.path, self.count = path, count

    def __iter__(self) -> Iterator[tuple]:
        try:
            with open(self.path, "rb") as f:
                for _ in range(self.count):
                    yield pickle.load(f)
        finally:
            self.discard()

    def discard(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


def _run_item(item: Item, cfg: ConvertConfig, spill_path: str) -> list[tuple] | Spilled:
    """`process_item` in bounded memory: the results in a list, or spilled once they are large.

    All or nothing: an input that fails midway leaves no record, only [("fail", reason)].
    """
    out: list[tuple] = []
    size, count, f = 0, 0, None
    try:
        for res in encoded_records(item, cfg):
            count += 1
            if f is None:
                out.append(res)
                size += len(res[2])
                if size > INLINE_BYTES:
                    f = open(spill_path, "wb")  # noqa: SIM115 - closed below, on every path
                    for r in out:
                        pickle.dump(r, f, protocol=pickle.HIGHEST_PROTOCOL)
                    out = []
            else:
                pickle.dump(res, f, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as e:  # noqa: BLE001 - one bad input must not stop the run
        if f is not None:
            f.close()
            Spilled(spill_path, 0).discard()
        return [("fail", failure_reason(e))]
    if f is not None:
        f.close()
        return Spilled(spill_path, count)
    return out or [("fail", "no record produced")]


def exit_with_parent(parent_pid: int) -> None:
    """Makes this worker end when its parent process ends, however it ends (SIGKILL too).

    Linux: the kernel sends SIGKILL on the parent's death (prctl PR_SET_PDEATHSIG). Elsewhere,
    or if that fails, a daemon thread polls the parent pid. (A worker waiting for work also
    ends when its pipe to the parent closes.)
    """
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            if libc.prctl(1, int(signal.SIGKILL), 0, 0, 0) == 0:  # 1 = PR_SET_PDEATHSIG
                if os.getppid() != parent_pid:  # the parent died before prctl took effect
                    os._exit(1)
                return
        except (OSError, AttributeError):
            pass

    def watch() -> None:
        while True:
            time.sleep(_DEATH_POLL_S)
            if os.getppid() != parent_pid:
                os._exit(1)

    threading.Thread(target=watch, name="watch-parent", daemon=True).start()


def _worker_main(conn: Any, cfg: ConvertConfig, parent_pid: int, spill_dir: str) -> None:
    """A worker process: converts the items it is sent, one at a time, until told to stop."""
    exit_with_parent(parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C: the parent stops the workers
    try:
        conn.send(_READY)
    except OSError:
        return
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return  # the parent is gone
        if msg is None:
            return
        seq, item = msg
        res = _run_item(item, cfg, os.path.join(spill_dir, f"{seq}.spill"))
        try:
            conn.send((seq, res))
        except OSError:
            if isinstance(res, Spilled):
                res.discard()
            return


def _death_reason(exitcode: int | None) -> str:
    """failures.jsonl reason for an input whose worker process died converting it."""
    if exitcode is not None and exitcode < 0:
        if -exitcode == signal.SIGKILL:
            return "worker process died (killed: out of memory?)"
        try:
            return f"worker process died ({signal.Signals(-exitcode).name})"
        except ValueError:
            return f"worker process died (signal {-exitcode})"
    return f"worker process died (exit code {exitcode})"


class _Pool:
    """Spawned worker processes, one input each at a time over their own pipe.

    Knowing which input each worker holds, a worker that dies (killed for memory, a crash in a
    decoder) fails only that input; a new worker takes its place and the run goes on.
    """

    def __init__(self, workers: int, cfg: ConvertConfig, spill_dir: str):
        self.ctx = multiprocessing.get_context("spawn")
        self.cfg, self.spill_dir = cfg, spill_dir
        self.idle: list[tuple[Any, Any]] = []  # (process, connection)
        self.busy: dict[Any, tuple[Any, int, Item]] = {}  # connection -> (process, seq, item)
        self.started: set[int] = set()  # pids of the workers that reported _READY
        for _ in range(workers):
            self._start()

    def _start(self) -> None:
        conn, child = self.ctx.Pipe()
        proc = self.ctx.Process(target=_worker_main, name="convert-worker", daemon=True,
                                args=(child, self.cfg, os.getpid(), self.spill_dir))
        proc.start()
        child.close()
        self.idle.append((proc, conn))

    def submit(self, seq: int, item: Item) -> None:
        proc, conn = self.idle.pop()
        conn.send((seq, item))
        self.busy[conn] = (proc, seq, item)

    def collect(self) -> list[tuple[int, list[tuple] | Spilled]]:
        """Waits for busy workers to report; returns the (seq, results) of finished inputs.

        An input whose worker died gets [("fail", reason)] and a new worker is started. A worker
        that dies before it started (a broken environment, not an input) stops the run.
        """
        sentinels = {proc.sentinel: conn for conn, (proc, _, _) in self.busy.items()}
        ready = multiprocessing.connection.wait([*self.busy, *sentinels])
        out = []
        for conn in {sentinels.get(r, r) for r in ready}:
            proc, seq, item = self.busy[conn]
            try:
                msg = conn.recv()
            except (EOFError, OSError, pickle.UnpicklingError):
                del self.busy[conn]
                proc.join()
                conn.close()
                reason = _death_reason(proc.exitcode)
                if proc.pid not in self.started:
                    raise RuntimeError(f"a convert worker process could not start ({reason}); "
                                       "see the errors above") from None
                print(f"warning: {reason} converting {item.source}; recorded in failures.jsonl, "
                      "going on with the rest", file=sys.stderr, flush=True)
                out.append((seq, [("fail", reason)]))
                self._start()
                continue
            if msg == _READY:
                self.started.add(proc.pid)
                continue
            got_seq, res = msg
            assert got_seq == seq, (got_seq, seq)
            del self.busy[conn]
            self.idle.append((proc, conn))
            out.append((seq, res))
        return out

    def close(self, graceful: bool) -> None:
        """Stops every worker: asked to exit when idle, else (an error, Ctrl-C) killed."""
        procs = [(p, c) for p, c in self.idle] + [(p, c) for c, (p, _, _) in self.busy.items()]
        for proc, conn in procs:
            if graceful:
                with contextlib.suppress(OSError):
                    conn.send(None)
            else:
                proc.kill()
        for proc, conn in procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()
                proc.join()
            conn.close()
        self.idle, self.busy = [], {}


def _spill_dir(tmp_dir: str | os.PathLike | None) -> str:
    """A fresh folder for spill files; removes those left by runs whose process is gone."""
    if tmp_dir is not None:
        base = pathlib.Path(tmp_dir)
        base.mkdir(parents=True, exist_ok=True)
        for old in base.glob("spill-*"):
            pid = old.name.split("-")[1]
            if pid.isdigit() and not _alive(int(pid)):
                shutil.rmtree(old, ignore_errors=True)
    return tempfile.mkdtemp(prefix=f"spill-{os.getpid()}-", dir=tmp_dir)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists, but not ours to signal
    return True


def converted_items(items: Sequence[Item], cfg: ConvertConfig, workers: int,
                    tmp_dir: str | os.PathLike | None = None) -> Iterator[list[tuple] | Spilled]:
    """Each item's results (`encoded_records`), in item order, computed in `workers` spawned
    processes (in this one when `workers` <= 1).

    Each result is a list of tuples or a `Spilled` file of them (iterate it once, or `discard`
    it). Memory stays bounded: at most 4 x workers inputs run ahead of the consumer, and large
    results are spilled to `tmp_dir` (default: the system's temp folder). A worker that dies
    fails its input only.
    """
    flat = list(items)
    if not flat:
        return
    spill_dir = _spill_dir(tmp_dir)
    try:
        if workers <= 1:
            for seq, it in enumerate(flat):
                yield _run_item(it, cfg, os.path.join(spill_dir, f"{seq}.spill"))
            return
        pool = _Pool(min(workers, len(flat)), cfg, spill_dir)
        finished = False
        try:
            done: dict[int, list[tuple] | Spilled] = {}
            sent = nxt = 0
            while nxt < len(flat):
                while pool.idle and sent < len(flat) and sent - nxt < 4 * workers:
                    pool.submit(sent, flat[sent])
                    sent += 1
                if nxt in done:
                    yield done.pop(nxt)
                    nxt += 1
                else:
                    done.update(pool.collect())
            finished = True
        finally:
            pool.close(graceful=finished)
            for res in done.values():
                if isinstance(res, Spilled):
                    res.discard()
    finally:
        shutil.rmtree(spill_dir, ignore_errors=True)
