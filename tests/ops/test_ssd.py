"""The chunked SSD scan and the decode step against the sequential recurrence."""

import pytest
import torch
import torch.nn.functional as F

from zamba2vl.ops.ssd import ssd_chunked, ssd_sequential, ssd_step


def make_inputs(b, L, h, p, g, n, seed, with_state):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(b, L, h, p, generator=gen)
    dt = F.softplus(torch.randn(b, L, h, generator=gen) - 2.0)
    A = -torch.exp(torch.rand(h, generator=gen) * 2 - 1.5)  # slow and fast decays
    B = torch.randn(b, L, g, n, generator=gen)
    C = torch.randn(b, L, g, n, generator=gen)
    D = torch.randn(h, generator=gen)
    s0 = torch.randn(b, h, p, n, generator=gen) if with_state else None
    return x, dt, A, B, C, D, s0


def rel_err(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("chunk", [1, 2, 5, 16, 37, 64, 128, 256])
@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("with_state", [False, True])
def test_chunked_equals_sequential(chunk, groups, with_state):
    L = 203  # not a multiple of any chunk size above except 1
    x, dt, A, B, C, D, s0 = make_inputs(2, L, 4, 8, groups, 16, seed=chunk * 10 + groups, with_state=with_state)
    y_ref, s_ref = ssd_sequential(x, dt, A, B, C, D, s0)
    y, s = ssd_chunked(x, dt, A, B, C, D, s0, chunk_size=chunk)
    assert rel_err(y, y_ref) <= 1e-5
    assert rel_err(s, s_ref) <= 1e-5


def test_chunked_in_pieces_equals_whole():
    x, dt, A, B, C, D, _ = make_inputs(1, 300, 4, 8, 2, 16, seed=3, with_state=False)
    y_all, s_all = ssd_chunked(x, dt, A, B, C, D, chunk_size=64)
    cuts = [0, 77, 190, 300]
    ys, s = [], None
    for a, b in zip(cuts, cuts[1:]):
        y, s = ssd_chunked(x[:, a:b], dt[:, a:b], A, B[:, a:b], C[:, a:b], D, s, chunk_size=64)
        ys.append(y)
    assert rel_err(torch.cat(ys, 1), y_all) <= 1e-5
    assert rel_err(s, s_all) <= 1e-5


def test_step_continues_the_scan():
    x, dt, A, B, C, D, s0 = make_inputs(2, 40, 4, 8, 2, 16, seed=4, with_state=True)
    y_ref, s_ref = ssd_sequential(x, dt, A, B, C, D, s0)
    _, s = ssd_chunked(x[:, :30], dt[:, :30], A, B[:, :30], C[:, :30], D, s0, chunk_size=16)
    for t in range(30, 40):
        y = ssd_step(s, x[:, t], dt[:, t], A, B[:, t], C[:, t], D)
        assert rel_err(y, y_ref[:, t]) <= 1e-5
    assert rel_err(s, s_ref) <= 1e-5


def test_bf16_scan_is_close_to_fp32_reference():
    x, dt, A, B, C, D, s0 = make_inputs(1, 256, 4, 16, 1, 32, seed=5, with_state=True)
    y_ref, s_ref = ssd_sequential(x, dt, A, B, C, D, s0)
    y, s = ssd_chunked(x.bfloat16(), dt, A, B.bfloat16(), C.bfloat16(), D, s0, chunk_size=64)
    assert y.dtype == torch.bfloat16 and s.dtype == torch.float32
    # bf16 keeps 8 bits of mantissa: inputs are rounded to ~4e-3 relative; the state is carried in fp32.
    assert rel_err(y.float(), y_ref) <= 2e-2
    assert rel_err(s, s_ref) <= 2e-2


@pytest.mark.parametrize("x_dtype", [torch.float32, torch.bfloat16])
def test_bf16_compute_dtype_is_close_to_fp32_reference(x_dtype):
    # Products forced to bf16 (what a CPU with native bf16 GEMMs, or a GPU, runs for a bf16 model); decays, dt and
    # the carried state stay fp32. 300 tokens: two tiles of 16 chunks of 16, the second partial.
    x, dt, A, B, C, D, s0 = make_inputs(1, 300, 4, 16, 1, 32, seed=5, with_state=True)
    y_ref, s_ref = ssd_sequential(x, dt, A, B, C, D, s0)
    y, s = ssd_chunked(x.to(x_dtype), dt, A, B.to(x_dtype), C.to(x_dtype), D, s0, chunk_size=16,
                       compute_dtype=torch.bfloat16)
    assert y.dtype == x_dtype and s.dtype == torch.float32
    # bf16 operands carry 8 significant bits (relative rounding <= 2^-9 ~ 2e-3); measured ~4.5e-3 for y.
    assert rel_err(y.float(), y_ref) <= 1e-2
    assert rel_err(s, s_ref) <= 1e-2
    assert (y.float() - y_ref).abs().max().item() <= 3e-2 * y_ref.abs().max().item()  # measured ~9e-3


def _grads(fn, inputs, **kw):
    leaves = [None if t is None else t.clone().requires_grad_(True) for t in inputs]
    y, s = fn(*leaves, **kw)
    gen = torch.Generator().manual_seed(1)
    gy, gs = torch.randn(y.shape, generator=gen), torch.randn(s.shape, generator=gen)
    ((y * gy).sum() + (s * gs).sum()).backward()
    return y, s, [None if t is None else t.grad for t in leaves]


@pytest.mark.parametrize("chunk, L, groups, with_state", [(16, 75, 1, True), (8, 40, 2, False), (5, 203, 2, True)])
def test_chunked_gradients_equal_sequential(chunk, L, groups, with_state):
    """Autograd through ssd_chunked (its out-of-place path) against autograd through the sequential loop."""
    inputs = make_inputs(2, L, 4, 8, groups, 16, seed=11 + L, with_state=with_state)
    dt = inputs[1].clone()
    dt[:, :5] = 0.0  # padded tokens have dt = 0: the gradient must stay finite and exact there too
    inputs = (inputs[0], dt, *inputs[2:])
    y, s, grads = _grads(ssd_chunked, inputs, chunk_size=chunk)
    y_ref, s_ref, grads_ref = _grads(ssd_sequential, inputs)
    assert rel_err(y, y_ref) <= 1e-5 and rel_err(s, s_ref) <= 1e-5
    for name, g, g_ref in zip("x dt A B C D initial_state".split(), grads, grads_ref):
        if g_ref is None:
            assert not with_state and name == "initial_state"
            continue
        assert torch.isfinite(g).all(), name
        assert rel_err(g, g_ref) <= 1e-4, name  # measured <= 6e-7


def _count_factored(monkeypatch):
    from zamba2vl.ops import ssd

    calls = []
    real = ssd._ssd_tile_factored
    monkeypatch.setattr(ssd, "_ssd_tile_factored", lambda *a: calls.append(1) or real(*a))
    return calls


@pytest.mark.parametrize("chunk, groups, with_state", [(16, 1, True), (37, 2, False), (64, 2, True), (64, 4, True)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_factored_tile_and_the_decay_matrix_tile_both_equal_sequential(monkeypatch, chunk, groups, with_state, dtype):
    # Without autograd a tile takes the factored path when its chunks' decay range allows it, else the [Q x Q]
    # decay-matrix path; both must give the recurrence. 531 tokens = 2 tiles of 16 chunks of 16 (+ a partial tile).
    from zamba2vl.ops import ssd

    x, dt, A, B, C, D, s0 = make_inputs(2, 531, 8, 8, groups, 16, seed=chunk + groups, with_state=with_state)
    y_ref, s_ref = ssd_sequential(x, dt, A, B, C, D, s0)
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    calls = _count_factored(monkeypatch)
    results = {}
    for name, limit in (("factored", ssd.FACTORED_RANGE), ("matrix", -1.0)):
        monkeypatch.setattr(ssd, "FACTORED_RANGE", limit)
        n_before = len(calls)
        y, s = ssd_chunked(x.to(dtype), dt, A, B.to(dtype), C.to(dtype), D, s0, chunk_size=chunk,
                           compute_dtype=dtype)
        assert (len(calls) > n_before) == (name == "factored")
        assert y.dtype == dtype and s.dtype == torch.float32
        assert rel_err(y.float(), y_ref) <= tol, name
        assert rel_err(s, s_ref) <= tol, name
        results[name] = y.float()
    assert rel_err(results["factored"], results["matrix"]) <= tol


def test_strong_decay_falls_back_to_the_decay_matrix_and_stays_exact(monkeypatch):
    # dt * |A| ~ 3 a token: a 64-token chunk spans ~190 in the exponent, past what two fp32 factors can hold.
    x, dt, A, B, C, D, s0 = make_inputs(1, 200, 4, 8, 1, 16, seed=9, with_state=True)
    dt = dt + 3.0
    calls = _count_factored(monkeypatch)
    y_ref, s_ref = ssd_sequential(x, dt, A, B, C, D, s0)
    y, s = ssd_chunked(x, dt, A, B, C, D, s0, chunk_size=64)
    assert not calls
    assert torch.isfinite(y).all() and rel_err(y, y_ref) <= 1e-5 and rel_err(s, s_ref) <= 1e-5
    # chunks of 8 tokens span ~25: factored, and exact as well
    y, s = ssd_chunked(x, dt, A, B, C, D, s0, chunk_size=8)
    assert calls and rel_err(y, y_ref) <= 1e-5 and rel_err(s, s_ref) <= 1e-5
