"""The mixture sampler: which record every sample of every step is, deterministically from the seed.

Sample k (counted over the whole run, all processes together) comes from source s with probability
``weight_s / sum(weights)``, drawn from ``default_rng([seed, MIX, k])``: the stream does not depend on the
batch size or the number of processes. Within a source, its n-th pick is record ``perm_e[n % N]`` of the
epoch ``e = n // N``, a fresh permutation per epoch (synthetic sources are endless: pick n is example n).
The state is the count of samples drawn and each source's pick count: two small lists, saved in checkpoints.

Each step's global batch is cut into one contiguous shard per process (``rank``), and each shard, ordered by
length, into micro-batches. A record that fails to encode is replaced by another record of the same source, drawn from
``(seed, RETRY, s, n, attempt)``; the failure is counted and reported (or stops the run).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from zamba2vl.errors import Zamba2VLError
from zamba2vl.train.encode import ConversationEncoder, Example
from zamba2vl.train.sources import DataError, SkipLog, check_image_budget

_MIX, _PERM, _RETRY = 7001, 7002, 7003
MAX_ATTEMPTS = 16


class Mixture:
    def __init__(self, sources: Sequence[Any], weights: Sequence[float], encoder: ConversationEncoder, *,
                 seed: int, skips: SkipLog, max_image_tokens: int | None = None):
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
        source = self.sources[s]
        record = self._record(s, n)
        for attempt in range(1, MAX_ATTEMPTS + 1):
            messages, where = source.messages(record)
            try:
                example = self.encoder(messages)
                if example.image_grid_thw is not None:
                    check_image_budget(self.encoder.processor.tokens_per_image(example.image_grid_thw),
                                       self.max_image_tokens, where)
                return example
            except DataError as e:
                self.skips.add(e)
            except Zamba2VLError as e:  # InputError, ImageError: said without the place; add it
                self.skips.add(DataError(where, str(e)))
            record = int(np.random.default_rng([self.seed, _RETRY, s, n, attempt]).integers(source.size or 2**62))
        raise DataError(getattr(source, "name", f"source {s}"),
                        f"{MAX_ATTEMPTS} records in a row failed; the source looks broken (see the messages above)")

    def next_step(self, global_batch: int, rank: int, world: int, micro: int) -> list[list[Example]]:
        """This process's micro-batches of the next step (its contiguous shard of the global batch).

        The shard is ordered by length before it is cut into micro-batches, so that rows of similar length are
        padded together. The step's loss is normalised over the whole global batch, so grouping changes only
        the order of additions, not the result.
        """
        picks = self.draw(global_batch)
        share = global_batch // world
        mine = picks[rank * share : (rank + 1) * share]
        examples = [self.load(s, n) for s, n in mine]
        examples.sort(key=lambda e: len(e.input_ids))  # stable: ties keep the sampling order
        return [examples[i : i + micro] for i in range(0, len(examples), micro)]
