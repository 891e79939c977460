"""The high-level API: load a checkpoint folder once, then ask questions about images.

    vlm = zamba2vl.load("path/or/Hub-id", dtype="bfloat16")
    print(vlm.chat([{"role": "user", "content": [{"type": "image", "image": "cat.png"},
                                                 {"type": "text", "text": "What is this?"}]}]))
    for delta in vlm.chat(messages, stream=True):
        print(delta, end="", flush=True)

    session = vlm.session()                   # keeps the model state between turns
    session.send("Describe the image.", images=["cat.png"])
    session.send("And its colour?")           # prefills only the new turn's tokens
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from zamba2vl.errors import InputError
from zamba2vl.generation import GenerationConfig, GenerationResult, generate, stream
from zamba2vl.model import Zamba2VL
from zamba2vl.processing.processor import ProcessedInputs, Processor


def _gen_config(base: GenerationConfig, overrides: Mapping[str, Any]) -> GenerationConfig:
    from dataclasses import asdict

    d = asdict(base)
    d.update({k: v for k, v in overrides.items() if v is not None})
    return GenerationConfig(**d)


@dataclass
class VLM:
    """A loaded model with its processor and default generation settings."""

    model: Zamba2VL
    processor: Processor
    generation_config: GenerationConfig = field(default_factory=GenerationConfig)
    load_seconds: float = 0.0

    def prepare(self, messages, *, max_pixels: int | None = None, min_pixels: int | None = None,
                images: Sequence[Any] | None = None) -> ProcessedInputs:
        inputs = self.processor.process_messages(messages, images=images, max_pixels=max_pixels, min_pixels=min_pixels)
        limit = self.context_limit
        if limit is not None and inputs.input_ids.shape[1] > limit:
            raise InputError(
                f"the prompt is {inputs.input_ids.shape[1]} tokens (images included), over this model's context of "
                f"{limit}. Shorten the conversation, use fewer images, or lower max_pixels."
            )
        return inputs

    @property
    def context_limit(self) -> int | None:
        return self.processor.max_length

    def generate(self, messages, *, stream: bool = False, max_pixels: int | None = None,
                 min_pixels: int | None = None, images: Sequence[Any] | None = None, **gen: Any):
        """Messages (one conversation or a batch) -> GenerationResult, or a TextStream with ``stream=True``."""
        inputs = self.prepare(messages, max_pixels=max_pixels, min_pixels=min_pixels, images=images)
        config = _gen_config(self.generation_config, gen)
        model_inputs = inputs.model_inputs()
        ids, mask = model_inputs.pop("input_ids"), model_inputs.pop("attention_mask")
        if stream:
            return _stream(self.model, ids, mask, config, self.processor.tokenizer, **model_inputs)
        result = generate(self.model, ids, mask, config, self.processor.tokenizer, **model_inputs)
        result.inputs = inputs  # type: ignore[attr-defined]
        return result

    def chat(self, messages, *, stream: bool = False, **kwargs: Any):
        """One conversation -> the assistant's answer as text (or an iterator of text deltas)."""
        out = self.generate(messages, stream=stream, **kwargs)
        return out if stream else out.text

    def session(self, system: str | None = None, **gen: Any) -> "ChatSession":
        return ChatSession(self, system=system, gen=gen)


def _stream(model, ids, mask, config, tokenizer, **model_inputs):
    return stream(model, ids, mask, config, tokenizer, **model_inputs)


