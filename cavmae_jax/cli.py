"""What the command-line entry points share: one-line errors, the workdir lock.

Every CLI (`cavmae_jax.main`, `.evaluate`, `.export`, `.convert`, `data_prep.*`) takes
`--flag=value` flags, shows its defaults in `--help`, and reports a wrong input as one line
`error: ...` on stderr with exit status 2; `--verbosity=1` shows the full traceback instead.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import fcntl
import os
import pathlib
import re
import socket
import sys
from collections.abc import Iterator
from typing import NoReturn

from absl import flags


class WorkdirBusy(RuntimeError):
    """Another process is training in the same workdir."""


class UserError(Exception):
    """Something the user can fix (e.g. a missing optional package): `user_errors` reports it
    as one line. Raise it, or a subclass, with a message that says what to do."""


def fail(message: str, status: int = 2) -> NoReturn:
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(status)


class _HelpFormat(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """--help keeps the description's line breaks and shows every default."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse for the `data_prep.*` and `cavmae_jax.convert` CLIs, with the absl CLIs'
    conventions: defaults shown in --help, and a wrong or missing flag reported as one line
    `error: ...` (exit status 2) instead of argparse's usage block."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", _HelpFormat)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        fail(f"{message} (see {self.prog} --help)")


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
    """What `user_errors` reports as one line. ValueError covers config.ConfigError; the
    checkpoint module's error counts once that module is loaded (only it raises it), so that
    light CLIs (data_prep) need not import Orbax."""
    types: tuple[type[BaseException], ...] = (
        UserError, FileNotFoundError, NotADirectoryError, PermissionError, FloatingPointError,
        WorkdirBusy, ValueError, OSError)
    ckpt = sys.modules.get("cavmae_jax.train.checkpoint")
    return types + ((ckpt.CheckpointError,) if ckpt is not None else ())


_OS_HINTS = {
    errno.ENOSPC: "the disk is full: free some space or choose another folder",
    errno.EDQUOT: "the disk quota is exceeded: free some space or choose another folder",
    errno.EROFS: "the file system is read-only: choose a writable folder",
    errno.EACCES: "no permission: choose a folder you can write to, or fix its permissions",
    errno.ENOTDIR: "a part of that path is a file, not a folder: choose another path",
}


def _os_error_line(e: OSError) -> str:
    """An OSError as one line; the common write failures also say what to do."""
    hint = _OS_HINTS.get(e.errno or 0)
    if hint and e.filename is not None:
        return f"{os.fsdecode(e.filename)}: {e.strerror} ({hint})"
    return (str(e).strip() or type(e).__name__).splitlines()[0]


@contextlib.contextmanager
def user_errors(verbosity: int = 0) -> Iterator[None]:
    """Turns the errors a user can fix into one line (tracebacks at verbosity >= 1)."""
    try:
        yield
    except user_errors_types() as e:
        if verbosity >= 1:
            raise
        fail(_os_error_line(e) if isinstance(e, OSError) else str(e).strip() or type(e).__name__)


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
