"""The Mamba2 selective state-space scan (SSD), as pure functions.

Recurrence, per batch row, head h, channel p and state n (state S starts at ``initial_state`` or 0):

    S_t = exp(dt_t * A) * S_{t-1} + dt_t * x_t (outer) B_t
    y_t = S_t . C_t + D * x_t

Shapes used throughout:
    x  [b, L, h, p]    dt [b, L, h] (already softplus'ed)    A [h] (negative)    D [h]
    B, C [b, L, g, n]  with head i reading group i // (h // g)
    state [b, h, p, n] (float32)

``resets`` [b, L] (bool, optional) marks tokens that start a new sequence: the state is zeroed before such a token
is added (its decay is 0), so several sequences packed into one row run as if each were alone (training packs short
samples this way).

``ssd_sequential`` is the obviously-correct loop (the test oracle). ``ssd_chunked`` computes the same thing as
batched matrix products over chunks of ``chunk_size`` tokens (the "SSD minimal" formulation), tile by tile: within
a tile the state entering each chunk comes from one exact [chunks x chunks] decay product, and each tile starts
from the previous tile's final state, so the result does not depend on the chunk or tile size (the reference's
torch fallback gets the chunk-to-chunk step wrong, spec 9.1). ``ssd_step`` is one decode step.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from zamba2vl.ops.precision import matmul_dtype


def segment_starts(segments: torch.Tensor) -> torch.Tensor:
    """[b, L] bool: where a token's segment id differs from the token before (and every row's first token): the
    ``resets`` of packed sequences whose ids are ``segments`` [b, L]."""
    return F.pad(segments[:, 1:] != segments[:, :-1], (1, 0), value=True)


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
    resets: torch.Tensor | None = None,
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
        if resets is not None:
            decay = decay * (~resets[:, t].bool()).float()[:, None]
        S = decay[:, :, None, None] * S + (dt[:, t, :, None] * x[:, t])[..., None] * Bh[:, t, :, None, :]
        y = torch.einsum("bhpn,bhn->bhp", S, Ch[:, t])
        if D is not None:
            y = y + D.float()[:, None] * x[:, t]
        ys.append(y)
    y = torch.stack(ys, dim=1) if ys else x.new_zeros(b, 0, h, p)
    return y, S


# Chunks per tile of ``ssd_chunked``. A tile's chunk-to-chunk recurrence is one [c x c] matrix product, so its cost
# grows with the tile length, while the work outside the products is a fixed number of tensor ops per tile. Tiles of
# about a thousand tokens also keep each temporary at a few MB, which the allocator reuses from tile to tile instead
# of mapping (and page-faulting) fresh memory: on the 2-core VMs we measure on, that alone costs more than the math.
TILE_CHUNKS = 16


def ssd_chunked(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    initial_state: torch.Tensor | None = None,
    chunk_size: int = 64,
    compute_dtype: torch.dtype | None = None,
    resets: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Chunked SSD scan as batched matmuls ("SSD minimal"), tile by tile.

    The sequence is cut into tiles of ``TILE_CHUNKS`` chunks of ``chunk_size`` tokens; each tile continues the
    state of the previous one, so the result does not depend on either size. The large products run in
    ``compute_dtype`` (default ``matmul_dtype(x.dtype)`` of ops.precision: bf16 on CPUs with AMX/AVX512-BF16,
    where matmuls accumulate in fp32; else fp32); decays, dt and the carried state stay in float32.
    Returns (y [b, L, h, p] in x.dtype, final state [b, h, p, n] float32).
    """
    b, L, h, p = x.shape
    g, n = B.shape[2], B.shape[3]
    _heads_per_group(h, g)
    cdt = compute_dtype or matmul_dtype(x.dtype, x.device)
    # Without autograd, temporaries are updated in place and tiles write straight into the output.
    grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (x, dt, A, B, C, D, initial_state))
    Q = max(1, min(chunk_size, L))
    S = x.new_zeros(b, h, p, n, dtype=torch.float32) if initial_state is None else initial_state.float()
    y = None if grad else torch.empty_like(x, memory_format=torch.contiguous_format)
    A = A.float()
    Df = D.float()[:, None] if D is not None else None  # [h, 1]
    ys, T = [], Q * TILE_CHUNKS
    for t0 in range(0, L, T):
        t1 = min(L, t0 + T)
        yt, S = _ssd_tile(x[:, t0:t1], dt[:, t0:t1], A, B[:, t0:t1], C[:, t0:t1], Df, S, Q, cdt,
                          None if grad else y[:, t0:t1], None if resets is None else resets[:, t0:t1])
        ys.append(yt)
    if grad:
        y = torch.cat(ys, dim=1) if ys else x.new_zeros(b, 0, h, p)
    return y, S


