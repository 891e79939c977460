"""One conversation -> token ids with loss labels on the assistant's tokens only, plus its image tensors.

Which tokens are the assistant's: the chat template is rendered once for the whole conversation and, for each
assistant message k, twice more for the prefixes ``messages[:k]`` with the generation prompt (what the model
sees at inference before it answers) and ``messages[:k+1]``. The characters between the two are the answer
plus the template's end-of-turn (``"3</s>"`` for the default template). The whole text is tokenized once, as
at inference, and a token is labelled when its character span (the tokenizer's offsets) overlaps an answer
span. So the ids are exactly the whole-prompt ids whatever the template's special tokens are, and the labels
follow them. The template must render prefixes as prefixes; one that does not is reported.

Images: each image token of the text is expanded to the image's merged-token count by the processor (its
``__call__``), and the expansion is checked against ours. Image tokens are never labelled.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from zamba2vl.errors import InputError
from zamba2vl.processing.chat import normalize_messages
from zamba2vl.processing.processor import Processor
from zamba2vl.train.objects import object_targets

IGNORE = -100  # label of tokens that carry no loss (torch's cross_entropy ignore_index)


@dataclass
class Example:
    input_ids: torch.Tensor  # [L] int64, image tokens expanded
    labels: torch.Tensor  # [L] int64: the token id where it is the assistant's, else IGNORE
    pixel_values: torch.Tensor | None  # [patches, 588] float32
    image_grid_thw: torch.Tensor | None  # [images, 3] int64
    # [merged image tokens, n_kinds + 7] targets of the objects objective (train/objects.py), when it is on
    objects: torch.Tensor | None = None

    @property
    def num_loss_tokens(self) -> int:
        """Tokens the model is asked to predict (a label at position i is predicted from position i-1)."""
        return int((self.labels[1:] != IGNORE).sum())


def image_parts(messages: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The image parts of the messages, in order (each may carry its own min_pixels / max_pixels)."""
    return [p for m in messages if isinstance(m.get("content"), (list, tuple)) for p in m["content"]
            if isinstance(p, Mapping) and p.get("type") in ("image", "image_url")]


def assistant_spans(processor: Processor, messages: Sequence[Mapping[str, Any]]) -> tuple[str, list[tuple[int, int]]]:
    """(rendered conversation, [(start, end) character span of each assistant answer + end-of-turn])."""
    normalized, _ = normalize_messages(messages)
    tokenizer = processor.tokenizer

    def render(msgs, generation_prompt: bool) -> str:
        return tokenizer.apply_chat_template(msgs, add_generation_prompt=generation_prompt,
                                             image_token=processor.image_token)

    text = render(normalized, False)
    spans = []
    for k, message in enumerate(normalized):
        if message["role"] != "assistant":
            continue
        prompt = render(normalized[:k], True)
        upto = text if k + 1 == len(normalized) else render(normalized[: k + 1], False)
        if not (upto.startswith(prompt) and text.startswith(upto)):
            raise InputError(
                f"the chat template does not render message {k} as a continuation of the messages before it "
                "(rendering a prefix of the conversation gives text that is not a prefix of the whole), so the "
                "assistant's tokens cannot be located; use a template whose turns only append text"
            )
        if len(upto) > len(prompt):
            spans.append((len(prompt), len(upto)))
    return text, spans


def label_mask(offsets: Sequence[tuple[int, int]], spans: Sequence[tuple[int, int]]) -> list[bool]:
    """True for each token whose character span [start, end) overlaps one of ``spans``."""
    out = []
    j = 0
    for start, end in offsets:
        while j < len(spans) and spans[j][1] <= start:
            j += 1
        out.append(j < len(spans) and end > spans[j][0] and start < spans[j][1] and end > start)
    return out


