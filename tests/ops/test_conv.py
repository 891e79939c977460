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


def test_bf16_conv_rounds_once_and_its_output_is_a_contiguous_channels_last_tensor():
    # A strided slice of a wider projection, as the mixer passes it; batch 3 with and without history.
    g = torch.Generator().manual_seed(2)
    proj = torch.randn(3, 70, 100, generator=g)
    x = proj[..., 10:58]
    w, b = torch.randn(48, 4, generator=g) * 0.5, torch.randn(48, generator=g)
    for state in (None, torch.randn(3, 48, 4, generator=g)):
        ref = causal_conv1d_reference(x.bfloat16().double(), w.bfloat16().double(), b.bfloat16().double(),
                                      None if state is None else state.bfloat16().double())
        y, _ = causal_conv1d(x.bfloat16(), w.bfloat16(), b.bfloat16(), None if state is None else state.bfloat16())
        assert y.dtype == torch.bfloat16 and y.is_contiguous() and y.shape == (3, 70, 48)
        # one rounding of the exact sum to bf16: at most half a unit in the last place (2^-8 relative)
        assert ((y.double() - ref).abs() <= ref.abs() * 2.0**-8 + 1e-6).all()


def test_conv_gradients_match_the_reference():
    g = torch.Generator().manual_seed(3)
    x, w, b, s = (torch.randn(2, 9, 16, generator=g), torch.randn(16, 4, generator=g), torch.randn(16, generator=g),
                  torch.randn(2, 16, 4, generator=g))
    grads = []
    for fn in (lambda *a: causal_conv1d(*a)[0], causal_conv1d_reference):
        leaves = [t.clone().requires_grad_(True) for t in (x, w, b)]
        (fn(*leaves, s) * torch.arange(16.0)).sum().backward()
        grads.append([t.grad for t in leaves])
    for got, want in zip(*grads):
        assert (got - want).abs().max() <= 1e-4
