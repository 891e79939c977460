"""Vision tower against transformers 4.52.4's Qwen2_5_VisionTransformerPretrainedModel (the oracle).

Tiny configs only: width 64, 4 heads (head dim 16), window 84 px = 3x3 merged tokens, so the test grids
produce full windows, partial edge windows and (when a side is a multiple of 3) the reference's empty ones.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from zamba2vl.config import VisionConfig
from zamba2vl.errors import InputError
from zamba2vl.ops.precision import compute_dtype, linear
from zamba2vl.vision import VisionTower, load_vision_weights
from zamba2vl.vision.attention import make_segments, segment_attention, segment_attention_reference
from zamba2vl.vision.rotary import apply_rotary, patch_positions, rotary_cos_sin, vision_inv_freq
from zamba2vl.vision.windows import image_seqlens, inverse_permutation, window_index

qwen = pytest.importorskip("transformers.models.qwen2_5_vl.modeling_qwen2_5_vl")
from transformers.models.qwen2_5_vl.configuration_qwen2_5_vl import Qwen2_5_VLVisionConfig  # noqa: E402

TINY = dict(
    depth=4, hidden_size=64, num_heads=4, intermediate_size=96, out_hidden_size=48, fullatt_block_indexes=[2],
    window_size=84, patch_size=14, spatial_merge_size=2, temporal_patch_size=1, hidden_act="silu",
)
# (t, h, w) in patches: merged grids 6x8 (one side a multiple of the 3-token window), 3x5 (single row of
# windows, partial column), 4x2 with two frames.
GRIDS_3 = [[1, 12, 16], [1, 6, 10], [2, 8, 4]]


def oracle_model(**overrides) -> torch.nn.Module:
    cfg = Qwen2_5_VLVisionConfig(**{**TINY, **overrides})
    cfg._attn_implementation = "sdpa"
    model = qwen.Qwen2_5_VisionTransformerPretrainedModel(cfg).eval()
    randomize(model, seed=0)
    return model


def randomize(model: torch.nn.Module, seed: int) -> None:
    """Weights of unit-scale activations (the oracle's init, std 0.02 and zero biases, would hide errors)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1 and ("norm" in name or "ln_q" in name):
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g))
            elif p.dim() == 1:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            else:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=g) / fan_in**0.5)


def ours_from(oracle: torch.nn.Module, prefix: str = "visual.", **overrides) -> VisionTower:
    tower = VisionTower(VisionConfig(**{**TINY, **overrides})).eval()
    sd = {prefix + k: v for k, v in oracle.state_dict().items()}
    load_vision_weights(tower, sd, source="oracle")
    return tower