class ConversationEncoder:
    """Messages (with their image sources resolved) -> Example. Raises InputError/ImageError on bad input."""

    def __init__(self, processor: Processor, *, max_length: int | None = None, min_pixels: int | None = None,
                 max_pixels: int | None = None, object_kinds: int | None = None, letter_slots: int = 0,
                 letter_positions: int = 0):
        """``object_kinds``: build the objects objective's targets (train/objects.py) for that many kinds (and
        ``letter_slots`` letter slots, ``letter_positions`` letters by their place in the word)."""
        self.processor = processor
        self.object_kinds = object_kinds
        self.letter_slots = letter_slots
        self.letter_positions = letter_positions
        self.max_length = max_length
        self.min_pixels = min_pixels
        self.max_pixels = max_pixels
        self.pad_token_id = processor.tokenizer.pad_token_id or 0

    def __call__(self, messages: Sequence[Mapping[str, Any]]) -> Example:
        processor = self.processor
        text, spans = assistant_spans(processor, messages)
        if not spans:
            raise InputError("the conversation has no assistant answer to learn from")
        encoding = processor.tokenizer.backend.encode(text, add_special_tokens=True)
        mask = label_mask(encoding.offsets, spans)
        _, sources = normalize_messages(messages)
        if any(s is None for s in sources):
            raise InputError("an image part carries no image (expected an 'image' path, data URL or PIL image)")
        budgets = [{k: int(p[k]) for k in ("min_pixels", "max_pixels") if p.get(k) is not None}
                   for p in image_parts(messages)]
        # The images as the processor prepares them at inference; their placeholders are expanded here, from the
        # one tokenization above (tests/train/test_train_encode.py checks the result against the processor's own).
        pixel_values, grid, _ = processor.encode_images(sources, min_pixels=self.min_pixels,
                                                        max_pixels=self.max_pixels, image_budgets=budgets)
        counts = processor.tokens_per_image(grid) if grid is not None else []
        processor.check_placeholders(encoding.ids.count(processor.image_token_id), len(counts))
        ids, labels, image = [], [], 0
        for tok, labelled in zip(encoding.ids, mask):
            if tok == processor.image_token_id:
                ids += [tok] * counts[image]
                labels += [IGNORE] * counts[image]
                image += 1
            else:
                ids.append(tok)
                labels.append(tok if labelled else IGNORE)
        processor.check_length(len(ids))
        if self.max_length is not None and len(ids) > self.max_length:
            raise InputError(f"the sample is {len(ids)} tokens long (images: {sum(counts)}), over "
                             f"data.max_length={self.max_length}; raise it or lower data.max_pixels")
        objects = None
        if self.object_kinds and grid is not None:
            merge = processor.image_processor.merge_size
            objects = torch.cat([
                object_targets(part.get("objects"), g, self.object_kinds, processor.image_processor.patch_size,
                               merge, self.letter_slots, letter_positions=self.letter_positions)
                for part, g in zip(image_parts(messages), grid.tolist())])
        return Example(torch.tensor(ids, dtype=torch.long), torch.tensor(labels, dtype=torch.long), pixel_values,
                       grid, objects)


@dataclass
class Batch:
    input_ids: torch.Tensor  # [b, L], right-padded
    labels: torch.Tensor  # [b, L], IGNORE on padding
    pixel_values: torch.Tensor | None
    image_grid_thw: torch.Tensor | None
    num_loss_tokens: int
    objects: torch.Tensor | None = None  # [merged image tokens, n_kinds + 7], the images' order
    # Packed rows (``pack``): each token's sample, numbered in the rows' order (-1 on padding), and each sample's
    # labelled tokens. None for one sample per row (``collate``).
    segments: torch.Tensor | None = None  # [b, L] int64
    sample_loss_tokens: torch.Tensor | None = None  # [samples] int64

    def to(self, device: torch.device) -> "Batch":
        move = lambda t: None if t is None else t.to(device, non_blocking=True)  # noqa: E731
        return Batch(move(self.input_ids), move(self.labels), move(self.pixel_values), move(self.image_grid_thw),
                     self.num_loss_tokens, move(self.objects), move(self.segments), self.sample_loss_tokens)


