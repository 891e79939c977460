"""Server metrics in the Prometheus text exposition format (version 0.0.4), without a client library.

Counters and histograms are updated from the event loop and from the scheduler thread, so each takes a lock.
Gauges are read when ``/metrics`` is scraped (queue depth, batch size, resident memory).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Sequence

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


def _number(v: float) -> str:
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return str(int(v)) if float(v).is_integer() else repr(float(v))


def _labels(names: Sequence[str], values: Sequence[str], extra: str = "") -> str:
    esc = lambda s: str(s).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")  # noqa: E731
    parts = [f'{n}="{esc(v)}"' for n, v in zip(names, values)] + ([extra] if extra else [])
    return "{" + ",".join(parts) + "}" if parts else ""


class _Metric:
    kind = ""

    def __init__(self, name: str, help: str, labelnames: Sequence[str] = ()):
        self.name, self.help, self.labelnames = name, help, tuple(labelnames)
        self._lock = threading.Lock()

    def render(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}", *self._samples()]

    def _samples(self) -> list[str]:
        raise NotImplementedError


class Counter(_Metric):
    kind = "counter"

    def __init__(self, name: str, help: str, labelnames: Sequence[str] = ()):
        super().__init__(name, help, labelnames)
        self._values: dict[tuple[str, ...], float] = {} if labelnames else {(): 0.0}

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        key = tuple(str(labels[n]) for n in self.labelnames)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def value(self, **labels: str) -> float:
        return self._values.get(tuple(str(labels[n]) for n in self.labelnames), 0.0)

    def _samples(self) -> list[str]:
        with self._lock:
            items = sorted(self._values.items())
        return [f"{self.name}{_labels(self.labelnames, k)} {_number(v)}" for k, v in items]


class Gauge(_Metric):
    """A value read at scrape time from ``read()``."""

    kind = "gauge"

    def __init__(self, name: str, help: str, read: Callable[[], float]):
        super().__init__(name, help)
        self.read = read

    def _samples(self) -> list[str]:
        return [f"{self.name} {_number(self.read())}"]


class Histogram(_Metric):
    kind = "histogram"

    def __init__(self, name: str, help: str, buckets: Sequence[float] = LATENCY_BUCKETS):
        super().__init__(name, help)
        self.buckets = tuple(sorted(buckets)) + (math.inf,)
        self._counts = [0] * len(self.buckets)
        self._sum = 0.0

    def observe(self, value: float) -> None:
        with self._lock:
            self._sum += value
            for i, upper in enumerate(self.buckets):
                if value <= upper:
                    self._counts[i] += 1
                    break

    @property
    def count(self) -> int:
        return sum(self._counts)

    def _samples(self) -> list[str]:
        with self._lock:
            counts, total = list(self._counts), self._sum
        out, cumulative = [], 0
        for upper, n in zip(self.buckets, counts):
            cumulative += n
            out.append(f'{self.name}_bucket{{le="{_number(upper)}"}} {cumulative}')
        return out + [f"{self.name}_sum {_number(total)}", f"{self.name}_count {cumulative}"]


def resident_memory_bytes() -> int:
    """VmRSS of this process (Linux); 0 where /proc is missing."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class ServerMetrics:
    """Every metric the server exports. ``running`` and ``waiting`` read the scheduler's current numbers."""

    def __init__(self, running: Callable[[], float] = lambda: 0, waiting: Callable[[], float] = lambda: 0):
        p = "zamba2vl_"
        self.requests = Counter(p + "requests_total", "Chat completion requests answered, by HTTP status.", ["status"])
        self.prompt_tokens = Counter(p + "prompt_tokens_total", "Prompt tokens of completed requests, images included.")
        self.completion_tokens = Counter(p + "completion_tokens_total", "Tokens generated for completed requests.")
        self.request_seconds = Histogram(p + "request_duration_seconds", "Time from arrival to the last token.")
        self.ttft_seconds = Histogram(p + "time_to_first_token_seconds", "Time from arrival to the first token.")
        self.outcomes = Counter(p + "scheduler_requests_total",
                                "Requests leaving the scheduler, by outcome (finished, cancelled, timeout, failed).",
                                ["outcome"])
        self.prefill_tokens = Counter(p + "prefill_tokens_total", "Prompt tokens prefilled.")
        self.prefill_seconds = Counter(p + "prefill_seconds_total", "Time spent prefilling.")
        self.decode_steps = Counter(p + "decode_steps_total", "Batched decode steps run.")
        self.decode_seconds = Counter(p + "decode_seconds_total", "Time spent in decode steps (sampling included).")
        self.batch_size = Histogram(p + "decode_batch_size", "Rows in each decode step.", BATCH_BUCKETS)
        self.give_backs = Counter(p + "memory_give_backs_total",
                                  "Times the idle scheduler gave the memory freed by finished requests back to the OS.")
        self._all: list[_Metric] = [
            self.requests, self.prompt_tokens, self.completion_tokens, self.request_seconds, self.ttft_seconds,
            self.outcomes, self.prefill_tokens, self.prefill_seconds, self.decode_steps, self.decode_seconds,
            self.batch_size, self.give_backs,
            Gauge(p + "requests_running", "Requests in the running batch.", running),
            Gauge(p + "requests_waiting", "Requests waiting for a batch slot (or being prepared).", waiting),
            Gauge("process_resident_memory_bytes", "Resident memory of the server process.", resident_memory_bytes),
        ]

    # Called by the scheduler thread.
    def observe_prefill(self, tokens: int, seconds: float) -> None:
        self.prefill_tokens.inc(tokens)
        self.prefill_seconds.inc(seconds)

    def observe_step(self, rows: int, seconds: float) -> None:
        self.decode_steps.inc()
        self.decode_seconds.inc(seconds)
        self.batch_size.observe(rows)

    def scheduler_outcome(self, outcome: str) -> None:
        self.outcomes.inc(outcome=outcome)

    def memory_given_back(self) -> None:
        self.give_backs.inc()

    # Called by the app when a request ends.
    def observe_request(self, status: int, prompt_tokens: int = 0, completion_tokens: int = 0,
                        total_s: float | None = None, ttft_s: float | None = None) -> None:
        self.requests.inc(status=str(status))
        if status == 200:
            self.prompt_tokens.inc(prompt_tokens)
            self.completion_tokens.inc(completion_tokens)
            if total_s is not None:
                self.request_seconds.observe(total_s)
        if ttft_s is not None:
            self.ttft_seconds.observe(ttft_s)

    def render(self) -> str:
        return "\n".join(line for m in self._all for line in m.render()) + "\n"
