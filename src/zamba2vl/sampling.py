"""Choosing the next token and seeing when to stop, for the generation loop (``zamba2vl.generation``).

Each logits processor is a small pure function on float logits [b, V]; ``Sampler`` applies them in Hugging Face's
order (repetition penalty, suppression, then for sampling: temperature, top-k, top-p) and draws one token per row.

Randomness is per row: row i draws from its own ``torch.Generator`` seeded with ``seeds[i]``, so a row's tokens
never depend on the other rows of the batch. With one int seed every row gets that seed, and a prompt sampled in a
batch gives the same tokens as the same prompt sampled alone (up to float differences in the logits). Draws differ
between CPU and CUDA for the same seed.

``TextTracker`` turns one row's tokens into text deltas and ends the text right before the first stop string.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

NEG_INF = float("-inf")


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """Make already-seen tokens less likely (CTRL, Keskar et al. 2019): positive logits are divided by ``penalty``,
    negative ones multiplied. ``seen`` [b, V] bool marks the tokens of the prompt and of the output so far."""
    if penalty == 1.0:
        return logits
    penalised = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, penalised, logits)


def suppress_tokens(logits: torch.Tensor, token_ids: Sequence[int]) -> torch.Tensor:
    """Set the logits of ``token_ids`` to -inf: they can never be chosen (e.g. the image placeholder token)."""
    if not token_ids:
        return logits
    logits = logits.clone()
    logits[:, list(token_ids)] = NEG_INF
    return logits


def apply_temperature(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    return logits if temperature == 1.0 else logits / temperature


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the ``k`` largest logits of each row (ties with the k-th are kept too); k <= 0 keeps all."""
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = torch.topk(logits, k, dim=-1).values[:, -1:]  # [b, 1]
    return logits.masked_fill(logits < kth, NEG_INF)


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus filtering (Holtzman et al. 2019): keep the smallest set of most likely tokens whose probability
    reaches ``p``, and always the most likely one; p >= 1 keeps all."""
    if p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    probs = torch.softmax(sorted_logits, dim=-1)
    before = torch.cumsum(probs, dim=-1) - probs  # probability mass strictly before each sorted token
    drop_sorted = before >= p
    drop_sorted[:, 0] = False
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, NEG_INF)


def sample_from_probs(probs: torch.Tensor, generators: Sequence[torch.Generator | None]) -> torch.Tensor:
    """One token per row of ``probs`` [b, V]: argmax(probs / E) with E ~ Exp(1) is a draw from probs
    (the exponential race, which also avoids multinomial's device sync). Row i uses ``generators[i]``
    (None: the global RNG)."""
    noise = torch.empty_like(probs)
    for i, g in enumerate(generators):
        noise[i].exponential_(1.0, generator=g)
    # A draw of exactly 0 would make 0/0 = NaN, which argmax takes as the maximum: a filtered token could win.
    noise.clamp_(min=torch.finfo(noise.dtype).tiny)
    return torch.argmax(probs / noise, dim=-1)


class Sampler:
    """Turns the logits of one step into tokens, remembering which tokens each row has seen (for the penalty).

    ``seen`` is built from the prompt (padding excluded, so a left-padded row is penalised as it would be alone)
    and grows with every sampled token. ``select(rows)`` follows the batch when finished rows are dropped.
    """

    def __init__(self, *, do_sample: bool, temperature: float, top_k: int, top_p: float, repetition_penalty: float,
                 suppress_ids: Sequence[int], seeds: Sequence[int | None], prompt_ids: torch.Tensor,
                 prompt_mask: torch.Tensor, vocab_size: int):
        # Temperature 0 means greedy (as in most serving APIs); Hugging Face would reject it.
        self.do_sample = do_sample and temperature > 0
        self.temperature, self.top_k, self.top_p = temperature, top_k, top_p
        self.repetition_penalty = repetition_penalty
        self.suppress_ids = sorted({i for i in suppress_ids if 0 <= i < vocab_size})
        device = prompt_ids.device
        self.generators: list[torch.Generator | None] = [
            None if s is None else torch.Generator(device=device).manual_seed(int(s)) for s in seeds
        ]
        self.seen: torch.Tensor | None = None  # [b, V] bool, only when a penalty is set
        if repetition_penalty != 1.0:
            self.seen = _seen_from_prompt(prompt_ids, prompt_mask, vocab_size)

    def process(self, logits: torch.Tensor) -> torch.Tensor:
        """The processed float32 logits [b, V] that the next token is chosen from."""
        logits = logits.float()
        if self.seen is not None:
            logits = apply_repetition_penalty(logits, self.seen, self.repetition_penalty)
        logits = suppress_tokens(logits, self.suppress_ids)
        if self.do_sample:
            logits = top_p_filter(top_k_filter(apply_temperature(logits, self.temperature), self.top_k), self.top_p)
        return logits

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        """Next token of each row [b] from the last-position logits [b, V]."""
        logits = self.process(logits)
        if self.do_sample:
            tokens = sample_from_probs(torch.softmax(logits, dim=-1), self.generators)
        else:
            tokens = torch.argmax(logits, dim=-1)
        if self.seen is not None:
            self.seen[torch.arange(tokens.shape[0], device=tokens.device), tokens] = True
        return tokens

    def select(self, rows: list[int]) -> None:
        self.generators = [self.generators[i] for i in rows]
        if self.seen is not None:
            self.seen = self.seen[torch.as_tensor(rows, device=self.seen.device)]


def _seen_from_prompt(prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """[b, V] bool: which ids occur among the real (mask 1) tokens of each row."""
    counts = torch.zeros(prompt_ids.shape[0], vocab_size, dtype=torch.int32, device=prompt_ids.device)
    counts.scatter_add_(1, prompt_ids.clamp(0, vocab_size - 1), prompt_mask.to(torch.int32))
    return counts > 0


# --------------------------------------------------------------------------------------------------------------
# Stop strings: incremental text that ends right before the first one


class TextTracker:
    """One row's text. Deltas from the tokenizer's StreamDecoder (never a split UTF-8 character) are held back while
    their end could still be the start of a stop string; when a stop string appears, the text ends right before it."""

    def __init__(self, tokenizer, stop_strings: Sequence[str], skip_special_tokens: bool):
        from zamba2vl.processing.tokenizer import StreamDecoder

        self.decoder = StreamDecoder(tokenizer, skip_special_tokens=skip_special_tokens)
        self.stops = tuple(stop_strings)
        self.text = ""  # emitted so far
        self.pending = ""  # decoded but held back

    def put(self, token_id: int) -> tuple[str, bool]:
        return self._push(self.decoder.put(token_id), final=False)

    def finish(self) -> tuple[str, bool]:
        return self._push(self.decoder.flush(), final=True)

    def _push(self, delta: str, final: bool) -> tuple[str, bool]:
        # A stop string can only start inside `pending`: any text that could begin one was held back.
        self.pending += delta
        hits = [i for i in (self.pending.find(s) for s in self.stops) if i >= 0]
        if hits:
            out, stopped = self.pending[: min(hits)], True
        else:
            hold = 0 if final else _partial_stop_length(self.pending, self.stops)
            out, stopped = self.pending[: len(self.pending) - hold], False
        self.pending = self.pending[len(out):]
        self.text += out
        return out, stopped


def _partial_stop_length(text: str, stops: Sequence[str]) -> int:
    """Length of the longest end of ``text`` that is a proper beginning of some stop string."""
    best = 0
    for s in stops:
        for k in range(min(len(text), len(s) - 1), best, -1):
            if text.endswith(s[:k]):
                best = k
                break
    return best


def tokens_through_stop(ids: list[int], tokenizer, stops: Sequence[str], skip_special_tokens: bool) -> list[int]:
    """The shortest prefix of ``ids`` whose text contains a stop string (drops tokens decoded after the stop)."""
    n = len(ids)
    while n > 1 and any(s in tokenizer.decode(ids[: n - 1], skip_special_tokens=skip_special_tokens) for s in stops):
        n -= 1
    return ids[:n]
