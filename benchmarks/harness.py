"""What every benchmark script here shares: worker processes, the conditions of a run, budgeted repeats.

Each system under test runs in a worker process of its own (so that its peak RSS is its own, and so that a baseline
can run under another venv: transformers 5.x in ``.bench-venv``). The driver starts a worker with a command line,
reads one JSON line from its stdout (what it loaded), then sends it one command per line on stdin and reads one JSON
line back per command. Workers write their protocol lines to a duplicate of the original stdout and point fd 1 at
stderr (``protocol_channel``), so whatever libraries print cannot corrupt the protocol; stderr goes to a log file that
is shown when a worker dies.

Only the standard library is imported here: the module is imported by workers running in a venv without zamba2vl
(and without this project's other dependencies).
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import resource
import subprocess
import sys
from pathlib import Path
from typing import Callable, Sequence

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"


# ----------------------------------------------------------------------------------------------- the process
def rss_now_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def rss_peak_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def protocol_channel():
    """A text stream on the original stdout for protocol lines; fd 1 then points at stderr."""
    proto = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    return proto


def reply_to(proto) -> Callable[..., None]:
    def reply(**kw) -> None:
        proto.write(json.dumps(kw) + "\n")
        proto.flush()

    return reply


# -------------------------------------------------------------------------------------------- the machine
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_flags() -> list[str]:
    """The CPU features that decide bf16 speed (AVX-512 BF16 / AMX give torch native bf16 matmuls)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                have = set(line.split(":", 1)[1].split())
                return sorted(f for f in have if f.startswith(("avx512", "amx")) or f in ("avx2", "fma"))
    except OSError:
        pass
    return []


def memory_total_bytes() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def load_average() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def conditions(threads: int, dtype: str, argv: Sequence[str] | None = None) -> dict:
    """The conditions a result needs beside it: machine, threads, dtype, date, command line (``argv``, default: this
    process's), load average."""
    command = " ".join([Path(sys.executable).name, *sys.argv]) if argv is None else " ".join(argv)
    return dict(
        date=datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        command=command,
        cpu=cpu_model(), cpu_flags=cpu_flags(), logical_cpus=os.cpu_count(), memory_bytes=memory_total_bytes(),
        threads=threads, dtype=dtype, python=platform.python_version(), platform=platform.platform(),
        load_average_at_start=load_average(),
    )


# ------------------------------------------------------------------------------------------------ workers
def worker_env(threads: int, with_src: bool) -> dict:
    """Environment of a worker: thread counts pinned, libraries quiet; ``with_src`` puts this repo's src/ first."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
               TOKENIZERS_PARALLELISM="false", TRANSFORMERS_VERBOSITY="error", PYTHONWARNINGS="ignore",
               HF_HUB_OFFLINE="1")
    if with_src:
        env["PYTHONPATH"] = str(SRC) + os.pathsep + env.get("PYTHONPATH", "")
    else:  # a baseline venv must not pick up zamba2vl from this checkout
        env.pop("PYTHONPATH", None)
    return env


class WorkerDied(RuntimeError):
    """A worker exited before answering; ``name`` is its system."""

    def __init__(self, name: str, message: str):
        super().__init__(message)
        self.name = name


class Worker:
    """A worker process driven line by line: ``info`` is its first reply, ``ask`` sends one command."""

    def __init__(self, cmd: list[str], name: str, log: Path, env: dict, cwd: Path | None = None):
        self.name, self.log = name, log
        self._stderr = open(log, "w")
        self.proc = subprocess.Popen(cmd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self._stderr, text=True, cwd=cwd)
        self.info = self._read()
        self.times: list[float] = []
        self.loads: list[float] = []

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait()
            self._stderr.close()
            raise WorkerDied(self.name, f"{self.name} worker died:\n{self.log.read_text()[-4000:]}")
        return json.loads(line)

    def ask(self, command: str) -> dict:
        try:
            self.proc.stdin.write(command + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            pass  # _read reports the death with the log
        return self._read()

    def finish(self, command: str = "quit") -> dict:
        final = self.ask(command)
        self.proc.wait()
        self._stderr.close()
        return final

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if not self._stderr.closed:
            self._stderr.close()


def timed_rounds(workers: Sequence[Worker], run: Callable[[Worker], float], repeats: int, budget_s: float,
                 warmup: Callable[[Worker], tuple[float, bool]] | None = None) -> dict[str, dict]:
    """One warm-up per worker, then up to ``repeats`` timed runs alternating between the workers.

    The order is reversed every round, so that all systems meet the same machine load. A worker stops once another
    run would take its timed runs past ``budget_s`` (it always gets at least one); one whose full-length warm-up alone
    exceeds the budget reports the warm-up as its single run. ``warmup(w)`` (default: one ``run``) returns the
    warm-up's seconds and whether it was a full run (only a full run may count as a sample); a driver warms a run
    predicted to pass the budget up on a shorter input instead. Each worker's ``times`` gets the samples; returns per
    worker {"warmup_s", "warmup_is_sample"}.
    """
    out: dict[str, dict] = {}
    done: dict[str, bool] = {}
    for w in workers:
        t, full = warmup(w) if warmup is not None else (run(w), True)
        out[w.name] = {"warmup_s": t, "warmup_is_sample": False}
        done[w.name] = False
        if full and t >= budget_s:
            w.times.append(t)
            out[w.name]["warmup_is_sample"] = True
            done[w.name] = True
    for rnd in range(repeats):
        for w in (workers if rnd % 2 == 0 else list(workers)[::-1]):
            t = w.times
            if done[w.name] or (t and sum(t) + t[-1] > budget_s):
                done[w.name] = True
                continue
            t.append(run(w))
    return out


def mib(n: int) -> str:
    return f"{n / 2**20:.0f}"


def write_json(path: Path, report: dict) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2))
    return path


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)
