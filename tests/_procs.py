"""Subprocess machinery shared by the tests that run the CLIs: environment, slots, logs.

`env(devices, cache)` gives a subprocess N forced CPU devices (and a shared compilation cache);
`Slots` caps how many heavy processes run at once; `Proc` is one started process with its log;
`wait_for` polls a condition; `read_records` reads a run's metrics.jsonl; `run_cli` runs one
command to the end and returns its exit status and output.
"""

import contextlib
import dataclasses
import json
import os
import pathlib
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
TIMEOUT = 420  # seconds per subprocess; CI has 2 loaded cores


def env(devices: int, cache: pathlib.Path | None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_COORDINATOR")}
    for key in ("JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        env.pop(key, None)
    flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "", env.get("XLA_FLAGS", ""))
    # Backend optimization level 0 halves XLA:CPU compile time, which dominates these short runs
    # (the same HLO, partitioning and collectives; only the LLVM code generation is simpler).
    env["XLA_FLAGS"] = (f"{flags} --xla_force_host_platform_device_count={devices} "
                        "--xla_backend_optimization_level=0").strip()
    env["JAX_PLATFORMS"] = "cpu"
    if cache is not None:  # compiled executables shared by runs of the same program
        env["JAX_COMPILATION_CACHE_DIR"] = str(cache)
        env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
        env["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
    env.update(extra)
    return env


class Slots:
    """At most `n` training processes at once (memory on small CI machines); the waiting
    request with the lowest priority number goes first, ties in arrival order."""

    def __init__(self, n: int):
        self.free = n
        self._cond = threading.Condition()
        self._queue: list[tuple[int, int, int]] = []  # (priority, ticket, count)
        self._tickets = 0

    def acquire(self, count: int, priority: int) -> None:
        with self._cond:
            self._tickets += 1
            me = (priority, self._tickets, count)
            self._queue.append(me)
            self._cond.wait_for(lambda: min(self._queue) == me and self.free >= count)
            self._queue.remove(me)
            self.free -= count
            self._cond.notify_all()

    def release(self, count: int) -> None:
        with self._cond:
            self.free += count
            self._cond.notify_all()


@dataclasses.dataclass
class Proc:
    """One subprocess, its log file and the metrics.jsonl line count when it started."""

    popen: subprocess.Popen
    log: pathlib.Path
    first_line: int
    release: Callable[[], None]

    def wait(self, expect_rc: int | None = 0) -> int:
        try:
            rc = self.popen.wait(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()
            raise AssertionError(f"timed out after {TIMEOUT}s:\n{self.tail()}") from None
        finally:
            self.release()
        if expect_rc is not None and rc != expect_rc:
            raise AssertionError(f"exit status {rc} (expected {expect_rc}):\n{self.tail()}")
        return rc

    def tail(self, n: int = 4000) -> str:
        return self.text()[-n:]

    def text(self) -> str:
        return self.log.read_text(errors="replace")


def wait_for(cond: Callable[[], Any], stopped: Callable[[], Any], what: str,
              timeout: float = TIMEOUT) -> None:
    """Polls `cond` until true; fails if `stopped()` (process exited / job done) comes first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        if stopped() and not cond():
            raise AssertionError(f"gone before {what}")
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def read_records(workdir: pathlib.Path) -> list[dict[str, Any]]:
    path = workdir / "metrics.jsonl"
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(json.JSONDecodeError):  # a line cut by SIGKILL mid-write
            out.append(json.loads(line))
    return out


def run_cli(module: str, *args: str, devices: int = 1, timeout: int = TIMEOUT,
            **extra_env: str) -> subprocess.CompletedProcess:
    """`python -m module args` in the repository root, to the end; stdout and stderr apart."""
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env=env(devices, None, **extra_env))


# Tests that find worker processes through /proc (children, gone) run on Linux only.
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="reads /proc to find the worker processes")


def children(pid: int) -> list[int]:
    """The pids whose parent is `pid` (read from /proc: Linux only)."""
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                stat = pathlib.Path(f"/proc/{d}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(d))
    return out


def gone(pid: int) -> bool:
    """Whether process `pid` has exited (a zombie has: reaping it is its new parent's job)."""
    try:
        state = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state in ("Z", "X")
