"""What the command-line entry points share: one-line errors, the workdir lock.

Every CLI (`cavmae_jax.main`, `.evaluate`, `.export`, `.convert`, `data_prep.*`) takes
`--flag=value` flags, shows its defaults in `--help`, and reports a wrong input as one line
`error: ...` on stderr with exit status 2; `--verbosity=1` shows the full traceback instead.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pathlib
import re
import socket
import sys
from collections.abc import Iterator
from typing import NoReturn

from absl import flags

from cavmae_jax.config import ConfigError


class WorkdirBusy(RuntimeError):
    """Another process is training in the same workdir."""


def fail(message: str, status: int = 2) -> NoReturn:
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(status)


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing (for `app.run(main, flags_parser=parse_flags)`), with an unknown or
    ill-typed `--config.x.y=v` reported as one line instead of a traceback."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        fail(str(e))
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        text = " ".join(str(e).replace("\\n", " ").replace("\\'", "'").split())
        bad = [a.split("=")[0] for a in argv[1:] if a.startswith("--config.")
               and any(f'"{k}"' in text or f"'{k}'" in text
                       for k in a.split("=")[0].split(".")[1:])]
        hint = re.search(r'Did you mean "([^"]+)"', text)
        if bad:
            fail(f"{bad[0]}: no such config key" + (f" (did you mean {hint.group(1)}?)"
                                                     if hint else "") if isinstance(
                e, (AttributeError, KeyError)) else f"{bad[0]}: {text}")
        fail(text)


def user_errors_types() -> tuple[type[BaseException], ...]:
    from cavmae_jax.train.checkpoint import CheckpointError

    return (ConfigError, FileNotFoundError, NotADirectoryError, PermissionError,
            CheckpointError, FloatingPointError, WorkdirBusy, ValueError, OSError)


@contextlib.contextmanager
def user_errors(verbosity: int = 0) -> Iterator[None]:
    """Turns the errors a user can fix into one line (tracebacks at verbosity >= 1)."""
    try:
        yield
    except user_errors_types() as e:
        if verbosity >= 1:
            raise
        text = str(e).strip() or type(e).__name__
        fail(text.splitlines()[0] if isinstance(e, OSError) else text)


@contextlib.contextmanager
def workdir_lock(workdir: str | os.PathLike) -> Iterator[None]:
    """Holds an exclusive lock on W/.lock while training; a second run is refused.

    The lock is the kernel's (flock): it is released when the process ends in any way,
    kill -9 included, so a stale lock file never blocks a later run.
    """
    path = pathlib.Path(workdir) / ".lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    f = open(path, "a+", encoding="utf-8")  # noqa: SIM115 - held for the whole run
    try:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            raise WorkdirBusy(f"{workdir} is in use by a training run ({holder}); wait for it "
                              "to finish or use another --workdir") from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        f.flush()
        yield
    finally:
        f.close()
