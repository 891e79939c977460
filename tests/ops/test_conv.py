import torch

from zamba2vl.ops.conv import causal_conv1d, causal_conv1d_reference, causal_conv1d_step


def test_conv_matches_torch_conv1d_with_and_without_state():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 13, 24, generator=g)
    w, b = torch.randn(24, 4, generator=g), torch.randn(24, generator=g)
    for state in (None, torch.randn(2, 24, 4, generator=g)):
        y, new_state = causal_conv1d(x, w, b, state)
        assert (y - causal_conv1d_reference(x, w, b, state)).abs().max() <= 1e-5
        assert torch.equal(new_state, x[:, -4:].transpose(1, 2))


def test_short_input_state_is_left_zero_padded_and_steps_continue():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 10, 8, generator=g)
    w, b = torch.randn(8, 4, generator=g), torch.randn(8, generator=g)
    y_all, _ = causal_conv1d(x, w, b)
    y, state = causal_conv1d(x[:, :2], w, b)
    assert torch.equal(state[..., :2], torch.zeros(1, 8, 2))
    for t in range(2, 10):
        yt = causal_conv1d_step(x[:, t], w, b, state)
        assert (yt - y_all[:, t]).abs().max() <= 1e-5