def pixels(grids, patch_dim: int, seed: int = 1) -> torch.Tensor:
    n = sum(t * h * w for t, h, w in grids)
    return torch.randn(n, patch_dim, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def oracle():
    return oracle_model()


# ------------------------------------------------------------------------------------------ index helpers


@pytest.mark.parametrize("window_size", [56, 84, 112])
def test_window_index_matches_reference(oracle, window_size):
    grids = [
        [[1, 12, 16]], [[1, 6, 10]], [[2, 8, 4]], [[1, 2, 2]], [[1, 16, 16]], [[1, 24, 8]], [[3, 14, 22]],
        [[1, 12, 16], [1, 6, 10], [2, 8, 4]], [[1, 16, 16], [1, 16, 16]], [[1, 36, 2], [1, 2, 50]],
    ]
    oracle.window_size = window_size
    try:
        for g in grids:
            gt = torch.tensor(g)
            ref_index, ref_cu = oracle.get_window_index(gt)
            ref_cu = torch.unique_consecutive(torch.tensor(ref_cu))
            index, cu = window_index(gt, window_size=window_size, patch_size=14, spatial_merge_size=2)
            assert torch.equal(index, ref_index), g
            assert torch.equal(cu, ref_cu.to(torch.int64)), g
            inv = inverse_permutation(index)
            assert torch.equal(inv, torch.argsort(index)), g
    finally:
        oracle.window_size = TINY["window_size"]


def test_image_seqlens():
    assert image_seqlens([[1, 4, 6], [2, 2, 2], [1, 8, 8]]).tolist() == [0, 24, 28, 32, 96]


def test_rotary_angles_match_reference(oracle):
    grid = torch.tensor(GRIDS_3)
    ref = oracle.rot_pos_emb(grid)  # [Np, hd/2] angles
    emb = torch.cat([ref, ref], dim=-1)
    cos, sin = rotary_cos_sin(patch_positions(grid, 2), vision_inv_freq(TINY["hidden_size"] // TINY["num_heads"]))
    assert torch.equal(cos, emb.cos())
    assert torch.equal(sin, emb.sin())


def test_apply_rotary_matches_rotate_half_formula():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(10, 2, 3, 16, generator=g)
    cos, sin = rotary_cos_sin(torch.randint(0, 30, (10, 2), generator=g), vision_inv_freq(16))
    c, s = cos[:, None, None], sin[:, None, None]
    ref = x * c + torch.cat([-x[..., 8:], x[..., :8]], dim=-1) * s
    assert (apply_rotary(x, cos, sin) - ref).abs().max().item() <= 1e-6
    xb = x.bfloat16()
    out = apply_rotary(xb, cos, sin)
    assert out.dtype == torch.bfloat16
    ref_b = (xb.float() * c + torch.cat([-xb[..., 8:], xb[..., :8]], -1).float() * s).bfloat16().float()
    # Equal up to one bf16 rounding step (fp32 FMA vs separate products can move a tie).
    assert ((out.float() - ref_b).abs() <= ref_b.abs() * 2**-7 + 1e-6).all()


# ---------------------------------------------------------------------------------------------- attention


@pytest.mark.parametrize(
    "lengths, pad, mode",
    [([24], True, "uniform"), ([16, 16, 16], True, "uniform"), ([16, 4, 12, 16, 1], True, "padded"),
     ([40, 12, 24], False, "split")],
)
def test_segment_attention_matches_dense_mask(lengths, pad, mode):
    g = torch.Generator().manual_seed(3)
    N, H, D = sum(lengths), 3, 8
    q, k, v = (torch.randn(N, H, D, generator=g) for _ in range(3))
    cu = torch.tensor([0] + lengths).cumsum(0)
    segs = make_segments(cu, pad=pad)
    assert segs.mode == mode
    out = segment_attention(q, k, v, segs)
    ref = segment_attention_reference(q, k, v, cu)
    assert (out - ref).abs().max().item() <= 1e-5


def test_low_precision_compute_dtype_on_this_machine():
    w = torch.zeros(4, 4, dtype=torch.bfloat16)
    native = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    assert compute_dtype(w) == (torch.bfloat16 if native else torch.float32)
    assert compute_dtype(w.float()) == torch.float32
    g = torch.Generator().manual_seed(4)
    x, w, b = torch.randn(37, 64, generator=g), torch.randn(48, 64, generator=g), torch.randn(48, generator=g)
    xb, wb, bb = x.bfloat16(), w.bfloat16(), b.bfloat16()
    # Upcasting exact bf16 values: the same products as an fp32 GEMM on those values.
    assert torch.equal(linear(xb.float(), wb, bb), F.linear(xb.float(), wb.float(), bb.float()))


# ------------------------------------------------------------------------------------------ whole tower


def test_tower_matches_transformers_three_images_fp32(oracle):
    grid = torch.tensor(GRIDS_3)
    px = pixels(GRIDS_3, 588)
    ours = ours_from(oracle)
    with torch.no_grad():
        ref = oracle(px, grid)
        out = ours(px, grid)
    assert out.shape == (sum(t * h * w for t, h, w in GRIDS_3) // 4, 48)
    assert ref.abs().mean().item() > 0.3  # activations are not vanishingly small
    assert (out - ref).abs().max().item() <= 1e-4


@pytest.mark.parametrize("grids", [[[1, 12, 12]], [[1, 4, 22]], [[1, 12, 12], [1, 12, 12]]])
def test_tower_matches_transformers_other_layouts(oracle, grids):
    # One image (no mask anywhere), windows all full (uniform batch), two equal images (uniform full blocks).
    grid = torch.tensor(grids)
    px = pixels(grids, 588, seed=5)
    ours = ours_from(oracle, prefix="vision_tower.")
    with torch.no_grad():
        assert (ours(px, grid) - oracle(px, grid)).abs().max().item() <= 1e-4


def test_tower_bf16_error_is_no_worse_than_transformers(oracle):
    """In bf16 both differ from the fp32 result by rounding; ours (fp32-accumulating GEMMs) must not be worse."""
    grid = torch.tensor(GRIDS_3)
    px = pixels(GRIDS_3, 588, seed=6)
    ours = ours_from(oracle)
    with torch.no_grad():
        exact = oracle(px, grid)
        ours_err = (ours.to(torch.bfloat16)(px, grid).float() - exact).abs().max().item()
        oracle_bf16 = oracle_model().to(torch.bfloat16)
        ref_err = (oracle_bf16(px, grid).float() - exact).abs().max().item()
    assert ours_err <= 1.5 * ref_err, (ours_err, ref_err)
    assert ours_err <= 0.1 * exact.abs().max().item()


def test_token_count_for_random_grids():
    cfg = VisionConfig(**{**TINY, "depth": 2, "hidden_size": 16, "num_heads": 2, "intermediate_size": 16,
                          "out_hidden_size": 8, "fullatt_block_indexes": [1], "patch_size": 2, "window_size": 12})
    tower = VisionTower(cfg).eval()
    g = torch.Generator().manual_seed(7)
    for _ in range(25):
        n_img = int(torch.randint(1, 4, (1,), generator=g))
        grids = [[int(torch.randint(1, 3, (1,), generator=g)), 2 * int(torch.randint(1, 11, (1,), generator=g)),
                  2 * int(torch.randint(1, 11, (1,), generator=g))] for _ in range(n_img)]
        with torch.no_grad():
            out = tower(pixels(grids, cfg.patch_dim), torch.tensor(grids))
        assert out.shape == (sum(t * h * w for t, h, w in grids) // 4, 8), grids


def test_output_is_in_raster_order_per_image(oracle):
    """Images are independent: each image alone gives the same rows as its slice of the batched call."""
    ours = ours_from(oracle)
    px = pixels(GRIDS_3, 588, seed=8)
    with torch.no_grad():
        batched = ours(px, torch.tensor(GRIDS_3))
        start_px = start_tok = 0
        for t, h, w in GRIDS_3:
            n = t * h * w
            alone = ours(px[start_px : start_px + n], torch.tensor([[t, h, w]]))
            assert (batched[start_tok : start_tok + n // 4] - alone).abs().max().item() <= 1e-5
            start_px, start_tok = start_px + n, start_tok + n // 4


def test_mismatched_pixel_values_raise():
    tower = VisionTower(VisionConfig(**{**TINY, "depth": 1, "fullatt_block_indexes": [0]}))
    with pytest.raises(InputError, match=r"\[48, 588\]"):
        tower(torch.zeros(47, 588), torch.tensor([[1, 6, 8]]))
    with pytest.raises(ValueError, match="multiples of spatial_merge_size"):
        tower(torch.zeros(45, 588), torch.tensor([[1, 5, 9]]))
