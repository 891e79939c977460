"""Decode products through weights prepacked for oneDNN (CPUs with native bf16 GEMMs).

A decode step multiplies one row per sequence by every weight matrix of the model, so its time is the time to read
the weights. torch's plain ``F.linear`` for a bf16 row reads them at ~18 GB/s on a 2-core AVX512-BF16 EPYC (torch
2.13), about a third of the machine's read bandwidth (~65 GB/s); oneDNN's linear on a weight reordered once into
its blocked layout reads them at ~34 GB/s (measured on 16 [8512 x 2048] matrices, 560 MB, 2 threads). The reorder
is a second copy of each weight, so it is opt-in per model: ``pack_for_decode(model)`` packs every bf16
``nn.Linear`` weight that is at least ``MIN_ELEMENTS`` large (and the LM head's), ``unpack(model)`` drops the
copies. Products with at most ``precision.DECODE_ROWS`` rows then use the packed copy; anything larger (prompts,
training) keeps ``F.linear`` on the original weight, which stays the only copy that is ever updated.

A packed copy is tied to its weight's storage and version counter: if the weight is changed in place or replaced,
the copy is no longer used. Where the build or the CPU lacks the oneDNN ops (or the bf16 path is not native),
``pack_for_decode`` packs nothing and returns 0.
"""

from __future__ import annotations

import weakref

import torch
import torch.nn.functional as F
from torch import nn

# Weights smaller than this stay unpacked (LoRA factors, norms): the packed call's fixed cost would outweigh it.
MIN_ELEMENTS = 1 << 16

# id(weight) -> (weak reference to the weight, its version when packed, its data pointer, the packed copy)
_PACKED: dict[int, tuple[weakref.ref, int, int, torch.Tensor]] = {}


def available(dtype: torch.dtype = torch.bfloat16) -> bool:
    """Whether packed decode products can run here: oneDNN's ops are in this torch and ``dtype`` is native."""
    from zamba2vl.ops.precision import cpu_has_native_gemm

    ops = getattr(torch.ops, "mkldnn", None)
    return (dtype == torch.bfloat16 and cpu_has_native_gemm(dtype) and ops is not None
            and hasattr(ops, "_reorder_linear_weight") and hasattr(ops, "_linear_pointwise"))


def _weights(model: nn.Module):
    """Every nn.Linear weight of ``model`` and its LM head's (the tied embedding's, for tied models), once each."""
    seen = set()
    for module in model.modules():
        candidates = [module.weight] if isinstance(module, nn.Linear) else []
        if isinstance(getattr(type(module), "output_weight", None), property):
            candidates.append(module.output_weight)
        for w in candidates:
            if id(w) not in seen:
                seen.add(id(w))
                yield w


def pack_for_decode(model: nn.Module) -> int:
    """Pack every large bf16 CPU linear weight of ``model`` (and its LM head) for decode; returns the bytes added."""
    if not available():
        return 0
    added = 0
    for w in _weights(model):
        if w.dtype != torch.bfloat16 or w.device.type != "cpu" or w.dim() != 2 or w.numel() < MIN_ELEMENTS:
            continue
        if lookup(w) is not None:
            continue
        packed = torch.ops.mkldnn._reorder_linear_weight(w.detach(), 1)
        ref = weakref.ref(w)
        _PACKED[id(w)] = (ref, w._version, w.data_ptr(), packed)
        weakref.finalize(w, _forget, id(w), ref)  # a dropped model's copies go with it (holds no copy itself)
        added += w.numel() * w.element_size()
    return added


def _forget(key: int, ref: weakref.ref) -> None:
    entry = _PACKED.get(key)
    if entry is not None and entry[0] is ref:
        del _PACKED[key]


def unpack(model: nn.Module) -> None:
    """Drop the packed copies of ``model``'s weights."""
    for w in _weights(model):
        _PACKED.pop(id(w), None)


def lookup(weight: torch.Tensor) -> torch.Tensor | None:
    """The packed copy of ``weight``, if one is registered and still describes it."""
    entry = _PACKED.get(id(weight))
    if entry is None:
        return None
    ref, version, ptr, packed = entry
    if ref() is not weight or weight._version != version or weight.data_ptr() != ptr:
        del _PACKED[id(weight)]
        return None
    return packed


def packed_linear(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``x @ W.T + bias`` with W's packed copy; x in bf16, any leading shape."""
    lead = x.shape[:-1]
    y = torch.ops.mkldnn._linear_pointwise(x.reshape(-1, x.shape[-1]), packed, bias, "none", [], "")
    return y.view(*lead, y.shape[-1])


def decode_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` for a few rows in the weight's dtype, through the packed copy when there is one."""
    packed = lookup(weight) if _PACKED and not (torch.is_grad_enabled() and weight.requires_grad) else None
    if packed is not None and x.dtype == weight.dtype:
        return packed_linear(x, packed, None if bias is None else bias.to(x.dtype))
    return F.linear(x, weight, bias)


__all__ = ["MIN_ELEMENTS", "available", "decode_linear", "lookup", "pack_for_decode", "packed_linear", "unpack"]
