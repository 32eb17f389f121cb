"""cavmae_jax.hostmem: the glibc huge-page tunable, when it is hinted, and that it does its job."""

import os
import platform
import subprocess
import sys

import pytest

from cavmae_jax import hostmem

HINT_ARGS = dict(mode="madvise", libc="glibc")


@pytest.mark.parametrize("value, expected", [
    ("glibc.malloc.hugetlb=1", True),
    ("glibc.malloc.hugetlb=2", True),
    ("glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1", True),
    ("glibc.malloc.hugetlb=0", False),
    ("glibc.malloc.arena_max=2", False),
    ("", False),
])
def test_hugetlb_requested(value, expected):
    assert hostmem.hugetlb_requested({"GLIBC_TUNABLES": value}) is expected
    assert hostmem.hugetlb_requested({}) is False


def test_cpu_hint_only_where_it_helps():
    hint = hostmem.cpu_hint("cpu", environ={}, **HINT_ARGS)
    assert hint is not None and hostmem.HUGETLB_TUNABLE in hint
    env = {"GLIBC_TUNABLES": hostmem.HUGETLB_TUNABLE}
    assert hostmem.cpu_hint("cpu", environ=env, **HINT_ARGS) is None  # already set
    assert hostmem.cpu_hint("gpu", environ={}, **HINT_ARGS) is None   # device memory
    assert hostmem.cpu_hint("cpu", environ={}, mode="never", libc="glibc") is None
    assert hostmem.cpu_hint("cpu", environ={}, mode="always", libc="glibc") is None
    assert hostmem.cpu_hint("cpu", environ={}, mode="madvise", libc="") is None  # not glibc


def test_thp_mode_reads_the_bracketed_choice(tmp_path):
    f = tmp_path / "enabled"
    f.write_text("always [madvise] never\n")
    assert hostmem.thp_mode(f) == "madvise"
    f.write_text("[always] madvise never\n")
    assert hostmem.thp_mode(f) == "always"
    assert hostmem.thp_mode(tmp_path / "missing") is None


# Allocate and touch 256 MiB through glibc malloc (the way XLA:CPU gets its temp buffer) and
# print the minor page faults that cost.
_TOUCH = """
import ctypes, resource
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
n = 256 << 20
f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
p = libc.malloc(n)
ctypes.memset(p, 1, n)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
"""


def _faults(tunables: str | None) -> int:
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    if tunables is not None:
        env["GLIBC_TUNABLES"] = tunables
    out = subprocess.run([sys.executable, "-c", _TOUCH], env=env, check=True,
                         capture_output=True, text=True)
    return int(out.stdout)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc" or hostmem.thp_mode() != "madvise",
                    reason="needs glibc and transparent huge pages in 'madvise' mode "
                           "(/sys/kernel/mm/transparent_hugepage/enabled)")
def test_tunable_cuts_page_faults_of_a_large_malloc():
    plain, huge = _faults(None), _faults(hostmem.HUGETLB_TUNABLE)
    assert plain >= 256 * 256 * 0.9, plain  # one fault per 4 KiB page
    assert huge * 10 < plain, (huge, plain)
