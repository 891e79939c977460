"""Matrix products of a bf16/fp16 model on CPUs without native low-precision matmul.

On a CPU without AVX512-BF16/AMX (e.g. an AVX2 EPYC), torch runs a bf16 ``F.linear`` through a generic
kernel: [4096 x 1280] @ [1280 x 3420] takes 2.4 s in bf16 against 0.31 s in fp32 on 2 cores (torch 2.13),
which makes a bf16 tower about 8x slower than an fp32 one. A native bf16 GEMM reads bf16 inputs,
accumulates in fp32 and rounds the result to bf16; upcasting bf16 inputs to fp32 is exact, so the fp32
kernel computes the same products at fp32 speed.

So each sublayer (attention, MLP, merger) asks ``compute_dtype(weight)`` once, converts its input to it,
runs in that dtype (weights are upcast per call, nothing extra is stored) and casts its output back to the
model dtype. Where the hardware has a native path (GPUs, AVX512-BF16/AMX CPUs) ``compute_dtype`` is the
weight's own dtype and everything is exactly the reference's bf16 computation.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

_LOW = (torch.bfloat16, torch.float16)

# Benchmarks set this to measure the plain bf16 path on a CPU that lacks native bf16 GEMMs.
FORCE_NATIVE_LOW_PRECISION = False


@functools.cache
def _cpu_has_native(dtype: torch.dtype) -> bool:
    try:
        if dtype == torch.bfloat16:
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        return bool(torch.ops.mkldnn._is_mkldnn_fp16_supported())
    except (AttributeError, RuntimeError):  # pragma: no cover - torch builds without mkldnn
        return False


def compute_dtype(weight: torch.Tensor) -> torch.dtype:
    """The dtype a sublayer with this weight computes in: the weight's own, or fp32 (see module docstring)."""
    if (
        weight.dtype in _LOW
        and weight.device.type == "cpu"
        and not FORCE_NATIVE_LOW_PRECISION
        and not _cpu_has_native(weight.dtype)
    ):
        return torch.float32
    return weight.dtype


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ weight.T + bias`` in x's dtype (weights converted to it when they differ)."""
    return F.linear(x, weight.to(x.dtype), None if bias is None else bias.to(x.dtype))
