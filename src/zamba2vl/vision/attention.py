"""Block-diagonal (segment) attention for the vision tower, as pure functions.

The tower's sequence is cut into independent segments: windows of 8x8 patches in most blocks, whole image
frames in the full-attention blocks. A token attends to every token of its own segment and to nothing else
(non-causal). ``segment_attention_reference`` is the obviously correct version (one dense boolean mask, the
oracle of the tests); ``segment_attention`` is the one the model runs.

How the fast path batches the segments (measured on a 2-core AVX2 CPU, bf16, 16 heads x 80, torch 2.13):
- all segments the same length L (every window of an image whose merged grid is a multiple of the window,
  or one image): a free reshape to [S, H, L, D] and one SDPA call with no mask. 64 windows of 64 patches:
  about 28 ms, against 33 ms for a Python loop of 64 SDPA calls;
- windows of mixed length (partial windows at the bottom/right edges): gather into a padded batch
  [S, H, Lmax, D] and one SDPA call with a key-padding mask [S, 1, 1, Lmax] (O(N) memory, no N x N mask).
  Windows are at most 64 patches, so the padding costs little;
- images of different sizes in a full-attention block: one unmasked SDPA call per image. Padding a 1024-patch
  image to 4096 would double the attention cost of the block, and a dense N x N mask would be both O(N^2)
  memory (185 MB at 13600 patches) and slower (0.94 s against 0.75 s unmasked at 4096 patches); images are
  few, so this loop is short and never runs over windows.
Each call goes through ``ops.attention.attention``: SDPA, except under autograd in 16 bits on the CPU over short
segments (training the nano model), where explicit products are 2x faster.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from zamba2vl.ops.attention import attention


@dataclass(frozen=True)
class Segments:
    """How N tokens split into consecutive attention segments, prepared once per forward.

    mode is one of
      "uniform": every segment has length ``max_len`` (one segment is the special case S = 1);
      "padded":  ``gather`` [S*max_len] picks the tokens of a padded batch (padding slots point at token 0),
                 ``key_mask`` [S, 1, 1, max_len] is True on real tokens, ``scatter`` [N] is the slot of each
                 token in the padded batch;
      "split":   one call per segment, over ``lengths``.
    """

    mode: str
    lengths: tuple[int, ...]
    max_len: int
    gather: torch.Tensor | None = None
    key_mask: torch.Tensor | None = None
    scatter: torch.Tensor | None = None

    @property
    def num_tokens(self) -> int:
        return sum(self.lengths)


def make_segments(cu_seqlens: torch.Tensor, *, pad: bool, device: torch.device | str | None = None) -> Segments:
    """Segments from cumulative boundaries [S+1] (starting at 0; empty segments are dropped).

    Segments of equal length are always batched by a reshape. Otherwise ``pad=True`` builds a padded batch
    (for many short windows) and ``pad=False`` leaves one call per segment (for a few large images).
    """
    lengths = [int(n) for n in (cu_seqlens[1:] - cu_seqlens[:-1]).tolist() if n > 0]
    assert lengths, "no tokens to attend over"
    max_len = max(lengths)
    if all(n == max_len for n in lengths):
        return Segments("uniform", tuple(lengths), max_len)
    if not pad:
        return Segments("split", tuple(lengths), max_len)
    S = len(lengths)
    lens = torch.tensor(lengths)
    starts = torch.cumsum(lens, 0) - lens
    slot = torch.arange(max_len)
    key_mask = slot[None, :] < lens[:, None]  # [S, Lmax]
    gather = torch.where(key_mask, starts[:, None] + slot[None, :], 0).reshape(-1)
    scatter = torch.nonzero(key_mask.reshape(-1)).squeeze(1)  # slots of real tokens, in token order
    return Segments(
        "padded",
        tuple(lengths),
        max_len,
        gather=gather.to(device),
        key_mask=key_mask.view(S, 1, 1, max_len).to(device),
        scatter=scatter.to(device),
    )


def segment_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, segments: Segments) -> torch.Tensor:
    """Attention of q, k, v [N, H, D] restricted to segments; scale 1/sqrt(D). Returns [N, H, D]."""
    N, H, D = q.shape
    assert segments.num_tokens == N, (segments.num_tokens, N)
    L = segments.max_len
    if segments.mode == "uniform":
        S = N // L

        def batch(x):  # [N, H, D] -> [S, H, L, D], a view
            return x.view(S, L, H, D).transpose(1, 2)

        out = attention(batch(q), batch(k), batch(v))  # [S, H, L, D]
        return out.transpose(1, 2).reshape(N, H, D)
    if segments.mode == "padded":
        S = len(segments.lengths)

        def batch(x):  # [N, H, D] -> [S, H, L, D], gathered
            return x[segments.gather].view(S, L, H, D).transpose(1, 2)

        out = attention(batch(q), batch(k), batch(v), key_mask=segments.key_mask)
        return out.transpose(1, 2).reshape(S * L, H, D)[segments.scatter]
    assert segments.mode == "split", segments.mode
    outs = []
    start = 0
    for n in segments.lengths:
        qs, ks, vs = (x[start : start + n].transpose(0, 1) for x in (q, k, v))  # [H, n, D]
        outs.append(attention(qs, ks, vs).transpose(0, 1))
        start += n
    return torch.cat(outs, dim=0)


def segment_attention_reference(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor
) -> torch.Tensor:
    """Dense version: full N x N scores, a boolean block-diagonal mask, softmax in float32. [N, H, D]."""
    N, H, D = q.shape
    seg = torch.repeat_interleave(torch.arange(len(cu_seqlens) - 1), (cu_seqlens[1:] - cu_seqlens[:-1]).cpu())
    seg = seg.to(q.device)
    allowed = seg[:, None] == seg[None, :]  # [N, N]
    scores = torch.einsum("qhd,khd->hqk", q.float(), k.float()) / D**0.5
    scores = scores.masked_fill(~allowed, float("-inf"))
    probs = scores.softmax(dim=-1)
    return torch.einsum("hqk,khd->qhd", probs, v.float()).to(q.dtype)
