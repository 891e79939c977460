"""An auxiliary training objective from object annotations: the merged image token that holds an object's centre
says what the object is and where its box is.

Counting "how many circles" and finding "the red triangle" need each object's shape, and an object of 14-28
pixels covers two to four merged tokens (28 x 28 pixels each). Trained only through the answers, the nano model
told shapes apart poorly (session 11: questions naming one shape counted at 30%, grounding targets told apart by
shape alone found at 51%, against 96% and 77% for all shapes and colour alone). This head gives the vision side
a dense signal for it: a linear map from each merged token to

- one logit per object kind (``synthetic.KINDS``: shape x colour), trained with binary cross-entropy to say
  which kinds have an object whose box centre falls in the token's 28 x 28 cell (usually none, sometimes one);
- the box ``[x1, y1, x2, y2]`` of the object centred in the cell (the largest when two are), in units of the
  cell's side, trained with an L1 loss on the cells that hold a centre.

With ``kind_loss="softmax"`` the kinds are one softmax over the kinds and "nothing here" instead, trained with
cross-entropy towards the kind of the cell's object (the largest when two are). Measured for letters (session 13,
``stage: vision`` on 224x28 reading banners, 128 images a step, 400 steps; the head's top letter at a letter's
centre cell is one of that cell's letters): sigmoids 28.7%, softmax 24.8% with ``box_weight: 1``; softmax 60.3%
with ``box_weight: 0``. The box's L1 loss, not the form of the kinds' loss, is what held letters back (sigmoids
with ``box_weight: 0`` were not measured).

With ``letter_slots`` (session 15) a reading image's letters are not kinds: each merged token names, left to right,
the letters whose centres fall in its cell, one softmax over the 26 letters and "none" per slot. A 28-pixel banner
cell holds one to three letters, so "the letter at this cell" was ambiguous, and the slots also give their order.
Measured (stage: vision from the shipped tower, 1,400 steps of 128 images at lr 6e-3): 85.1% of held-out letters
right in their slots, after which the nano model learnt to read 87.0% of held-out words.

Annotations come from the image part of a training message: ``{"type": "image", "image": ..., "objects":
{"size": [width, height], "kinds": [k, ...], "boxes": [[x1, y1, x2, y2], ...]}}`` in the image's own pixels
(the synthetic source adds them to counting and grounding examples); images without one add nothing. Like
the reconstruction head, this one exists only during training and is kept in the trainer state.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from zamba2vl.errors import InputError
from zamba2vl.train.config import KIND_LOSSES
from zamba2vl.train.reconstruction import image_sums, seeded_head
from zamba2vl.train.synthetic import LETTERS


def target_width(n_kinds: int, letter_slots: int = 0, letter_positions: int = 0) -> int:
    """Columns of a target row: n_kinds multi-hot kinds, 4 box coordinates, has-box flag, the kind of the cell's
    (largest) object (n_kinds: none), ``letter_slots`` letter slots, ``letter_positions`` letters by their place
    in the word (``Spelling``), the match flag (``MATCH``), annotated flag."""
    return n_kinds + 8 + letter_slots + letter_positions


MATCH = -2  # the target column of QueryMatch: 1 / 0 whether the cell holds an asked-about object's centre, -1 unknown


def known_token_means(loss: torch.Tensor, known: torch.Tensor, image_grid_thw: torch.Tensor,
                      unit: int) -> tuple[torch.Tensor, int]:
    """Token losses [tokens] (0 where unknown) and the 0 / 1 mask of tokens with a target [tokens] -> (the sum over
    images with any such token of each one's mean loss over them, the number of those images)."""
    sums, _ = image_sums(loss, image_grid_thw, unit)
    counts = image_sums(known, image_grid_thw, unit)[0]
    has = counts > 0
    return (sums[has] / counts[has]).sum(), int(has.sum())


def object_targets(annotation: Mapping[str, Any] | None, grid_thw, n_kinds: int, patch_size: int = 14,
                   merge: int = 2, letter_slots: int = 0, n_letters: int = len(LETTERS),
                   letter_positions: int = 0) -> torch.Tensor:
    """The targets [merged tokens, target_width(n_kinds, letter_slots, letter_positions)] of one image with grid
    (t, h, w) in
    patches. Tokens are in the processor's order: row-major over the (h / merge) x (w / merge) cells, frame after
    frame. An image without annotation gets rows of zeros (annotated flag 0: it adds no loss).

    With ``letter_slots`` S > 0, annotated kinds n_kinds .. n_kinds + n_letters - 1 are letters (a reading image's,
    ``synthetic.object_annotation(letters=True)``) and go to the slots rather than the kinds: slot i of a cell is
    the i-th letter, left to right, whose box centre falls in the cell (0 .. n_letters - 1), or n_letters when the
    cell holds fewer; -1 (no loss) on every slot of an image without letters.

    With ``letter_positions`` P > 0 (and letter slots), column i of the P after the slots is the word's i-th letter
    (in the annotation's order, which is the word's) on the cell holding that letter's centre, n_letters ("not
    here") on the other cells; -1 on every cell of an image without letters. Letters after the P-th are not named.

    An annotation's optional ``"match": [0 or 1 per object]`` (which objects the question asks about) fills the
    ``MATCH`` column: 1 on the cells holding a matched object's centre, 0 on the others; -1 (no loss) without it."""
    t, h, w = (int(v) for v in grid_thw)
    rows, cols = h // merge, w // merge
    if letter_positions and not letter_slots:
        raise ValueError("letter_positions needs letter_slots > 0 (a reading image's letters are not kinds then)")
    out = torch.zeros(t * rows * cols, target_width(n_kinds, letter_slots, letter_positions))
    out[:, MATCH] = -1
    if letter_slots:
        out[:, n_kinds + 6:n_kinds + 6 + letter_slots + letter_positions] = -1
    if annotation is None:
        return out
    try:
        width, height = (float(v) for v in annotation["size"])
        kinds = [int(k) for k in annotation["kinds"]]
        boxes = [[float(v) for v in b] for b in annotation["boxes"]]
        match = None if annotation.get("match") is None else [bool(m) for m in annotation["match"]]
    except (KeyError, TypeError, ValueError) as e:
        raise InputError(f"an image's 'objects' annotation needs size [w, h], kinds and boxes: {e}") from e
    limit = n_kinds + (n_letters if letter_slots else 0)
    if len(kinds) != len(boxes) or any(len(b) != 4 for b in boxes) or any(not 0 <= k < limit for k in kinds):
        raise InputError(f"an image's 'objects' annotation must give one kind in [0, {limit}) and one box "
                         f"[x1, y1, x2, y2] per object, got kinds {kinds} and boxes {boxes}")
    if match is not None and len(match) != len(kinds):
        raise InputError(f"an image's 'objects' annotation has {len(kinds)} objects but {len(match)} match flags")
    cell = patch_size * merge
    sx, sy = w * patch_size / width / cell, h * patch_size / height / cell  # image pixels -> cells
    rows_out = out.numpy()  # filled in place (a few objects: plain Python, no per-object tensors)
    rows_out[:, -1] = 1.0
    rows_out[:, n_kinds + 5] = n_kinds  # "nothing here" until an object's centre lands in the cell
    if match is not None:
        rows_out[:, MATCH] = 0.0
    area: dict[int, float] = {}
    letters: dict[int, list[tuple[float, int]]] = {}  # cell -> [(centre x, letter)]
    spelt: list[tuple[int, int]] = []  # (cell, letter) in the word's order
    # A word's letters share one row of cells: the row holding the middle of the line they stand on. In a banner
    # enlarged to two rows of tokens (a floor of data.min_pixels) the letters' own centres sit near the boundary
    # and would scatter between the rows with each glyph's height (ascenders, descenders, capitals).
    line = [(y1, y2) for kind, (_, y1, _, y2) in zip(kinds, boxes) if kind >= n_kinds]
    line_row = min(rows - 1, int((min(a for a, _ in line) + max(b for _, b in line)) * sy / 2)) if line else 0
    for j, (kind, (x1, y1, x2, y2)) in enumerate(zip(kinds, boxes)):
        box = (x1 * sx, y1 * sy, x2 * sx, y2 * sy)
        r = min(rows - 1, int((box[1] + box[3]) / 2))
        c = min(cols - 1, int((box[0] + box[2]) / 2))
        if kind >= n_kinds:
            r = line_row
            letters.setdefault(r * cols + c, []).append(((box[0] + box[2]) / 2, kind - n_kinds))
            spelt.append((r * cols + c, kind - n_kinds))
            continue
        size = (box[2] - box[0]) * (box[3] - box[1])
        for frame in range(t):
            i = frame * rows * cols + r * cols + c
            rows_out[i, kind] = 1.0
            if match is not None and match[j]:
                rows_out[i, MATCH] = 1.0
            if size > area.get(i, -1.0):
                area[i] = size
                rows_out[i, n_kinds:n_kinds + 4] = box
                rows_out[i, n_kinds + 4] = 1.0
                rows_out[i, n_kinds + 5] = kind
    if letters:
        first = n_kinds + 6
        for frame in range(t):
            rows_out[frame * rows * cols:(frame + 1) * rows * cols, first:first + letter_slots] = n_letters
            for cell, found in letters.items():
                ordered = [letter for _, letter in sorted(found)][:letter_slots]
                rows_out[frame * rows * cols + cell, first:first + len(ordered)] = ordered
            if letter_positions:
                at = first + letter_slots
                rows_out[frame * rows * cols:(frame + 1) * rows * cols, at:at + letter_positions] = n_letters
                for i, (cell, letter) in enumerate(spelt[:letter_positions]):
                    rows_out[frame * rows * cols + cell, at + i] = letter
    return out


class ObjectMap(nn.Module):
    def __init__(self, hidden_size: int, n_kinds: int, box_weight: float = 1.0, seed: int = 0,
                 kind_loss: str = "bce", letter_slots: int = 0, n_letters: int = len(LETTERS)):
        super().__init__()
        if kind_loss not in KIND_LOSSES:
            raise ValueError(f"kind_loss {kind_loss!r}; use one of {KIND_LOSSES}")
        self.n_kinds = n_kinds
        self.box_weight = box_weight
        self.kind_loss = kind_loss
        self.letter_slots = letter_slots
        self.n_letters = n_letters
        self.n_logits = n_kinds + (kind_loss == "softmax")  # softmax: one more class, "nothing here"
        self.proj = seeded_head(hidden_size, self.n_logits + 4 + letter_slots * (n_letters + 1), seed + 1)

    def token_losses(self, features: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Each token's loss [tokens]: binary cross-entropy summed over the kinds (or, with softmax, cross-entropy
        towards the cell's kind or "nothing"), plus box_weight x the L1 error summed over the 4 coordinates where the
        cell holds a centre; 0 on tokens of unannotated images."""
        k, n = self.n_kinds, self.n_logits
        out = self.proj(features).float()
        t = targets.to(out.device, torch.float32)
        if self.kind_loss == "softmax":
            label = t[:, k + 5].long().clamp(0, k)  # (unannotated rows hold 0; their loss is zeroed below)
            kinds = F.cross_entropy(out[:, :n], label, reduction="none")
        else:
            kinds = F.binary_cross_entropy_with_logits(out[:, :k], t[:, :k], reduction="none").sum(-1)
        box = (out[:, n:n + 4] - t[:, k:k + 4]).abs().sum(-1) * t[:, k + 4]
        loss = kinds + self.box_weight * box
        if self.letter_slots:  # each slot: cross-entropy over the letters and "none"; -1 (no letters) adds nothing
            s, c = self.letter_slots, self.n_letters + 1
            logits = out[:, n + 4:n + 4 + s * c].reshape(-1, c)
            labels = t[:, k + 6:k + 6 + s].long().reshape(-1)
            loss = loss + F.cross_entropy(logits, labels, ignore_index=-1, reduction="none").view(-1, s).sum(-1)
        return loss * t[:, -1]

    def forward(self, features: torch.Tensor, targets: torch.Tensor,
                image_grid_thw: torch.Tensor, unit: int) -> tuple[torch.Tensor, int]:
        """Merged tokens [tokens, hidden] of a batch's images and their targets -> (the sum over annotated
        images of each image's mean token loss, the number of annotated images)."""
        loss = self.token_losses(features, targets)
        sums, per_image = image_sums(loss, image_grid_thw, unit)
        annotated = image_sums(targets[:, -1].to(loss.device, loss.dtype), image_grid_thw, unit)[0] > 0
        return (sums / per_image.clamp(min=1).to(loss.dtype))[annotated].sum(), int(annotated.sum())


class QueryMatch(nn.Module):
    """The ``match`` objective (session 17): a linear map from the language model's hidden state at each image
    token, after some of its layers, to one logit: does the token's cell hold the centre of an object that the
    question asks about (the ones a counting question counts, a grounding question's target)?

    Counting "how many red shapes" and finding "the red circle" both need the model to tell, at each image token,
    whether that token is one asked about: a conjunction of the question (read before the image) and the token's
    own kind. Learnt through the answers alone this took the nano model's language model thousands of steps
    (grounding stayed at 0% for 800 steps of grounding alone, session 17); this head asks for it directly. Trained
    with binary cross-entropy on tokens whose ``MATCH`` target is known (0 or 1); exists only during training."""

    def __init__(self, hidden_size: int, seed: int = 0):
        super().__init__()
        self.proj = seeded_head(hidden_size, 1, seed + 2)

    def forward(self, hidden: torch.Tensor, targets: torch.Tensor,
                image_grid_thw: torch.Tensor, unit: int) -> tuple[torch.Tensor, int]:
        """Hidden states [tokens, hidden] at a batch's image tokens (in the order of their merged features) and
        the images' object targets -> (the sum over images with match targets of each one's mean token loss, the
        number of such images)."""
        logit = self.proj(hidden).float()[:, 0]
        label = targets[:, MATCH].to(logit.device, torch.float32)
        known = (label >= 0).to(logit.dtype)
        loss = F.binary_cross_entropy_with_logits(logit, label.clamp(min=0), reduction="none") * known
        return known_token_means(loss, known, image_grid_thw, unit)


class Spelling(nn.Module):
    """The ``spell`` objective (session 18): a linear map from the language model's hidden state at each image
    token of a reading image, after some of its layers, to ``positions`` softmaxes over the 26 letters and "not
    here": which letter of the word, counted from its start, the token's cell holds (``object_targets``'
    ``letter_positions`` columns).

    To answer "What word is written?" one letter after another, the model must find, at the answer's i-th letter,
    the image token holding the word's i-th letter. The vision tower names the letters of each cell (left to right
    within it); their place in the whole word is a running count over the cells before, which the Mamba layers can
    carry along the image's row, and which the shared block's attention can then look up. Learnt through the answers
    alone, reading was the slowest task (session 17: 3% / 9% / 34% / 59% held-out words at steps 1,000 .. 4,000);
    this head asks for the count directly. Cross-entropy summed over the positions, mean over an image's tokens;
    images without letters add nothing. Exists only during training."""

    def __init__(self, hidden_size: int, positions: int, seed: int = 0, n_letters: int = len(LETTERS)):
        super().__init__()
        self.positions = positions
        self.n_letters = n_letters
        self.proj = seeded_head(hidden_size, positions * (n_letters + 1), seed + 3)

    def forward(self, hidden: torch.Tensor, targets: torch.Tensor,
                image_grid_thw: torch.Tensor, unit: int) -> tuple[torch.Tensor, int]:
        """Hidden states [tokens, hidden] at a batch's image tokens (in the order of their merged features) and
        the images' object targets -> (the sum over images with letters of each one's mean token loss, the number
        of such images)."""
        p, c = self.positions, self.n_letters + 1
        logits = self.proj(hidden).float().reshape(-1, c)
        labels = targets[:, MATCH - p:MATCH].to(logits.device).long().reshape(-1)
        loss = F.cross_entropy(logits, labels, ignore_index=-1, reduction="none").view(-1, p).sum(-1)
        known = (targets[:, MATCH - p] >= 0).to(loss.device, loss.dtype)
        return known_token_means(loss, known, image_grid_thw, unit)
