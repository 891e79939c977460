"""The mixture sampler: which record every sample of every step is, deterministically from the seed.

Sample k (counted over the whole run, all processes together) comes from source s with probability
``weight_s / sum(weights)``, drawn from ``default_rng([seed, MIX, k])``: the stream does not depend on the
batch size or the number of processes. Within a source, its n-th pick is record ``perm_e[n % N]`` of the
epoch ``e = n // N``, a fresh permutation per epoch (synthetic sources are endless: pick n is example n).
The state is the count of samples drawn and each source's pick count: two small lists, saved in checkpoints.

Each step's global batch is cut into one contiguous shard per process (``rank``), and each shard, ordered by
length, into micro-batches. A record that fails to encode is replaced by another record of the same source, drawn from
``(seed, RETRY, s, n, attempt)``; the failure is counted and reported (or stops the run).

With ``prefetch`` on (``data.prefetch``, default off), the next step's shard is read, drawn and encoded in a
background thread while this step trains. Loading is a function of (source, pick number) alone, so the examples,
their order and the sampler state saved in a checkpoint are the same as without it; bad records are reported when
their step takes them, as before.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np

from zamba2vl.errors import Zamba2VLError
from zamba2vl.train.encode import ConversationEncoder, Example
from zamba2vl.train.sources import DataError, SkipLog, check_image_budget

_MIX, _PERM, _RETRY = 7001, 7002, 7003
MAX_ATTEMPTS = 16


class Mixture:
    def __init__(self, sources: Sequence[Any], weights: Sequence[float], encoder: ConversationEncoder, *,
                 seed: int, skips: SkipLog, max_image_tokens: int | None = None, prefetch: bool = False):
        assert len(sources) == len(weights) and len(sources) > 0
        self.sources = list(sources)
        w = np.asarray(weights, dtype=np.float64)
        self.cdf = np.cumsum(w) / w.sum()
        self.encoder = encoder
        self.seed = seed
        self.skips = skips
        self.max_image_tokens = max_image_tokens
        self.next_sample = 0
        self.picks = [0] * len(self.sources)
        self._perm: dict[int, tuple[int, np.ndarray]] = {}
        self.prefetch = prefetch
        self._pool: ThreadPoolExecutor | None = None
        self._ahead: tuple[tuple[tuple[int, int], ...], Future] | None = None  # (picks, their loading)

    # ----------------------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        return {"next_sample": self.next_sample, "picks": list(self.picks), "sizes": [s.size for s in self.sources]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        sizes = [s.size for s in self.sources]
        if state["sizes"] != sizes:
            raise DataError("resume", f"the data sources changed since the checkpoint (records per source "
                                      f"{state['sizes']} then, {sizes} now); resuming would not continue the same "
                                      "stream. Restore the data or start a new run")
        self.next_sample = int(state["next_sample"])
        self.picks = [int(n) for n in state["picks"]]

    # ----------------------------------------------------------------------------------------- choosing
    def _source_of(self, k: int) -> int:
        u = np.random.default_rng([self.seed, _MIX, k]).random()
        return min(int(np.searchsorted(self.cdf, u, side="right")), len(self.sources) - 1)

    def _record(self, s: int, n: int) -> int:
        size = self.sources[s].size
        if size is None:  # endless (synthetic)
            return n
        epoch, i = divmod(n, size)
        cached = self._perm.get(s)
        if cached is None or cached[0] != epoch:
            cached = (epoch, np.random.default_rng([self.seed, _PERM, s, epoch]).permutation(size))
            self._perm[s] = cached
        return int(cached[1][i])

    def peek(self, count: int) -> list[tuple[int, int]]:
        """The next ``count`` samples as ``draw`` will return them, without advancing the state."""
        saved = self.next_sample, list(self.picks)
        try:
            return self.draw(count)
        finally:
            self.next_sample, self.picks = saved

    def draw(self, count: int) -> list[tuple[int, int]]:
        """The next ``count`` samples as (source, pick number); advances the state."""
        out = []
        for _ in range(count):
            s = self._source_of(self.next_sample)
            out.append((s, self.picks[s]))
            self.picks[s] += 1
            self.next_sample += 1
        return out

    # ----------------------------------------------------------------------------------------- loading
    def load(self, s: int, n: int) -> Example:
        """Encode pick n of source s; a bad record is reported and replaced (see the module docstring)."""
        return self._report(self._encode(s, n))

    def _encode(self, s: int, n: int) -> tuple[Example | None, list[DataError], DataError | None]:
        """Pick n of source s: (the example, the bad records met on the way, None), or (None, those, the error
        that ends the run). Touches nothing shared but the permutation cache, so it may run in the background."""
        source = self.sources[s]
        record = self._record(s, n)
        bad: list[DataError] = []
        for attempt in range(1, MAX_ATTEMPTS + 1):
            messages, where = source.messages(record)
            try:
                example = self.encoder(messages)
                if example.image_grid_thw is not None:
                    check_image_budget(self.encoder.processor.tokens_per_image(example.image_grid_thw),
                                       self.max_image_tokens, where)
                return example, bad, None
            except DataError as e:
                bad.append(e)
            except Zamba2VLError as e:  # InputError, ImageError: said without the place; add it
                bad.append(DataError(where, str(e)))
            if self.skips.stop:  # on_bad_record: stop ends the run at the first one
                return None, bad, None
            record = int(np.random.default_rng([self.seed, _RETRY, s, n, attempt]).integers(source.size or 2**62))
        return None, bad, DataError(getattr(source, "name", f"source {s}"), f"{MAX_ATTEMPTS} records in a row "
                                    "failed; the source looks broken (see the messages above)")

    def _report(self, loaded: tuple[Example | None, list[DataError], DataError | None]) -> Example:
        example, bad, fatal = loaded
        for e in bad:
            self.skips.add(e)  # raises under on_bad_record: stop
        if fatal is not None:
            raise fatal
        assert example is not None
        return example

    def _encode_all(self, picks: Sequence[tuple[int, int]]) -> list[tuple[Example | None, list[DataError],
                                                                           DataError | None]]:
        return [self._encode(s, n) for s, n in picks]

    def _take(self, picks: list[tuple[int, int]]) -> list[Example]:
        """The examples of ``picks``: from the background thread if it loaded exactly these, else loaded now."""
        loaded = None
        if self._ahead is not None:
            ahead, future = self._ahead
            self._ahead = None
            if ahead == tuple(picks):
                loaded = future.result()
            else:  # e.g. after a resume: let it finish (sources are not read from two threads at once), drop it
                try:
                    future.result()
                except Exception:
                    pass
        if loaded is None:
            loaded = self._encode_all(picks)
        return [self._report(x) for x in loaded]

    def close(self) -> None:
        """Stop the background thread (after the step it is loading)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        self._ahead = None

    def next_step(self, global_batch: int, rank: int, world: int, micro: int,
                  more: bool = True) -> list[list[Example]]:
        """This process's micro-batches of the next step (its contiguous shard of the global batch); with
        ``prefetch``, and ``more`` steps to come, the step after it starts loading in the background.

        The shard is ordered by length before it is cut into micro-batches, so that rows of similar length are
        padded together. The step's loss is normalised over the whole global batch, so grouping changes only
        the order of additions, not the result.
        """
        share = global_batch // world
        mine = self.draw(global_batch)[rank * share : (rank + 1) * share]
        examples = self._take(mine)
        if self.prefetch and more:
            upcoming = tuple(self.peek(global_batch)[rank * share : (rank + 1) * share])
            if self._pool is None:
                self._pool = ThreadPoolExecutor(1, thread_name_prefix="zamba2vl-data")
            self._ahead = (upcoming, self._pool.submit(self._encode_all, upcoming))
        examples.sort(key=lambda e: len(e.input_ids))  # stable: ties keep the sampling order
        return [examples[i : i + micro] for i in range(0, len(examples), micro)]
