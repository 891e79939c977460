"""The Mamba2 selective state-space scan (SSD), as pure functions.

Recurrence, per batch row, head h, channel p and state n (state S starts at ``initial_state`` or 0):

    S_t = exp(dt_t * A) * S_{t-1} + dt_t * x_t (outer) B_t
    y_t = S_t . C_t + D * x_t

Shapes used throughout:
    x  [b, L, h, p]    dt [b, L, h] (already softplus'ed)    A [h] (negative)    D [h]
    B, C [b, L, g, n]  with head i reading group i // (h // g)
    state [b, h, p, n] (float32)

``ssd_sequential`` is the obviously-correct loop (the test oracle). ``ssd_chunked`` computes the same thing as
batched matrix products over chunks of ``chunk_size`` tokens (the "SSD minimal" formulation) with the
inter-chunk state carried by an explicit recurrence over chunks, so its result does not depend on the chunk size
(the reference's torch fallback gets this step wrong, spec 9.1). ``ssd_step`` is one decode step.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _heads_per_group(h: int, g: int) -> int:
    assert h % g == 0, (h, g)
    return h // g


def ssd_sequential(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    initial_state: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token-by-token recurrence in float32. Returns (y [b, L, h, p] float32, final state [b, h, p, n])."""
    b, L, h, p = x.shape
    g, n = B.shape[2], B.shape[3]
    r = _heads_per_group(h, g)
    x, dt, A = x.float(), dt.float(), A.float()
    Bh = B.float().repeat_interleave(r, dim=2)  # [b, L, h, n]
    Ch = C.float().repeat_interleave(r, dim=2)
    S = torch.zeros(b, h, p, n) if initial_state is None else initial_state.float().clone()
    S = S.to(x.device)
    ys = []
    for t in range(L):
        decay = torch.exp(dt[:, t] * A)  # [b, h]
        S = decay[:, :, None, None] * S + (dt[:, t, :, None] * x[:, t])[..., None] * Bh[:, t, :, None, :]
        y = torch.einsum("bhpn,bhn->bhp", S, Ch[:, t])
        if D is not None:
            y = y + D.float()[:, None] * x[:, t]
        ys.append(y)
    y = torch.stack(ys, dim=1) if ys else x.new_zeros(b, 0, h, p)
    return y, S


def _segment_sums(dA: torch.Tensor) -> torch.Tensor:
    """seg[..., i, j] = sum_{k=j+1..i} dA[..., k] for i >= j, and -inf above the diagonal.

    Built as a cumulative sum of a masked copy rather than a difference of two cumsums, so that long chunks with
    strong decay do not lose precision to cancellation.
    """
    Q = dA.shape[-1]
    strict = torch.ones(Q, Q, dtype=torch.bool, device=dA.device).tril(-1)
    z = dA[..., None, :].expand(*dA.shape, Q).transpose(-1, -2)  # z[..., i, j] = dA[i]
    z = z.masked_fill(~strict, 0.0)
    seg = torch.cumsum(z, dim=-2)
    lower = torch.ones(Q, Q, dtype=torch.bool, device=dA.device).tril()
    return seg.masked_fill(~lower, float("-inf"))


