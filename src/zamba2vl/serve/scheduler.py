"""Continuous batching: one worker thread owns the model and the running batch; requests join and leave between steps.

Each turn of the worker loop
  1. drops the rows whose client went away or whose time ran out (their state is freed there and then),
  2. admits waiting requests while batch slots and the prefill budget allow: each new request is prefilled alone
     (its prompt and images) into its own ``HybridCache`` exactly as a lone ``generate`` call would, samples its first
     token, and its cache is merged into the running batch (``HybridCache.merge`` aligns rows of any length),
  3. runs one decode step for the whole batch and samples every row with its own settings (its own ``Sampler``: a
     seeded row draws from its own generator; a row's logits equal its solo logits up to float rounding, so greedy
     rows pick the tokens they would pick alone unless two candidates tie to within that rounding),
  4. hands each row's text delta to its request, and removes the finished rows (``select``).
When it goes idle after requests ran, it hands the memory they freed back to the OS, and again after a moment idle
(``zamba2vl.runtime.give_back_memory``).
The model runs only on this thread (torch releases the GIL, so the event loop stays free); the worker talks to the
event loop only through each job's ``sink``, which must be thread-safe (``loop.call_soon_threadsafe``).
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from zamba2vl.cache import HybridCache
from zamba2vl.errors import Zamba2VLError
from zamba2vl.generation import GenerationConfig, decode_one_token, model_token_info, prefill
from zamba2vl.runtime import give_back_memory
from zamba2vl.sampling import Sampler, TextTracker, tokens_through_stop
from zamba2vl.serve.schemas import APIError

log = logging.getLogger("zamba2vl.serve")
_SETTLE_S = 0.5  # idle this long after requests ran, the worker hands freed memory back a second time


@dataclass
class Event:
    """What the worker tells a request: a text delta, the end, or an error."""

    kind: str  # "token" | "done" | "error"
    text: str = ""
    finish_reason: str | None = None  # with "done": "eos" | "stop" | "length"
    completion_tokens: int = 0  # tokens generated so far
    time: float = 0.0  # time.perf_counter() when the worker produced it
    error: APIError | None = None


class QueueFull(Exception):
    """The waiting queue is at its bound; the client should retry later."""


class Job:
    """One request as the scheduler sees it. ``sink(event)`` is called from the worker thread."""

    def __init__(self, request_id: str, input_ids: torch.Tensor, extras: dict[str, torch.Tensor],
                 config: GenerationConfig, sink: Callable[[Event], None], deadline: float):
        assert input_ids.dim() == 2 and input_ids.shape[0] == 1, "one prompt per job"
        self.id, self.input_ids, self.extras, self.config, self.sink = request_id, input_ids, extras, config, sink
        self.deadline = deadline  # time.monotonic() by which the last token must be out
        self.cancelled = False  # set by the event loop when the client goes away

    @property
    def prompt_tokens(self) -> int:
        return int(self.input_ids.shape[1])

    def emit(self, event: Event) -> None:
        try:
            self.sink(event)
        except RuntimeError:  # the event loop is closed: the server is going down, nobody is listening
            self.cancelled = True


class _Row:
    """A running request: its sampler, its text so far and its last token (not yet fed to the model)."""

    def __init__(self, job: Job, prompt_ids: torch.Tensor, model, tokenizer, vocab_size: int):
        cfg = job.config
        model_eos, _, image_id = model_token_info(model)
        if cfg.eos_token_ids is not None:
            self.eos = set(cfg.eos_token_ids)
        else:  # as generate() does: the model's EOS ids and the tokenizer's
            self.eos = set(model_eos) | ({tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set())
        suppress = set(cfg.suppress_token_ids) | ({image_id} if image_id is not None else set())
        seed = cfg.seed[0] if isinstance(cfg.seed, Sequence) else cfg.seed
        self.sampler = Sampler(do_sample=cfg.do_sample, temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p,
                               repetition_penalty=cfg.repetition_penalty, suppress_ids=sorted(suppress), seeds=[seed],
                               prompt_ids=prompt_ids, prompt_mask=torch.ones_like(prompt_ids),
                               vocab_size=vocab_size)
        self.job, self.tokenizer, self.config = job, tokenizer, cfg
        self.text = TextTracker(tokenizer, cfg.stop_strings, cfg.skip_special_tokens)
        self.ids: list[int] = []
        self.reason: str | None = None

    @property
    def last(self) -> int:
        return self.ids[-1]

    def record(self, token: int) -> str:
        """Append ``token``, decide whether the row is finished; return its new text (as generate() does)."""
        self.ids.append(token)
        delta, stopped = "", False
        if token in self.eos:
            self.reason = "eos"
        else:
            delta, stopped = self.text.put(token)
        if not stopped and self.reason is None and len(self.ids) >= self.config.max_new_tokens:
            self.reason = "length"
        if self.reason is not None:
            more, stopped = self.text.finish()  # the held-back end may still hold a stop string
            delta += more
        if stopped:
            self.reason = "stop"
            self.ids = tokens_through_stop(self.ids, self.tokenizer, self.config.stop_strings,
                                           self.config.skip_special_tokens)
        return delta


class Scheduler:
    """Owns the worker thread. ``reserve()`` a queue slot before preparing a request (so that preparing work is
    bounded too), then ``submit(job)`` it, or ``release()`` the slot if the request failed before."""

    def __init__(self, model, tokenizer, *, max_batch_size: int = 16, max_queue: int = 64,
                 prefill_tokens_per_step: int = 4096, torch_threads: int | None = None, metrics=None):
        self.model, self.tokenizer, self.metrics, self.torch_threads = model, tokenizer, metrics, torch_threads
        self.max_batch_size, self.max_queue, self.prefill_budget = max_batch_size, max_queue, prefill_tokens_per_step
        self.device = next(model.parameters()).device
        self._cv = threading.Condition()
        self._waiting: collections.deque[Job] = collections.deque()
        self._reserved = 0  # slots handed out by reserve() whose job is not yet submitted
        self._rows: list[_Row] = []
        self._admitting = 0  # jobs taken from the queue whose prefill is under way
        self._dirty = False  # requests ran since the worker last handed memory back
        self._settling = False  # idle after requests ran: hand memory back once more if it stays idle
        # Final events (done, error) wait here until the batch no longer holds their row, so a client that has its
        # answer never sees its request still counted as running.
        self._outbox: list[tuple[Job, Event]] = []
        self._cache: HybridCache | None = None
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="zamba2vl-scheduler", daemon=True)

    # ------------------------------------------------------------------------------------ event-loop side
    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        with self._cv:
            self._stopping = True
            self._cv.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)

    @property
    def waiting(self) -> int:
        return len(self._waiting) + self._reserved

    @property
    def running(self) -> int:
        return len(self._rows) + self._admitting

    def reserve(self) -> None:
        with self._cv:
            if self._stopping or len(self._waiting) + self._reserved >= self.max_queue:
                raise QueueFull
            self._reserved += 1

    def release(self) -> None:
        with self._cv:
            self._reserved -= 1

    def submit(self, job: Job) -> None:
        with self._cv:
            self._reserved -= 1
            self._waiting.append(job)
            self._cv.notify()

    def cancel(self, job: Job) -> None:
        """The client went away: a waiting job leaves the queue now, a running row at the next step boundary."""
        job.cancelled = True
        with self._cv:
            try:
                self._waiting.remove(job)
            except ValueError:
                return
        self._count("cancelled")

    # ------------------------------------------------------------------------------------ worker side
    def _loop(self) -> None:
        if self.torch_threads:
            torch.set_num_threads(self.torch_threads)  # this thread's intra-op pool: it runs every model op
        with torch.inference_mode():
            while True:
                with self._cv:
                    trim = self._wait_for_work()
                    if self._stopping and not trim:
                        break
                    if not trim:
                        expired = self._take_expired()
                        admitted = self._take_admissions()
                if trim:  # outside the lock: a request arriving now is not held up by it
                    self._give_back()
                    continue
                for job in expired:
                    job.emit(_timeout_event(job))
                    self._count("timeout")
                self._reap()
                if admitted:
                    self._admit(admitted)
                    self._flush()
                if self._rows:
                    self._step()
                    self._flush()
        self._shutdown()

    def _idle(self) -> bool:
        return not (self._stopping or self._waiting or self._rows)

    def _wait_for_work(self) -> bool:
        """Under the lock: wait until there is work or the server stops. Returns True instead when the memory freed
        by the requests that ran should go back to the OS: as soon as the worker goes idle after them, and once more
        when it has stayed idle for ``_SETTLE_S`` (by then the requests' connections are gone too)."""
        if self._dirty and self._idle():
            self._dirty, self._settling = False, True
            return True
        while self._idle():
            if not self._settling:
                self._cv.wait()
            elif not self._cv.wait(timeout=_SETTLE_S) and self._idle():
                self._settling = False
                return True
        return False

    def _give_back(self) -> None:
        give_back_memory(self.device)
        if self.metrics is not None:
            self.metrics.memory_given_back()

    def _take_expired(self) -> list[Job]:
        now = time.monotonic()
        expired = [j for j in self._waiting if now > j.deadline]
        for j in expired:
            self._waiting.remove(j)
        return expired

    def _take_admissions(self) -> list[Job]:
        free = self.max_batch_size - len(self._rows)
        taken: list[Job] = []
        tokens = 0
        while self._waiting and len(taken) < free:
            job = self._waiting[0]
            if taken and tokens + job.prompt_tokens > self.prefill_budget:
                break
            taken.append(self._waiting.popleft())
            tokens += job.prompt_tokens
        self._admitting = len(taken)
        return taken

    def _reap(self) -> None:
        """Drop rows whose client went away (state freed now) or whose deadline passed."""
        now = time.monotonic()
        keep = []
        for i, row in enumerate(self._rows):
            if row.job.cancelled:
                self._count("cancelled")
            elif now > row.job.deadline:
                self._outbox.append((row.job, _timeout_event(row.job, len(row.ids))))
                self._count("timeout")
            else:
                keep.append(i)
        self._keep(keep)
        self._flush()

    def _admit(self, jobs: list[Job]) -> None:
        """Prefill each job alone, sample its first token, and merge the unfinished ones into the batch."""
        rows, caches = [], []
        for job in jobs:
            if job.cancelled:  # left between leaving the queue and its prefill
                self._count("cancelled")
                continue
            t0 = time.perf_counter()
            try:
                row, cache = self._prefill(job)
            except Exception as e:  # noqa: BLE001 - one bad request must not stop the others
                self._outbox.append((job, _error_event(e)))
                self._count("failed")
                continue
            if self.metrics is not None:
                self.metrics.observe_prefill(job.prompt_tokens, time.perf_counter() - t0)
            if row.reason is None:
                rows.append(row)
                caches.append(cache)
        if rows:
            self._cache = HybridCache.merge(([self._cache] if self._cache is not None else []) + caches)
            self._rows += rows
        self._admitting = 0
        self._dirty = True

    def _prefill(self, job: Job) -> tuple[_Row, HybridCache]:
        ids = job.input_ids.to(self.device)
        extras = {k: v.to(self.device) for k, v in job.extras.items()}
        cache = self.model.new_cache(1, capacity=ids.shape[1] + job.config.max_new_tokens)
        logits = prefill(self.model, ids, None, cache, job.config.prefill_chunk_size, **extras)
        row = _Row(job, ids, self.model, self.tokenizer, logits.shape[-1])
        self._record(row, int(row.sampler(logits)[0]), time.perf_counter(), first=True)
        return row, cache

    def _step(self) -> None:
        t0 = time.perf_counter()
        tokens = torch.tensor([row.last for row in self._rows], device=self.device)
        try:
            logits = decode_one_token(self.model, tokens, self._cache)  # [b, V]
            picked = torch.cat([row.sampler(logits[i : i + 1]) for i, row in enumerate(self._rows)]).tolist()
        except Exception as e:  # noqa: BLE001 - fail the batch, keep the server
            log.exception("decode step failed; failing the %d running requests", len(self._rows))
            for row in self._rows:
                self._outbox.append((row.job, _error_event(e)))
                self._count("failed")
            self._keep([])
            return
        now = time.perf_counter()
        for row, token in zip(self._rows, picked):
            self._record(row, token, now)
        if self.metrics is not None:
            self.metrics.observe_step(len(self._rows), now - t0)
        self._keep([i for i, row in enumerate(self._rows) if row.reason is None])

    def _record(self, row: _Row, token: int, now: float, first: bool = False) -> None:
        delta = row.record(token)
        if first or delta or row.reason:
            row.job.emit(Event("token", delta, completion_tokens=len(row.ids), time=now))
        if row.reason is not None:
            self._outbox.append((row.job, Event("done", finish_reason=row.reason, completion_tokens=len(row.ids),
                                                time=now)))
            self._count("finished")

    def _flush(self) -> None:
        for job, event in self._outbox:
            job.emit(event)
        self._outbox.clear()

    def _keep(self, keep: list[int]) -> None:
        """Keep only these rows of the batch; the others' state is freed (and unused columns dropped)."""
        if len(keep) == len(self._rows):
            return
        self._rows = [self._rows[i] for i in keep]
        self._cache = HybridCache.merge([self._cache.select(keep)]) if keep else None

    def _shutdown(self) -> None:
        with self._cv:
            jobs = list(self._waiting) + [row.job for row in self._rows]
            self._waiting.clear()
        self._keep([])
        self._flush()
        for job in jobs:
            job.emit(Event("error", error=APIError(503, "the server is shutting down", code="shutting_down")))

    def _count(self, outcome: str) -> None:
        if self.metrics is not None:
            self.metrics.scheduler_outcome(outcome)


def _timeout_event(job: Job, tokens: int = 0) -> Event:
    return Event("error", completion_tokens=tokens, time=time.perf_counter(), error=APIError(
        504, f"the request did not finish within the server's time limit ({tokens} tokens generated); ask for fewer "
             "tokens (max_tokens) or retry when the server is less busy", code="timeout", type="timeout"))


def _error_event(e: Exception) -> Event:
    if isinstance(e, Zamba2VLError):
        err = APIError(400, str(e), code="invalid_request")
    else:
        log.error("request failed in the model: %s: %s", type(e).__name__, e)
        err = APIError(500, f"the model failed on this request: {type(e).__name__}", code="internal_error")
    return Event("error", time=time.perf_counter(), error=err)