# Exponents of decays are clamped to +-_EXP_CLAMP before exp: a decay below e^-60 is zero to fp32 precision next to
# any term that matters, and exp results that underflow (or overflow, or are exp(-inf)) take a slow path on x86 CPUs
# (up to 25x slower than normal results), which strongly decaying heads would hit on most of each chunk.
_EXP_CLAMP = 60.0

# A reset (the first token of a packed sequence) adds -_RESET to that token's log decay: every decay across it then
# has an exponent below -_EXP_CLAMP, i.e. is e^-60 ~ 1e-26 (zero next to any fp32 term), with no gradient through
# the clamp, as for an exact zero. The exponents are summed in float64, where the offset costs no precision to the
# decays within a sequence.
_RESET = 1000.0


def _ssd_tile(x, dt, A, B, C, Df, S0, Q, cdt, out, resets=None):
    """One tile of ``ssd_chunked``. Returns (y [b, T, h, p], state after the tile).

    With ``out`` given, y is written into it and intermediates are updated in place (no autograd).
    """
    b, T, h, p = x.shape
    g, n = B.shape[2], B.shape[3]
    r = h // g
    inplace = out is not None
    pad = (-T) % Q
    c = (T + pad) // Q
    dtf = dt.float()
    if pad:
        # Padded steps have dt = 0: no decay and no input, so the final state is unaffected.
        x, dtf = F.pad(x, (0, 0, 0, 0, 0, pad)), F.pad(dtf, (0, 0, 0, pad))
        B, C = F.pad(B, (0, 0, 0, 0, 0, pad)), F.pad(C, (0, 0, 0, 0, 0, pad))
    # Head-major layout, so that every product below is one batched matmul over (b, h, c) without copies.
    xh = torch.empty(b, h, c * Q, p, dtype=cdt, device=x.device)
    xh.copy_(x.transpose(1, 2))  # one pass, casting on the way
    xh = xh.view(b, h, c, Q, p)
    Bc = B.view(b, c, Q, g, n).permute(0, 3, 1, 2, 4).to(cdt)  # [b, g, c, Q, n]
    Cc = C.view(b, c, Q, g, n).permute(0, 3, 1, 2, 4).to(cdt)

    # Within-chunk cumulative decay, summed in float64 and split into fp32 hi + lo parts: hi_q - hi_s is exact for
    # nearby positions, so the decay between them is as accurate as a direct sum over the segment would give it.
    dA = dtf.double() * A.double()  # [b, c*Q, h]
    if resets is not None:
        dA = dA - _RESET * F.pad(resets.double(), (0, pad))[..., None]
    Acum64 = dA.view(b, c, Q, h).permute(0, 3, 1, 2).cumsum(-1)  # [b, h, c, Q]
    if inplace and (Acum64[..., 0] - Acum64[..., -1]).max().item() <= FACTORED_RANGE:
        return _ssd_tile_factored(x, dtf, Acum64, B, C, Df, S0, Q, cdt, out)
    Acum = Acum64.float()
    Alo = (Acum64 - Acum.double()).float()
    dt_s = dtf.view(b, c, Q, h).permute(0, 3, 1, 2)  # [b, h, c, Q]
    # Without autograd dt is folded into the exponents below (one pass fewer). With autograd it stays a factor:
    # through log(dt) its gradient would be 0 * (1/0) = NaN wherever dt = 0 (padding), and the term it scales
    # would get no gradient there at all.
    log_dt = torch.log(dt_s) if inplace else None  # -inf where dt = 0

    # 1. Within each chunk: y_q = sum_{s<=q} (C_q . B_s) exp(Acum_q - Acum_s) dt_s x_s.
    # The causal mask lives in CB (per group, h/g times smaller than M); clamping keeps exp finite above the diagonal.
    CB = torch.matmul(Cc, Bc.transpose(-1, -2)).float().tril()  # [b, g, c, Q, Q]
    M = Acum[..., :, None] - Acum[..., None, :]  # [b, h, c, Q, Q]
    fold_D = Df is not None and cdt == torch.float32  # then D x rides on M's diagonal (exact in fp32)
    if inplace:
        M.add_(Alo[..., :, None]).add_((log_dt - Alo)[..., None, :])
        M.clamp_(-_EXP_CLAMP, _EXP_CLAMP).exp_()
        M.view(b, g, r, c, Q, Q).mul_(CB[:, :, None])
        if fold_D:
            M.diagonal(dim1=-2, dim2=-1).add_(Df.view(1, h, 1, 1))
    else:
        M = M + Alo[..., :, None] - Alo[..., None, :]
        M = M.clamp(-_EXP_CLAMP, _EXP_CLAMP).exp() * dt_s[..., None, :]
        M = (M.view(b, g, r, c, Q, Q) * CB[:, :, None]).view(b, h, c, Q, Q)
        fold_D = False
    yh = torch.matmul(M.to(cdt), xh)  # [b, h, c, Q, p]
    del M, CB

    # 2. State each chunk adds by its end: sum_s exp(Acum_end - Acum_s) dt_s x_s (outer) B_s. States are kept
    # transposed, [n, p], so that step 4 multiplies by them without a transposed copy.
    w = (Acum64[..., -1:] - Acum64).float()  # [b, h, c, Q]
    w = torch.exp(w.add_(log_dt).clamp_(min=-_EXP_CLAMP)) if inplace else torch.exp(w.clamp(min=-_EXP_CLAMP)) * dt_s
    Bw = (Bc[:, :, None] * w.view(b, g, r, c, Q, 1)).to(cdt).reshape(b, h, c, Q, n)
    chunk_states = torch.matmul(Bw.transpose(-1, -2), xh).float()  # [b, h, c, n, p]
    del Bw

    # 3. State entering each chunk: an exclusive scan over chunks, as one [c x c] product (plus the tile's input).
    ld = Acum64[..., -1]  # [b, h, c] log decay of each chunk
    cum = ld.cumsum(-1)
    cumx = cum - ld  # decay from the tile start to each chunk's start
    Tm = torch.exp((cumx[..., :, None] - cum[..., None, :]).clamp(-_EXP_CLAMP, _EXP_CLAMP)).tril(-1).float()
    states = torch.matmul(Tm, chunk_states.view(b, h, c, n * p))  # [b, h, c, n*p]
    decay_in = torch.exp(cumx.clamp(min=-_EXP_CLAMP)).float()[..., None]  # [b, h, c, 1]
    S0f = S0.transpose(-1, -2).reshape(b, h, 1, n * p)
    states = states.addcmul_(decay_in, S0f) if inplace else states.addcmul(decay_in, S0f)
    decay_last = torch.exp(ld[..., -1].clamp(min=-_EXP_CLAMP)).float()[..., None, None]  # [b, h, 1, 1]
    S_out = torch.addcmul(chunk_states[:, :, -1], decay_last, states[:, :, -1].view(b, h, n, p))
    S_out = S_out.transpose(-1, -2).contiguous()  # [b, h, p, n]

    # 4. Contribution of the state entering the chunk: y_q += exp(Acum_q) C_q . S_in
    Cw = (Cc[:, :, None] * torch.exp(Acum.clamp(min=-_EXP_CLAMP)).view(b, g, r, c, Q, 1)).to(cdt)
    yh, Cw = yh.view(b * h * c, Q, p), Cw.reshape(b * h * c, Q, n)
    Sin = states.view(b * h * c, n, p).to(cdt)
    yh = yh.baddbmm_(Cw, Sin) if inplace else yh.baddbmm(Cw, Sin)
    yv = yh.view(b, h, c * Q, p)[:, :, :T].transpose(1, 2)  # [b, T, h, p] (a view)
    x = x[:, :T]
    if not inplace:
        return (yv + Df * x if Df is not None else yv).to(x.dtype), S_out
    if Df is None or fold_D:
        out.copy_(yv)
    else:
        torch.addcmul(yv, x, Df, out=out)  # y + D x, summed in fp32
    return out, S_out