class ChatSession:
    """A multi-turn conversation that keeps the model's hybrid state between turns.

    The state after a turn covers the prompt and every generated token but the last one, which is fed at the start
    of the next turn. The next turn's text is found by rendering the whole conversation with the chat template and
    removing the part already consumed (the previous render plus the answer); only that delta is tokenized and
    prefilled, with its new images. If the template does not extend the previous render (a template that rewrites
    history), the session falls back to prefilling the whole conversation from a fresh state.
    """

    def __init__(self, vlm: VLM, system: str | None = None, gen: Mapping[str, Any] | None = None):
        self.vlm = vlm
        self.messages: list[dict[str, Any]] = []
        if system:
            self.messages.append({"role": "system", "content": system})
        self.gen = dict(gen or {})
        self.cache = None
        self.history_ids: list[int] = []  # every token fed to the model so far, in order
        self._rendered = ""  # template render that produced the last prompt
        self._answer = ""  # last answer's text
        self._pending: list[int] = []  # last generated token, not yet fed
        self.last_prefill_tokens = 0
        self.last_result: GenerationResult | None = None

    def prepare_turn(self, text: str, images: Sequence[Any] = ()) -> tuple[list[int], dict[str, Any]]:
        """Add a user turn; return the token ids to feed now and the pixel inputs of its new images."""
        vlm, proc = self.vlm, self.vlm.processor
        content = [{"type": "image", "image": im} for im in images] + [{"type": "text", "text": text}]
        self.messages.append({"role": "user", "content": content})
        rendered = proc.apply_chat_template(self.messages, add_generation_prompt=True)
        consumed = self._rendered + self._answer
        if self.cache is not None and rendered.startswith(consumed):
            delta = rendered[len(consumed):]
            eos_id, eos = proc.tokenizer.eos_token_id, proc.tokenizer.eos_token
            if self._pending == [eos_id] and eos and delta.startswith(eos):
                delta = delta[len(eos):]  # the pending EOS token stands for the template's end-of-turn text
            inputs = proc(delta, list(images), add_special_tokens=False)
            new_ids = self._pending + inputs.input_ids[0].tolist()
        else:
            self.cache, self.history_ids = None, []
            all_images = [p["image"] for m in self.messages if isinstance(m.get("content"), list)
                          for p in m["content"] if p.get("type") == "image"]
            inputs = proc(rendered, all_images, add_special_tokens=True)
            new_ids = inputs.input_ids[0].tolist()
        limit = vlm.context_limit
        if limit is not None and len(self.history_ids) + len(new_ids) > limit:
            self.messages.pop()
            raise InputError(
                f"the conversation would be {len(self.history_ids) + len(new_ids)} tokens, over this model's context "
                f"of {limit}. Start a new session (or lower max_pixels for images)."
            )
        self._rendered = rendered
        extra = {}
        if inputs.pixel_values is not None:
            extra = {"pixel_values": inputs.pixel_values, "image_grid_thw": inputs.image_grid_thw}
        return new_ids, extra

    def send(self, text: str, images: Sequence[Any] = (), **gen: Any) -> str:
        """Add a user turn and return the assistant's answer; only the new turn's tokens are prefilled."""
        vlm = self.vlm
        new_ids, extra = self.prepare_turn(text, images)
        config = _gen_config(vlm.generation_config, {**self.gen, **gen})
        if self.cache is None:
            self.cache = vlm.model.new_cache(1, capacity=len(new_ids) + config.max_new_tokens)
        self.last_prefill_tokens = len(new_ids)
        result = generate(vlm.model, torch.tensor([new_ids]), None, config, vlm.processor.tokenizer,
                          cache=self.cache, **extra)
        generated = result.token_ids[0]
        self.history_ids += new_ids + generated[:-1]
        self._pending = generated[-1:]
        self._answer = result.text
        self.messages.append({"role": "assistant", "content": [{"type": "text", "text": result.text}]})
        self.last_result = result
        return result.text


def _mem_available_bytes() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def auto_dtype(folder, device: str) -> torch.dtype | None:
    """The dtype ``load(dtype="auto")`` runs in.

    Off the CPU: the checkpoint's own. On a CPU with native bf16 matmuls (AVX512-BF16 / AMX): bfloat16. On other
    CPUs bf16 matmuls are emulated and several times slower than fp32, so float32 is used when the fp32 weights
    fit in half of the available memory, bfloat16 otherwise (slower, but it fits).
    """
    if device != "cpu":
        return None
    from zamba2vl.checkpoint import open_weights
    from zamba2vl.ops.precision import cpu_has_native_gemm

    if cpu_has_native_gemm(torch.bfloat16):
        return torch.bfloat16
    reader = open_weights(folder)
    n_params = 0
    for k in reader:
        n = 1
        for d in reader.shape(k):
            n *= d
        n_params += n
    avail = _mem_available_bytes()
    return torch.float32 if avail is None or 4 * n_params < avail // 2 else torch.bfloat16


def load(path: str | os.PathLike, *, dtype: torch.dtype | str | None = "auto", device: str = "cpu",
         max_length: int | None = None, packed_decode: bool | str = False, **overrides: Any) -> VLM:
    """Load model, processor and generation config from a checkpoint folder or Hub id.

    ``dtype="auto"`` picks what runs fastest on this machine within its memory (see ``auto_dtype``).
    ``packed_decode``: keep a second copy of the bf16 weights in oneDNN's blocked layout for the decode products
    (``zamba2vl.ops.packed``: ~1.6x the GEMV speed on an AVX512-BF16 CPU) at the cost of the language model's
    weight bytes once more. Off by default, so that loading stays within 1.5x the checkpoint's size; True packs
    (on CPUs with native bf16; elsewhere nothing is packed); "auto" packs when the copy fits in a quarter of the
    available memory.
    """
    from zamba2vl.checkpoint import resolve_model_dir

    t0 = time.perf_counter()
    folder = resolve_model_dir(path)
    from zamba2vl.config import Zamba2VLConfig, load_config_json

    Zamba2VLConfig.from_dict(load_config_json(folder))  # a bad config.json is reported before anything else
    if dtype == "auto":
        dtype = auto_dtype(folder, device)
    model = Zamba2VL.from_pretrained(folder, dtype=dtype, device=device, **overrides)
    if packed_decode == "auto":  # only the language model decodes; the vision tower stays as it is
        weight_bytes = sum(p.numel() * p.element_size() for p in model.language_model.parameters())
        avail = _mem_available_bytes()
        packed_decode = device == "cpu" and avail is not None and 4 * weight_bytes <= avail
    if packed_decode:
        from zamba2vl.ops.packed import pack_for_decode

        pack_for_decode(model.language_model)
    processor = Processor.from_pretrained(folder)
    limit = max_length or model.config.text_config.max_position_embeddings
    processor.max_length = limit
    gen_file = Path(folder) / "generation_config.json"
    gen = GenerationConfig.from_json_file(gen_file) if gen_file.is_file() else GenerationConfig()
    return VLM(model, processor, gen, load_seconds=time.perf_counter() - t0)
