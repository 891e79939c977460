"""zamba2vl.runtime: the allocator setting the CLI applies (each case in a fresh interpreter: it is process-wide)."""

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
def test_applied_once_on_glibc():
    assert _run({}) == ["True", "True"]


def test_opt_out_leaves_malloc_alone():
    assert _run({"ZAMBA2VL_MALLOC": "default"}) == ["False", "False"]