# Largest decay exponent within one chunk (sum of |dt A| over its tokens) for which ``_ssd_tile_factored`` is used:
# its two exponential factors are then within e^(+-FACTORED_RANGE/2) = e^(+-60), far inside fp32 and bf16 range.
FACTORED_RANGE = 120.0


def _ssd_tile_factored(x, dtf, Acum64, B, C, Df, S0, Q, cdt, out):
    """``_ssd_tile`` without autograd, with the within-chunk decay factored out of the [Q x Q] matrix.

    exp(Acum_q - Acum_s) = exp(Acum_q - m) * exp(m - Acum_s), with m the middle of the chunk's exponent range.
    The second factor (and dt) scales the inputs once, x''_s = exp(m - Acum_s) dt_s x_s; the first scales the
    outputs once. Between them stay plain products with matrices that heads of a group share:

        y_q = exp(Acum_q - m) * (sum_{s<=q} (C_q . B_s) x''_s  +  C_q . (exp(m) S_in))     chunk state += B^T x''

    so no [heads x Q x Q] decay matrix is built or exponentiated, and every product is batched over (chunk,
    group) with the heads of the group side by side in its columns ([Q, heads_per_group * p]): for one group this
    is the input's own [tokens, heads, p] layout, read and written without transposes. The states entering the
    chunks follow by the chunk-to-chunk recurrence in fp32. Inputs as ``_ssd_tile`` gets them (x, B, C padded to
    whole chunks, dt as dtf in fp32); ``out`` [b, T, h, p] receives y + D x.
    """
    b, Tp, h, p = x.shape
    g, n = B.shape[2], B.shape[3]
    r, c, T = h // g, Tp // Q, out.shape[1]
    m = 0.5 * (Acum64[..., :1] + Acum64[..., -1:])  # [b, h, c, 1]
    rel = (Acum64 - m).float()  # [b, h, c, Q], within +-FACTORED_RANGE / 2

    def by_token(t):  # [b, h, c, Q] -> broadcastable against [b, c, g, Q, r, p]
        return t.view(b, g, r, c, Q).permute(0, 3, 1, 4, 2)[..., None]

    # Each elementwise pass below has operands of one dtype: mixed ones make torch compute into a temporary of
    # the common dtype and copy it over, a second pass.
    dt_s = dtf.view(b, c, Q, h).permute(0, 3, 1, 2)  # [b, h, c, Q]
    xc = x if x.dtype == cdt else x.to(cdt)
    x2 = torch.empty(b, c, g, Q, r, p, dtype=cdt, device=x.device)
    torch.mul(xc.view(b, c, Q, g, r, p).transpose(2, 3), by_token(torch.exp(-rel).mul_(dt_s).to(cdt)), out=x2)
    Bg = B.view(b, c, Q, g, n).transpose(2, 3).to(cdt).reshape(b * c * g, Q, n)
    Cg = C.view(b, c, Q, g, n).transpose(2, 3).to(cdt).reshape(b * c * g, Q, n)
    x2 = x2.view(b * c * g, Q, r * p)

    y2 = torch.bmm(torch.bmm(Cg, Bg.transpose(1, 2)).tril_(), x2)  # [bcg, Q, r*p]
    cs = torch.bmm(Bg.transpose(1, 2), x2).view(b, c, g, n, r, p)  # what each chunk adds, times exp(m - Acum_end)

    def by_chunk(t):  # [b, h, c] -> [b, c, g, 1, r, 1]
        return t.view(b, g, r, c).permute(0, 3, 1, 2)[:, :, :, None, :, None]

    end = by_chunk(torch.exp(rel[..., -1]))  # exp(Acum_end - m)
    decay = by_chunk(torch.exp(Acum64[..., -1]).float())
    S = S0.view(b, g, r, p, n).permute(0, 1, 4, 2, 3).contiguous()  # [b, g, n, r, p], fp32
    Sin = torch.empty(b, c, g, n, r, p, dtype=cdt, device=x.device)
    cs = cs.float()
    for j in range(c):  # the state entering chunk j, then the state leaving it, in fp32
        Sin[:, j].copy_(S)
        S.mul_(decay[:, j]).addcmul_(cs[:, j], end[:, j])
    # The entering state's term, exp(Acum_q) C_q . S_in, gets its own scale: exp(Acum_q) <= 1, and where it
    # underflows the term is below fp32's resolution anyway.
    inter = torch.bmm(Cg, Sin.view(b * c * g, n, r * p)).view(b, c, g, Q, r, p)
    scale = by_token(torch.exp(rel).to(cdt))  # [b, c, g, Q, r, 1]
    scale_in = by_token(torch.exp(Acum64.float().clamp_(min=-_EXP_CLAMP)).to(cdt))
    y6 = y2.view(b, c, g, Q, r, p)
    direct = T == Tp and out.dtype == cdt  # write into out as it is, else through a padded buffer
    if direct:
        o6 = out.view(b, c, Q, g, r, p).transpose(2, 3)
    else:
        full = torch.empty(b, c, Q, g, r, p, dtype=cdt, device=x.device)
        o6 = full.transpose(2, 3)
    torch.mul(y6, scale, out=o6)
    o6.addcmul_(inter, scale_in)
    if not direct:
        out.copy_(full.view(b, Tp, h, p)[:, :T])
    if Df is not None:
        out.addcmul_(x[:, :T], Df.to(out.dtype))
    return out, S.permute(0, 1, 3, 4, 2).reshape(b, h, p, n)


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
    # In place and without the [b, h, p, n] outer product as a temporary (measured 4x faster per layer on CPU).
    state.mul_(decay[:, :, None, None]).addcmul_((dt[:, :, None] * xf)[..., None], Bh[:, :, None, :])
    # C as the row side: [b, h, 1, n] @ [b, h, n, p]; the same product as state @ C, ~4x faster on CPU.
    y = torch.matmul(Ch[:, :, None, :], state.transpose(-1, -2)).squeeze(-2)  # [b, h, p]
    if D is not None:
        y = y + D.float()[:, None] * xf
    return y.to(x.dtype)