def ssd_chunked(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    initial_state: torch.Tensor | None = None,
    chunk_size: int = 64,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Chunked SSD scan as batched matmuls.

    The large products run in ``x.dtype`` (bf16 on CPU uses AMX; matmuls accumulate in fp32); decays, dt and the
    carried state stay in float32. Returns (y [b, L, h, p] in x.dtype, final state [b, h, p, n] float32).
    """
    b, L, h, p = x.shape
    g, n = B.shape[2], B.shape[3]
    r = _heads_per_group(h, g)
    Q = max(1, min(chunk_size, L)) if L > 0 else 1
    cdt = x.dtype
    pad = (-L) % Q
    if pad:
        # Padded steps have dt = 0: no decay and no input, so the final state is unaffected.
        x = F.pad(x, (0, 0, 0, 0, 0, pad))
        dt = F.pad(dt, (0, 0, 0, pad))
        B = F.pad(B, (0, 0, 0, 0, 0, pad))
        C = F.pad(C, (0, 0, 0, 0, 0, pad))
    c = (L + pad) // Q

    dt = dt.float()
    dA = (dt * A.float()).view(b, c, Q, h).permute(0, 1, 3, 2)  # [b, c, h, Q]
    Acum = torch.cumsum(dA, dim=-1)  # [b, c, h, Q]
    dt_c = dt.view(b, c, Q, h).permute(0, 1, 3, 2)  # [b, c, h, Q]

    xc = x.view(b, c, Q, g, r, p).permute(0, 1, 3, 4, 2, 5)  # [b, c, g, r, Q, p]
    Bc = B.view(b, c, Q, g, n).permute(0, 1, 3, 2, 4).to(cdt)  # [b, c, g, Q, n]
    Cc = C.view(b, c, Q, g, n).permute(0, 1, 3, 2, 4).to(cdt)  # [b, c, g, Q, n]

    # 1. Within each chunk: y_i += sum_{j<=i} (C_i . B_j) exp(A_i..j) dt_j x_j
    CB = torch.matmul(Cc, Bc.transpose(-1, -2))  # [b, c, g, Q, Q]
    decay = torch.exp(_segment_sums(dA))  # [b, c, h, Q, Q]
    M = decay.view(b, c, g, r, Q, Q) * dt_c.view(b, c, g, r, 1, Q)
    M = (M * CB.float()[:, :, :, None]).to(cdt)
    y = torch.matmul(M, xc)  # [b, c, g, r, Q, p]
    del M, decay, CB

    # 2. State each chunk adds by its end: sum_j exp(A_end..j) dt_j x_j (outer) B_j
    w = (torch.exp(Acum[..., -1:] - Acum) * dt_c).view(b, c, g, r, Q, 1)
    xw = (xc.float() * w).to(cdt)  # [b, c, g, r, Q, p]
    chunk_states = torch.matmul(xw.transpose(-1, -2), Bc[:, :, :, None])  # [b, c, g, r, p, n]
    chunk_states = chunk_states.float().view(b, c, h, p, n)
    del xw

    # 3. Carry the state across chunks (the recurrence the reference's fallback gets wrong).
    chunk_decay = torch.exp(Acum[..., -1])  # [b, c, h]
    S = x.new_zeros(b, h, p, n, dtype=torch.float32) if initial_state is None else initial_state.float()
    states_in = torch.empty(b, c, h, p, n, dtype=torch.float32, device=x.device)
    for k in range(c):
        states_in[:, k] = S
        S = chunk_decay[:, k, :, None, None] * S + chunk_states[:, k]
    del chunk_states

    # 4. Contribution of the carried state: y_i += exp(A_i..start) C_i . S_in
    y_off = torch.matmul(Cc[:, :, :, None], states_in.view(b, c, g, r, p, n).transpose(-1, -2).to(cdt))
    y_off = y_off.float() * torch.exp(Acum).view(b, c, g, r, Q, 1)
    y = y.float() + y_off  # [b, c, g, r, Q, p]
    y = y.permute(0, 1, 4, 2, 3, 5).reshape(b, c * Q, h, p)[:, :L]
    if D is not None:
        y = y + D.float()[:, None] * x[:, :L].float()
    return y.to(cdt), S


def ssd_step(
    state: torch.Tensor,
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
) -> torch.Tensor:
    """One token: x [b, h, p], dt [b, h], B/C [b, g, n]. Updates ``state`` [b, h, p, n] in place; returns y [b, h, p]."""
    b, h, p = x.shape
    g = B.shape[1]
    r = _heads_per_group(h, g)
    dt = dt.float()
    decay = torch.exp(dt * A.float())  # [b, h]
    Bh = B.float().repeat_interleave(r, dim=1) if r > 1 else B.float()  # [b, h, n]
    Ch = C.float().repeat_interleave(r, dim=1) if r > 1 else C.float()
    xf = x.float()
    state.mul_(decay[:, :, None, None]).add_((dt[:, :, None] * xf)[..., None] * Bh[:, :, None, :])
    y = torch.matmul(state, Ch[..., None]).squeeze(-1)  # [b, h, p]
    if D is not None:
        y = y + D.float()[:, None] * xf
    return y.to(x.dtype)
