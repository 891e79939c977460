"""The low-precision matmul policy (ops.precision): which dtype products of bf16/fp16 weights compute in."""

import pytest
import torch
import torch.nn.functional as F

from zamba2vl.ops import precision
from zamba2vl.ops.precision import compute_dtype, cpu_has_native_gemm, linear, linear_module, matmul_dtype

NATIVE_BF16 = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def test_detection_is_onednns_and_cached():
    assert cpu_has_native_gemm(torch.bfloat16) == NATIVE_BF16
    assert cpu_has_native_gemm(torch.float32)  # fp32 GEMMs are always native
    before = cpu_has_native_gemm.cache_info().hits
    cpu_has_native_gemm(torch.bfloat16)
    assert cpu_has_native_gemm.cache_info().hits == before + 1


def test_this_machine():
    # On the AVX2-only development VM (no AVX512-BF16/AMX) bf16 products run in fp32; elsewhere in bf16.
    assert matmul_dtype(torch.bfloat16) == (torch.bfloat16 if NATIVE_BF16 else torch.float32)
    assert compute_dtype(torch.zeros(2, 2, dtype=torch.bfloat16)) == matmul_dtype(torch.bfloat16)
    assert matmul_dtype(torch.float32) == torch.float32


@pytest.mark.parametrize("native", [False, True])
def test_policy_rules(native, monkeypatch):
    monkeypatch.setattr(precision, "cpu_has_native_gemm", lambda dtype: native)
    low = torch.bfloat16 if native else torch.float32
    assert matmul_dtype(torch.bfloat16, "cpu") == low
    assert matmul_dtype(torch.float16, torch.device("cpu")) == (torch.float16 if native else torch.float32)
    assert matmul_dtype(torch.float32, "cpu") == torch.float32
    assert matmul_dtype(torch.float64, "cpu") == torch.float64
    # Off the CPU the dtype is always its own (no device is needed to ask).
    assert matmul_dtype(torch.bfloat16, "cuda") == torch.bfloat16
    assert matmul_dtype(torch.float16, torch.device("cuda", 0)) == torch.float16
    monkeypatch.setattr(precision, "FORCE_NATIVE_LOW_PRECISION", True)
    assert matmul_dtype(torch.bfloat16, "cpu") == torch.bfloat16


def test_linear_helpers(monkeypatch):
    g = torch.Generator().manual_seed(4)
    layer = torch.nn.Linear(64, 48)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(48, 64, generator=g))
        layer.bias.copy_(torch.randn(48, generator=g))
    x = torch.randn(37, 64, generator=g)
    # fp32: exactly nn.Linear.
    assert torch.equal(linear(x, layer.weight, layer.bias), layer(x))
    assert torch.equal(linear_module(x, layer), layer(x))
    layer = layer.bfloat16()
    xb = x.bfloat16()
    exact = F.linear(xb.float(), layer.weight.float(), layer.bias.float())
    # Upcasting bf16 values is exact: the same products as an fp32 GEMM on those values.
    assert torch.equal(linear(xb.float(), layer.weight, layer.bias), exact)
    monkeypatch.setattr(precision, "cpu_has_native_gemm", lambda dtype: False)
    out = linear_module(xb, layer)
    assert out.dtype == torch.bfloat16 and torch.equal(out, exact.bfloat16())  # rounded once, as a native GEMM
    monkeypatch.setattr(precision, "cpu_has_native_gemm", lambda dtype: True)
    native = linear_module(xb, layer)  # the plain bf16 F.linear
    assert native.dtype == torch.bfloat16
    assert ((native.float() - exact).abs() <= exact.abs() * 2**-7 + 1e-2).all()


def test_vision_linear_reexports_the_policy():
    from zamba2vl.vision import linear as vision_linear

    assert vision_linear.compute_dtype is compute_dtype and vision_linear.linear is linear


def test_few_rows_use_the_weights_own_dtype(monkeypatch):
    # Decode: a product of <= DECODE_ROWS rows with bf16 weights runs as a bf16 product (the weight read once,
    # not upcast to a fp32 copy on every step); more rows upcast the weight and compute in fp32.
    import torch.nn.functional as F

    from zamba2vl.ops import precision

    seen = []
    real = F.linear
    monkeypatch.setattr(precision.F, "linear", lambda x, w, b=None: seen.append((x.dtype, w.dtype)) or real(x, w, b))
    g = torch.Generator().manual_seed(0)
    w = torch.randn(64, 32, generator=g).to(torch.bfloat16)
    bias = torch.randn(64, generator=g).to(torch.bfloat16)
    exact = lambda x: x.double() @ w.double().T + bias.double()  # noqa: E731
    for rows, want in ((1, torch.bfloat16), (precision.DECODE_ROWS, torch.bfloat16),
                       (precision.DECODE_ROWS + 1, torch.float32)):
        seen.clear()
        x = torch.randn(1, rows, 32, generator=g)
        y = precision.linear(x, w, bias)
        assert y.dtype == torch.float32 and seen == [(want, want)]
        err = ((y.double() - exact(x)).norm() / exact(x).norm()).item()
        assert err < (2e-2 if want == torch.bfloat16 else 1e-6), (rows, err)
