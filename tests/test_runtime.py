"""zamba2vl.runtime: the allocator setting the CLI and the server apply, and handing freed memory back (each case in a
fresh interpreter: both are process-wide)."""

import os
import subprocess
import sys

import pytest

CODE = "from zamba2vl.runtime import tune_cpu_allocator as t; print(t(), t())"


def _run(env_extra):
    env = {k: v for k, v in os.environ.items() if k != "ZAMBA2VL_MALLOC"}
    out = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, env={**env, **env_extra},
                         timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


def _glibc() -> bool:
    try:
        return sys.platform.startswith("linux") and bool(os.confstr("CS_GNU_LIBC_VERSION"))
    except (ValueError, OSError):
        return False


@pytest.mark.skipif(not _glibc(), reason="mallopt is glibc's; elsewhere the function returns False (tested below)")
def test_applied_on_glibc_each_time_it_is_called():
    assert _run({}) == ["True", "True"]


def test_opt_out_leaves_malloc_alone():
    assert _run({"ZAMBA2VL_MALLOC": "default"}) == ["False", "False"]


# Request-sized blocks (6 MiB, 240 MiB live at once) allocated and freed three times with small long-lived objects
# between them, as a burst of requests leaves them; prints the MiB still resident once all are freed, then after
# give_back_memory().
BURST = """
import torch
from zamba2vl.runtime import give_back_memory, tune_cpu_allocator
def rss():
    return next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmRSS:"))
assert tune_cpu_allocator()
base = rss()
small = []
for _ in range(3):
    big = []
    for _ in range(40):
        big.append(torch.ones(6 * 2**18))
        small.append(torch.ones(16))
    del big
kept = rss() - base
give_back_memory("cpu")
print(kept / 2**20, (rss() - base) / 2**20)
"""


@pytest.mark.skipif(not _glibc(), reason="malloc_trim is glibc's")
def test_freed_memory_is_kept_for_reuse_until_given_back():
    env = {k: v for k, v in os.environ.items() if k != "ZAMBA2VL_MALLOC"}
    out = subprocess.run([sys.executable, "-c", BURST], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    kept, after = map(float, out.stdout.split())
    assert kept > 200  # the tuned allocator keeps the freed blocks (measured 259-523 MiB on 2026-11-23)
    assert after < 8  # and gives them all back (measured 0.9-1.1 MiB)



# Four threads allocate at the same moment (as the server's scheduler, event loop and image-preparing threads do);
# prints how many heaps (arenas) malloc then has, from malloc_info's report.
HEAPS = """
import ctypes, sys, tempfile, threading, torch
from zamba2vl.runtime import _LIBC, SERVE_MMAP_THRESHOLD, tune_cpu_allocator
assert tune_cpu_allocator(SERVE_MMAP_THRESHOLD, arenas=None if sys.argv[1] == "default" else int(sys.argv[1]))
barrier, kept = threading.Barrier(4), []
def work():
    barrier.wait()
    kept.append([torch.ones(1000) for _ in range(100)])
threads = [threading.Thread(target=work) for _ in range(4)]
for t in threads:
    t.start()
for t in threads:
    t.join()
_LIBC.fopen.restype, _LIBC.fopen.argtypes = ctypes.c_void_p, [ctypes.c_char_p, ctypes.c_char_p]
_LIBC.malloc_info.argtypes, _LIBC.fclose.argtypes = [ctypes.c_int, ctypes.c_void_p], [ctypes.c_void_p]
with tempfile.NamedTemporaryFile(suffix=".xml") as f:
    fp = _LIBC.fopen(f.name.encode(), b"w")
    _LIBC.malloc_info(0, fp)
    _LIBC.fclose(fp)
    print(open(f.name).read().count("<heap nr="))
"""


def _heaps(arenas: str) -> int:
    env = {k: v for k, v in os.environ.items() if k not in ("ZAMBA2VL_MALLOC", "MALLOC_ARENA_MAX")}
    out = subprocess.run([sys.executable, "-c", HEAPS, arenas], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    return int(out.stdout)


@pytest.mark.skipif(not _glibc(), reason="mallopt and malloc_info are glibc's")
def test_the_server_setting_keeps_every_thread_on_one_heap():
    from zamba2vl.runtime import SERVE_ARENAS

    # glibc's default gives threads that allocate at once heaps of their own (measured: 5 heaps for 4 threads + main),
    # whose free memory malloc_trim does not all return; the server keeps them on one (see runtime.py)
    assert _heaps("default") > 1
    assert _heaps(str(SERVE_ARENAS)) == SERVE_ARENAS == 1
