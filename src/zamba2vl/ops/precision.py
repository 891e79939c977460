"""Which dtype matrix products of a low-precision model compute in: the one precision policy of the package.

On a CPU without native bf16/fp16 GEMMs (no AVX512-BF16/AMX, e.g. an AVX2 EPYC) torch runs a bf16 ``F.linear``,
``matmul`` or ``scaled_dot_product_attention`` through a generic kernel 7-10x slower than fp32 there
([4096 x 1280] @ [1280 x 3420]: 2.4 s in bf16 against 0.31 s in fp32 on 2 cores, torch 2.13). A native bf16 GEMM
reads bf16 operands, accumulates in fp32 and rounds the result to bf16; upcasting bf16 (or fp16) values to fp32 is
exact, so the fp32 kernel computes the same products at fp32 speed.

So a sublayer whose weights are in dtype X asks ``compute_dtype(weight)`` (or ``matmul_dtype(X, device)``) once,
converts its input to that dtype, runs its products in it (weights are upcast per call: nothing extra is stored)
and casts its output back to the model dtype. The answer is:

- fp32 (and any dtype other than bf16/fp16): the dtype itself, so fp32 models compute exactly as before;
- any non-CPU device (CUDA...): the dtype itself;
- bf16/fp16 on a CPU with native GEMMs for it (AVX512-BF16/AMX; oneDNN's check, cached): the dtype itself;
- bf16/fp16 on other CPUs: float32.

Where the hardware has a native path the computation is exactly the plain low-precision one.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from zamba2vl.ops.packed import decode_linear

LOW_PRECISION = (torch.bfloat16, torch.float16)

# Products with at most this many input rows (decode steps of small batches) run in the weights' own dtype.
DECODE_ROWS = 8

# Benchmarks set this to measure the plain (emulated) bf16 path on a CPU that lacks native bf16 GEMMs.
FORCE_NATIVE_LOW_PRECISION = False


@functools.cache
def cpu_has_native_gemm(dtype: torch.dtype) -> bool:
    """Whether this CPU has native GEMMs for ``dtype`` (bf16: AVX512-BF16/AMX; fp16: AVX512-FP16/AMX-FP16)."""
    if dtype not in LOW_PRECISION:
        return True
    try:
        if dtype == torch.bfloat16:
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        return bool(torch.ops.mkldnn._is_mkldnn_fp16_supported())
    except (AttributeError, RuntimeError):  # pragma: no cover - torch builds without oneDNN
        return False


def matmul_dtype(dtype: torch.dtype, device: torch.device | str = "cpu") -> torch.dtype:
    """The dtype matrix products of ``dtype`` operands should run in on ``device`` (see the module docstring)."""
    if (
        dtype in LOW_PRECISION
        and torch.device(device).type == "cpu"
        and not FORCE_NATIVE_LOW_PRECISION
        and not cpu_has_native_gemm(dtype)
    ):
        return torch.float32
    return dtype


def compute_dtype(weight: torch.Tensor) -> torch.dtype:
    """The dtype a sublayer with this weight computes in: the weight's own, or fp32."""
    return matmul_dtype(weight.dtype, weight.device)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ weight.T + bias`` in x's dtype, the weights converted to it when they differ.

    The conversion happens on every call: a cached fp32 copy would double the memory of a bf16 model, and the
    upcast is one memory-bound pass over the weight, small next to the product on any prompt of more than a few
    tokens. Where the dtypes agree (fp32, or native low precision) this is exactly ``F.linear(x, weight, bias)``,
    except that products of at most ``DECODE_ROWS`` rows use the weight's oneDNN-packed copy when
    ``ops.packed.pack_for_decode`` made one (the same bf16 products, summed in another order).
    """
    few_rows = x.numel() <= DECODE_ROWS * x.shape[-1]
    if weight.dtype != x.dtype and weight.dtype in LOW_PRECISION and few_rows:
        # A few rows (decode): the product is memory-bound, and upcasting the whole weight would read it and
        # write twice its size in fp32 on every step (measured: 36x the memory-traffic floor at the 1.2B shape).
        # The low-precision kernel reads the weight once, so use it, with the input rounded to the weight's dtype.
        b = None if bias is None else bias.to(weight.dtype)
        return decode_linear(x.to(weight.dtype), weight, b).to(x.dtype)
    if weight.dtype == x.dtype and few_rows:
        return decode_linear(x, weight, bias)
    return F.linear(x, weight.to(x.dtype), None if bias is None else bias.to(x.dtype))


def linear_module(x: torch.Tensor, layer: torch.nn.Linear) -> torch.Tensor:
    """``layer(x)`` computed in ``compute_dtype(layer.weight)``, returned in x's dtype.

    For a lone product: the result is rounded back to x's dtype as a native bf16 GEMM would round it.
    """
    cdt = compute_dtype(layer.weight)
    if cdt == layer.weight.dtype:
        return linear(x, layer.weight, layer.bias) if x.dtype == cdt else layer(x)
    return linear(x.to(cdt), layer.weight, layer.bias).to(x.dtype)


__all__ = [
    "DECODE_ROWS", "FORCE_NATIVE_LOW_PRECISION", "LOW_PRECISION", "compute_dtype", "cpu_has_native_gemm", "linear", "linear_module",
    "matmul_dtype",
]
