"""Host memory: the one process setting that makes XLA:CPU train steps ~10 % faster.

XLA:CPU allocates each execution's temporary buffer afresh (0.5 GiB for a small Sync train step
at batch 4, 1.5 GiB at base) and frees it when the step ends. glibc serves a block that large
with an `mmap` of its own and unmaps it on free, so every step touches a fresh mapping:
~133,000 page faults of 4 KiB each and ~0.2 s of kernel time per small step on 2 cores. With
glibc's `glibc.malloc.hugetlb=1` tunable, malloc asks the kernel for transparent huge pages
(`madvise(MADV_HUGEPAGE)`) and the same buffer arrives in 2 MiB pages: ~800 faults, and steps
9-10 % faster at every size (benchmarks/README.md, "Host memory").

glibc reads tunables when a process starts, so the setting has to be in the environment of the
process (the Makefile exports it for `make demo`, `make test` and `make bench`):

    export GLIBC_TUNABLES=glibc.malloc.hugetlb=1

It changes nothing on GPU/TPU hosts' device memory, and nothing where the C library is not glibc
or where transparent huge pages are off (`/sys/kernel/mm/transparent_hugepage/enabled` set to
`never`); in `always` mode the kernel already uses huge pages for such mappings.
"""

from __future__ import annotations

import os
import pathlib
import platform
from collections.abc import Mapping

HUGETLB_TUNABLE = "glibc.malloc.hugetlb=1"
THP_ENABLED = pathlib.Path("/sys/kernel/mm/transparent_hugepage/enabled")


def hugetlb_requested(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether GLIBC_TUNABLES asks malloc for huge pages (hugetlb=1, or 2 = hugetlbfs pages)."""
    for item in environ.get("GLIBC_TUNABLES", "").split(":"):
        name, _, value = item.partition("=")
        if name.strip() == "glibc.malloc.hugetlb" and value.strip() in ("1", "2"):
            return True
    return False


def thp_mode(path: pathlib.Path = THP_ENABLED) -> str | None:
    """The kernel's transparent-huge-page mode ('always' | 'madvise' | 'never'), None if unknown."""
    try:
        text = path.read_text()
    except OSError:
        return None
    start, end = text.find("["), text.find("]")
    return text[start + 1:end] if 0 <= start < end else None


def cpu_hint(device_platform: str, environ: Mapping[str, str] = os.environ,
             mode: str | None = None, libc: str | None = None) -> str | None:
    """A one-line tip when this CPU process would run faster with the hugetlb tunable, else None.

    Only on the CPU backend, under glibc, with THP in 'madvise' mode and the tunable not set.
    `mode` and `libc` default to this machine's (`thp_mode()`, `platform.libc_ver()[0]`).
    """
    mode = thp_mode() if mode is None else mode
    libc = platform.libc_ver()[0] if libc is None else libc
    if device_platform != "cpu" or libc != "glibc" or mode != "madvise":
        return None
    if hugetlb_requested(environ):
        return None
    return (f"CPU steps run ~10% faster with GLIBC_TUNABLES={HUGETLB_TUNABLE} in the environment "
            "(XLA maps a fresh temp buffer every step; huge pages cut its page faults ~150x); "
            "see cavmae_jax/hostmem.py")
