"""The generation loop: prefill the prompt into a HybridCache, then decode one token per step.

Kept apart from the model (as in gpt-fast): any module with the Zamba2 forward signature
(``forward(input_ids=, attention_mask=, cache=, use_cache=, logits_to_keep=, **extras) -> .logits``) and a
``new_cache(batch_size, capacity)`` can be driven. Prefill and decode are separate functions because they cost
differently (one wide forward against many one-token forwards); the timings report them separately.

``generate`` and ``stream`` share one loop (``_run``), which yields the text deltas of each step and returns the
``GenerationResult``; so the streamed text always equals the generated text. Rows that finish are dropped from the
batch (``HybridCache.select``), so the remaining rows do not pay for them.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import torch

from zamba2vl.errors import ConfigError, InputError
from zamba2vl.sampling import Sampler, TextTracker, tokens_through_stop


@dataclass
class GenerationConfig:
    max_new_tokens: int = 256
    max_length: int | None = None  # prompt + new tokens, per row (Hub files often set only this)
    do_sample: bool = False
    temperature: float = 1.0  # 0 with do_sample means greedy
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # 1: off
    repetition_penalty: float = 1.0  # 1: off; applies to greedy decoding too, as in Hugging Face
    seed: int | Sequence[int] | None = None  # one int for every row, or one per row; None: torch's global RNG
    stop_strings: Sequence[str] = ()  # need a tokenizer; the text is cut right before the first one
    eos_token_ids: Sequence[int] | None = None  # None: the model's (and the tokenizer's) EOS ids; (): never stop on EOS
    suppress_token_ids: Sequence[int] = ()  # never generated; the model's image token is always added
    skip_special_tokens: bool = True  # when decoding the text
    # Prefill in pieces of this many tokens (bounded activation memory, same result). "auto": prompts longer than
    # AUTO_PREFILL_OVER tokens go in pieces of AUTO_PREFILL_PIECE; None or 0: always at once.
    prefill_chunk_size: int | str | None = "auto"

    def __post_init__(self) -> None:
        if isinstance(self.stop_strings, str):
            self.stop_strings = (self.stop_strings,)
        if isinstance(self.eos_token_ids, int):
            self.eos_token_ids = (self.eos_token_ids,)
        if self.max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
        if self.temperature < 0 or self.repetition_penalty <= 0 or not 0 <= self.top_p <= 1 or self.top_k < 0:
            raise ConfigError(
                f"invalid sampling settings: temperature={self.temperature} (>= 0), top_k={self.top_k} (>= 0), "
                f"top_p={self.top_p} (in [0, 1]), repetition_penalty={self.repetition_penalty} (> 0)")
        if any(not s for s in self.stop_strings):
            raise ConfigError("stop_strings must not contain an empty string")
        c = self.prefill_chunk_size
        if not (c is None or c == "auto" or (isinstance(c, int) and not isinstance(c, bool) and c >= 0)):
            raise ConfigError(f"prefill_chunk_size must be 'auto', None or a number of tokens >= 0, got {c!r}")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], **overrides: Any) -> "GenerationConfig":
        """From a Hub ``generation_config.json`` dict; unknown keys (bos_token_id, transformers_version...) are
        ignored, as are nulls."""
        d = {k: v for k, v in d.items() if v is not None}
        if "eos_token_id" in d:
            d["eos_token_ids"] = d.pop("eos_token_id")
        if "suppress_tokens" in d:
            d["suppress_token_ids"] = d.pop("suppress_tokens")
        known = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in d.items() if k in known}
        for name in ("eos_token_ids", "suppress_token_ids", "stop_strings"):
            if isinstance(kwargs.get(name), list):
                kwargs[name] = tuple(kwargs[name])
        kwargs.update(overrides)
        return cls(**kwargs)

    @classmethod
    def from_json_file(cls, path: str | os.PathLike, **overrides: Any) -> "GenerationConfig":
        """Read ``generation_config.json`` (a file, or the checkpoint folder holding it)."""
        path = os.fspath(path)
        if os.path.isdir(path):
            path = os.path.join(path, "generation_config.json")
        try:
            with open(path, encoding="utf-8") as f:
                return cls.from_dict(json.load(f), **overrides)
        except (OSError, json.JSONDecodeError) as e:
            raise ConfigError(f"cannot read the generation config {path}: {e}") from e


@dataclass
class GenerationTimings:
    time_to_first_token_s: float  # prefill + first sample
    prefill_tokens: int  # real prompt tokens over all rows (padding not counted)
    prefill_tok_s: float
    decode_tokens: int  # tokens produced by decode steps (all but each row's first)
    decode_s: float
    decode_tok_s: float
    total_s: float  # time spent in the engine (a stream consumer's time between tokens is not counted)


@dataclass
class GenerationResult:
    token_ids: list[list[int]]  # per row, without the prompt; the EOS token is kept when a row stopped on it
    finish_reasons: list[str]  # "eos" | "stop" | "length"
    texts: list[str] | None  # per row, when a tokenizer was given (without EOS, cut before a stop string)
    timings: GenerationTimings
    prompt_lengths: list[int] = field(default_factory=list)
    # The model state after generation: the prompt and every generated token but the last one (never fed).
    cache: Any = field(default=None, repr=False)

    @property
    def text(self) -> str:
        """The text of a single-prompt generation."""
        if self.texts is None:
            raise InputError("no text: pass a tokenizer to generate() to get text")
        if len(self.texts) != 1:
            raise InputError(f"this result has {len(self.texts)} rows; read .texts")
        return self.texts[0]


# --------------------------------------------------------------------------------------------------------------
# Model facts


def model_token_info(model: torch.nn.Module) -> tuple[list[int], int, int | None]:
    """(EOS ids, vocab size, image token id or None) of a Zamba2LM (``config``) or a Zamba2VL (``config.text_config``
    and ``config.image_token_index``)."""
    config = model.config
    text = getattr(config, "text_config", config)
    eos = getattr(text, "eos_token_ids", None)
    if eos is None:
        raw = getattr(text, "eos_token_id", None)
        eos = [] if raw is None else list(raw) if isinstance(raw, (list, tuple)) else [raw]
    image = getattr(config, "image_token_index", getattr(config, "image_token_id", None))
    return [int(i) for i in eos], int(text.vocab_size), image


def _device_of(model: torch.nn.Module) -> torch.device:
    device = getattr(model, "device", None)
    if isinstance(device, torch.device):
        return device
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def left_pad(prompts: Sequence[Sequence[int]], pad_token_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded ids [b, L] and the attention mask [b, L] (1 real, 0 padding) of prompts of different lengths."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise InputError("every prompt needs at least one token")
    L = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), L), pad_token_id, dtype=torch.long)
    mask = torch.zeros(len(prompts), L, dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, L - len(p):] = torch.as_tensor(list(p), dtype=torch.long)
        mask[i, L - len(p):] = 1
    return ids, mask


# --------------------------------------------------------------------------------------------------------------
# Prefill and decode


# "auto" prefill: prompts longer than AUTO_PREFILL_OVER tokens go in pieces of AUTO_PREFILL_PIECE. Measured on the
# 53M Zamba2 in bf16 on 2 AVX2 cores (peak RSS, 399 MiB of it the process before the prompt):
#   32k tokens at once 112.5 s / 2806 MiB; in 8k pieces 112.0 s / 1862 MiB
#   16k tokens at once  36.4 s / 1862 MiB; in 4k pieces  38.5 s / 1217 MiB
# with the same logits (a piece's attention over the earlier pieces goes a block of queries at a time,
# ops.attention.offset_causal_attention). Prompts up to 8k stay whole: one piece, nothing to save.
AUTO_PREFILL_OVER = 8192
AUTO_PREFILL_PIECE = 8192


def prefill_piece_size(chunk_size: int | str | None, length: int) -> int | None:
    """The piece size `prefill` uses for a prompt of `length` tokens (None: all at once)."""
    if chunk_size == "auto":
        return AUTO_PREFILL_PIECE if length > AUTO_PREFILL_OVER else None
    return chunk_size or None


def prefill(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, cache,
            chunk_size: int | str | None = None, **prefill_inputs: Any) -> torch.Tensor:
    """Run the prompt [b, L] into ``cache``; return the logits of its last position [b, V]. ``prefill_inputs``
    (e.g. ``pixel_values``, ``image_grid_thw``) go to the model with the prompt. ``chunk_size``: tokens per piece,
    "auto" (see `prefill_piece_size`) or None (at once)."""
    L = input_ids.shape[1]
    auto = chunk_size == "auto"
    chunk_size = prefill_piece_size(chunk_size, L)
    if auto and prefill_inputs and not hasattr(model, "embed_inputs"):
        chunk_size = None
    if not chunk_size or chunk_size >= L:
        out = model(input_ids=input_ids, attention_mask=attention_mask, cache=cache, use_cache=True,
                    logits_to_keep=1, **prefill_inputs)
        return out.logits[:, -1]
    inputs = {"input_ids": input_ids}
    if prefill_inputs:
        # Images are embedded once for the whole prompt (a chunk may cut through an image), then fed in pieces.
        if not hasattr(model, "embed_inputs"):
            raise InputError(f"prefill_chunk_size with extra inputs {sorted(prefill_inputs)} needs a model with "
                             "embed_inputs(); leave prefill_chunk_size unset")
        inputs = {"inputs_embeds": model.embed_inputs(input_ids, **prefill_inputs)}
    for start in range(0, L, chunk_size):
        piece = slice(start, start + chunk_size)
        mask = None if attention_mask is None else attention_mask[:, piece]
        out = model(**{k: v[:, piece] for k, v in inputs.items()}, attention_mask=mask, cache=cache, use_cache=True,
                    logits_to_keep=1)
    return out.logits[:, -1]


def decode_one_token(model, tokens: torch.Tensor, cache) -> torch.Tensor:
    """One decode step: feed the last tokens [b], return the next-token logits [b, V]. All rows are real, so no
    mask is needed: the cache remembers which earlier positions were padding."""
    return model(input_ids=tokens[:, None], cache=cache, use_cache=True, logits_to_keep=1).logits[:, -1]


# --------------------------------------------------------------------------------------------------------------
# The loop


class _Rows:
    """Per-row bookkeeping of a batch: generated ids, finish reasons and text."""

    def __init__(self, b: int, eos: set[int], limits: list[int], tokenizer, config: GenerationConfig):
        self.ids: list[list[int]] = [[] for _ in range(b)]
        self.reasons: list[str | None] = [None] * b
        self.eos, self.limits, self.tokenizer, self.config = eos, limits, tokenizer, config
        self.texts = None if tokenizer is None else [
            TextTracker(tokenizer, config.stop_strings, config.skip_special_tokens) for _ in range(b)]

    def record(self, row: int, token: int) -> str:
        """Append ``token`` to ``row``, decide whether the row is finished; return the new text of the row."""
        self.ids[row].append(token)
        delta, stopped = "", False
        if token in self.eos:
            self.reasons[row] = "eos"
        elif self.texts is not None:
            delta, stopped = self.texts[row].put(token)
        if not stopped and self.reasons[row] is None and len(self.ids[row]) >= self.limits[row]:
            self.reasons[row] = "length"
        if self.reasons[row] is not None and self.texts is not None:
            more, stopped = self.texts[row].finish()  # the held-back end may still hold a stop string
            delta += more
        if stopped:
            self.reasons[row] = "stop"
            self.ids[row] = tokens_through_stop(self.ids[row], self.tokenizer, self.config.stop_strings,
                                                 self.config.skip_special_tokens)
        return delta


def _run(model, input_ids, attention_mask, config: GenerationConfig, tokenizer, prefill_inputs, cache=None):
    """Check the request now; return a generator that yields, after each step, the list of (row, text delta) of
    that step and returns the GenerationResult. The model runs only once the generator is advanced."""
    device = _device_of(model)
    input_ids = torch.as_tensor(input_ids, dtype=torch.long, device=device)
    if input_ids.dim() == 1:
        input_ids = input_ids[None]
    b, L = input_ids.shape
    if L == 0:
        raise InputError("the prompt is empty; generation needs at least one prompt token")
    mask = torch.ones_like(input_ids)
    if attention_mask is not None:
        mask = torch.as_tensor(attention_mask, device=device).long()
        mask = mask[None] if mask.dim() == 1 else mask
        if mask.shape != (b, L):
            raise InputError(f"attention_mask has shape {tuple(mask.shape)}; expected {(b, L)} like input_ids")
        if not bool(mask[:, -1].all()):
            raise InputError("every row must end with a real token: pad prompts on the left (see left_pad)")
    prompt_lengths = mask.sum(1).tolist()

    model_eos, _, image_id = model_token_info(model)
    if config.eos_token_ids is not None:
        eos = set(config.eos_token_ids)
    else:
        eos = set(model_eos)
        if tokenizer is not None and getattr(tokenizer, "eos_token_id", None) is not None:
            eos.add(tokenizer.eos_token_id)
    suppress = set(config.suppress_token_ids) | ({image_id} if image_id is not None else set())
    if config.stop_strings and tokenizer is None:
        raise InputError("stop_strings need a tokenizer: pass tokenizer= to generate()")
    limits = [config.max_new_tokens] * b
    if config.max_length is not None:
        limits = [min(config.max_new_tokens, config.max_length - n) for n in prompt_lengths]
        if min(limits) < 1:
            raise InputError(f"a prompt of {max(prompt_lengths)} tokens leaves no room under max_length="
                             f"{config.max_length}; raise max_length or shorten the prompt")
    seeds = list(config.seed) if isinstance(config.seed, Sequence) else [config.seed] * b
    if len(seeds) != b:
        raise InputError(f"seed has {len(seeds)} values for {b} prompts; pass one int or one per prompt")
    rows = _Rows(b, eos, limits, tokenizer, config)
    prefill_inputs = {k: v for k, v in prefill_inputs.items() if v is not None}  # pixel_values=None: a text prompt
    prefill_mask = None if bool(mask.all()) else mask

    @torch.inference_mode()
    def steps():
        t_start = time.perf_counter()
        paused = 0.0  # time suspended at a yield (a streaming consumer's work), not counted
        nonlocal cache
        if cache is None:
            cache = model.new_cache(b, capacity=L + max(limits))
        elif cache.batch_size != b:
            raise InputError(f"the cache holds {cache.batch_size} rows but the prompt batch has {b}")
        logits = prefill(model, input_ids, prefill_mask, cache, config.prefill_chunk_size, **prefill_inputs)
        sampler = Sampler(do_sample=config.do_sample, temperature=config.temperature, top_k=config.top_k,
                          top_p=config.top_p, repetition_penalty=config.repetition_penalty,
                          suppress_ids=sorted(suppress), seeds=seeds, prompt_ids=input_ids, prompt_mask=mask,
                          vocab_size=logits.shape[-1])
        tokens = sampler(logits)  # [b]
        ids = tokens.tolist()  # waits for the device
        t_first = time.perf_counter()
        live = list(range(b))  # original row of each batch position
        while True:
            deltas = [(row, rows.record(row, tok)) for row, tok in zip(live, ids)]
            t_yield = time.perf_counter()
            yield [(row, d) for row, d in deltas if d]
            paused += time.perf_counter() - t_yield
            keep = [i for i, row in enumerate(live) if rows.reasons[row] is None]
            if not keep:
                break
            if len(keep) < len(live):  # drop finished rows from the batch
                cache = cache.select(keep)
                sampler.select(keep)
                tokens = tokens[torch.as_tensor(keep, device=tokens.device)]
                live = [live[i] for i in keep]
            tokens = sampler(decode_one_token(model, tokens, cache))
            ids = tokens.tolist()
        t_end = time.perf_counter()

        prefill_tokens = sum(prompt_lengths)
        decode_tokens = sum(len(r) for r in rows.ids) - b
        ttft, decode_s = t_first - t_start, t_end - t_first - paused
        timings = GenerationTimings(
            time_to_first_token_s=ttft, prefill_tokens=prefill_tokens, prefill_tok_s=prefill_tokens / max(ttft, 1e-9),
            decode_tokens=decode_tokens, decode_s=decode_s, decode_tok_s=decode_tokens / max(decode_s, 1e-9),
            total_s=t_end - t_start - paused,
        )
        texts = None if rows.texts is None else [t.text for t in rows.texts]
        return GenerationResult(token_ids=rows.ids, finish_reasons=rows.reasons, texts=texts, timings=timings,
                                prompt_lengths=prompt_lengths, cache=cache)

    return steps()


def generate(model, input_ids, attention_mask=None, config: GenerationConfig | None = None, tokenizer=None,
             cache=None, **prefill_inputs: Any) -> GenerationResult:
    """Generate from a prompt [L] or a left-padded batch [b, L] (with its attention_mask, 1 real / 0 padding).

    Each row gets the tokens it would get alone. ``prefill_inputs`` (``pixel_values``, ``image_grid_thw``) are
    passed to the model's prefill call only. With a tokenizer the result also holds each row's text. A given
    ``cache`` is continued (the prompt is appended to the state it holds), as a multi-turn chat does.
    """
    run = _run(model, input_ids, attention_mask, config or GenerationConfig(), tokenizer, prefill_inputs, cache)
    while True:
        try:
            next(run)
        except StopIteration as done:
            return done.value


def generate_batch(model, prompts: Sequence[Sequence[int]], config: GenerationConfig | None = None, tokenizer=None,
                   pad_token_id: int | None = None, **prefill_inputs: Any) -> GenerationResult:
    """Generate from prompts of different lengths (token id lists), left-padded into one batch."""
    if pad_token_id is None:
        text = getattr(model.config, "text_config", model.config)
        pad_token_id = getattr(text, "pad_token_id", None) or 0
    ids, mask = left_pad(prompts, pad_token_id)
    return generate(model, ids, mask, config, tokenizer, **prefill_inputs)


class TextStream:
    """Iterator over the text deltas of one prompt's generation; ``result`` holds the GenerationResult at the end."""

    def __init__(self, run):
        self._run = run
        self.result: GenerationResult | None = None

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        while self.result is None:
            try:
                deltas = next(self._run)
            except StopIteration as done:
                self.result = done.value
                break
            text = "".join(d for _, d in deltas)
            if text:
                return text
        raise StopIteration


def stream(model, input_ids, attention_mask=None, config: GenerationConfig | None = None, tokenizer=None,
           **prefill_inputs: Any) -> TextStream:
    """Stream the text of one prompt as it is generated. The deltas concatenate to ``generate(...).text``; none
    splits a UTF-8 character, and text that could begin a stop string is held back until it is known not to."""
    if tokenizer is None:
        raise InputError("stream() yields text and needs a tokenizer")
    shape = torch.as_tensor(input_ids).shape
    if len(shape) == 2 and shape[0] != 1:
        raise InputError(f"stream() takes one prompt; got a batch of {shape[0]}. Use generate() for batches")
    return TextStream(_run(model, input_ids, attention_mask, config or GenerationConfig(), tokenizer, prefill_inputs))