def collate(examples: Sequence[Example], pad_token_id: int = 0) -> Batch:
    """Right-pad to the longest row. Padding comes after every real token, so causal layers never see it and
    the model runs without an attention mask; images keep their order (row by row)."""
    L = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), L), pad_token_id, dtype=torch.long)
    labels = torch.full((len(examples), L), IGNORE, dtype=torch.long)
    for i, e in enumerate(examples):
        ids[i, : len(e.input_ids)] = e.input_ids
        labels[i, : len(e.labels)] = e.labels
    pixels, grids, objects = _images(examples, "collate")
    return Batch(ids, labels, pixels, grids, sum(e.num_loss_tokens for e in examples), objects)


def _images(examples: Sequence[Example], who: str) -> tuple[torch.Tensor | None, ...]:
    """The examples' (pixel_values, image_grid_thw, objects), each concatenated in the examples' order (None when
    there are none)."""
    pixels = [e.pixel_values for e in examples if e.pixel_values is not None]
    grids = [e.image_grid_thw for e in examples if e.image_grid_thw is not None]
    objects = [e.objects for e in examples if e.objects is not None]
    if objects and len(objects) != len(pixels):
        raise ValueError(f"{who}: some examples with images carry object targets and others do not")
    return tuple(torch.cat(t) if t else None for t in (pixels, grids, objects))


# Row lengths ``pack`` may choose from (besides the longest sample's): longer rows hold more samples but cost more
# attention per token and leave longer padded tails.
PACK_ROW_LENGTHS = (64, 96, 128, 160, 192, 256)


def pack_rows(lengths: Sequence[int], row_lengths: Sequence[int] = PACK_ROW_LENGTHS) -> tuple[int, list[list[int]]]:
    """Arrange samples of these lengths into rows: first-fit, longest first, into rows of the length (from
    ``row_lengths`` and the longest sample) that leaves the fewest row x length slots; ties go to the shorter rows.
    Returns (row length, rows as lists of sample indices)."""
    if not lengths:
        raise ValueError("pack_rows: no samples")
    longest = max(lengths)
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    best = None
    for R in sorted({longest, *(r for r in row_lengths if r > longest)}):
        rows: list[list[int]] = []
        free: list[int] = []
        for i in order:
            for r, room in enumerate(free):
                if lengths[i] <= room:
                    rows[r].append(i)
                    free[r] -= lengths[i]
                    break
            else:
                rows.append([i])
                free.append(R - lengths[i])
        if best is None or len(rows) * R < best[0] * best[1]:
            best = (len(rows), R, rows)
    return best[1], best[2]


def pack(examples: Sequence[Example], pad_token_id: int = 0,
         row_lengths: Sequence[int] = PACK_ROW_LENGTHS) -> Batch:
    """Several samples per row, one after another, right-padded (``pack_rows`` picks the arrangement).
    ``segments`` tells the model where each sample starts, so each runs as if it were alone (the language model's
    ``segments`` argument); each sample's first label is dropped (it would be predicted from the previous sample).
    Images, their object targets and ``sample_loss_tokens`` follow the samples' order in the rows, row by row."""
    R, rows = pack_rows([len(e.input_ids) for e in examples], row_lengths)
    ids = torch.full((len(rows), R), pad_token_id, dtype=torch.long)
    labels = torch.full((len(rows), R), IGNORE, dtype=torch.long)
    segments = torch.full((len(rows), R), -1, dtype=torch.long)
    ordered: list[Example] = []
    for r, row in enumerate(rows):
        t = 0
        for i in row:
            e = examples[i]
            n = len(e.input_ids)
            ids[r, t : t + n] = e.input_ids
            labels[r, t + 1 : t + n] = e.labels[1:]
            segments[r, t : t + n] = len(ordered)
            ordered.append(e)
            t += n
    pixels, grids, objects = _images(ordered, "pack")
    counts = torch.tensor([e.num_loss_tokens for e in ordered], dtype=torch.long)
    return Batch(ids, labels, pixels, grids, int(counts.sum()), objects, segments, counts)
