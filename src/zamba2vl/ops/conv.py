"""Depthwise causal 1-D convolution over time (Mamba2's short conv), as pure functions.

Layout is channels-last, ``x [b, L, c]``, which is how the mixer's in_proj produces it; the weight is
``[c, K]`` (the checkpoint's ``conv1d.weight [c, 1, K]`` squeezed). The conv state is the last K inputs
(pre-activation), ``[b, c, K]``, the same layout the reference cache uses.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def causal_conv1d_reference(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, state: torch.Tensor | None = None
) -> torch.Tensor:
    """torch's own grouped conv1d on the left-padded input (the oracle). Returns [b, L, c]."""
    b, L, c = x.shape
    K = weight.shape[-1]
    xt = x.transpose(1, 2)  # [b, c, L]
    history = state[..., 1:].to(x.dtype) if state is not None else x.new_zeros(b, c, K - 1)
    xt = torch.cat([history, xt], dim=-1)
    return F.conv1d(xt, weight[:, None, :], bias, groups=c).transpose(1, 2)


def causal_conv1d(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, state: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Causal depthwise conv as K shifted multiply-adds on the channels-last input.

    ``state`` ([b, c, K], the last K inputs seen before ``x``) continues a previous call; None means zeros.
    Returns (y [b, L, c] without activation, new state [b, c, K]).
    """
    b, L, c = x.shape
    K = weight.shape[-1]
    assert L >= 1
    w = weight.to(x.dtype).t()  # [K, c]; tap k multiplies the input K-1-k steps back
    history = None if state is None else state[..., 1:].transpose(1, 2).to(x.dtype)  # [b, K-1, c]
    # y_t = sum_k w_k x_{t-(K-1-k)} + bias, tap by tap in this order (as a padded copy would give it), with each
    # shifted tap reading its first rows from the history instead of from a padded copy of x.
    y = torch.empty_like(x, memory_format=torch.contiguous_format)
    grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, weight, bias, state))
    for k in range(K):
        s = K - 1 - k  # shift
        m = min(s, L)  # rows that read the history
        if k == 0:
            if grad:  # out= does not record gradients
                y[:, m:] = x[:, : L - m] * w[0]
                y[:, :m] = 0 if history is None else history[:, :m] * w[0]
            else:
                torch.mul(x[:, : L - m], w[0], out=y[:, m:])
                y[:, :m].zero_() if history is None else torch.mul(history[:, :m], w[0], out=y[:, :m])
            continue
        y[:, m:].addcmul_(x[:, : L - m], w[k])
        if history is not None and m:
            y[:, :m].addcmul_(history[:, K - 1 - s : K - 1 - s + m], w[k])
    if bias is not None:
        y.add_(bias.to(x.dtype))
    if L >= K:
        new_state = x[:, L - K :]
    else:
        old = history if history is not None else x.new_zeros(b, K - 1, c)
        new_state = torch.cat([old, x], dim=1)[:, -K:]
    return y, new_state.transpose(1, 2).contiguous()


def causal_conv1d_step(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, state: torch.Tensor
) -> torch.Tensor:
    """One token: x [b, c]; ``state`` [b, c, K] is shifted in place. Returns y [b, c] without activation."""
    state.copy_(torch.roll(state, shifts=-1, dims=-1))
    state[:, :, -1] = x.to(state.dtype)
    y = (state.to(x.dtype) * weight.to(x.dtype)).sum(-1)
    if bias is not None:
        y = y + bias.to(x.dtype)
    return y
