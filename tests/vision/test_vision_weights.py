"""Loading vision-tower weights: prefixes, error messages, Qwen2.5-VL towers (T=2, other merger width)."""

from __future__ import annotations

import pytest
import torch

from zamba2vl.config import VisionConfig
from zamba2vl.errors import CheckpointError
from zamba2vl.vision import VisionTower, load_vision_weights, vision_state_dict_from_checkpoint

TINY = dict(
    depth=2, hidden_size=32, num_heads=2, intermediate_size=48, out_hidden_size=24, fullatt_block_indexes=[1],
    window_size=84, patch_size=14, spatial_merge_size=2, temporal_patch_size=1,
)


def random_tower(seed: int = 0, **overrides) -> VisionTower:
    torch.manual_seed(seed)
    tower = VisionTower(VisionConfig(**{**TINY, **overrides})).eval()
    with torch.no_grad():
        for p in tower.parameters():
            p.normal_(0, 0.3)
    return tower


def checkpoint(tower: VisionTower, prefix: str) -> dict[str, torch.Tensor]:
    sd = {prefix + k: v.clone() for k, v in tower.state_dict().items()}
    sd["language_model.model.embed_tokens.weight"] = torch.zeros(10, 24)  # other parts are ignored
    return sd


@pytest.mark.parametrize("prefix", ["vision_tower.", "model.vision_tower.", "visual.", "model.visual.", ""])
def test_every_layout_loads_exactly(prefix):
    src = random_tower(0)
    dst = random_tower(1)
    load_vision_weights(dst, checkpoint(src, prefix), source="ckpt")
    for (name, a), (_, b) in zip(src.state_dict().items(), dst.state_dict().items()):
        assert torch.equal(a, b), name


def test_loads_into_meta_tower_with_dtype():
    src = random_tower(0)
    with torch.device("meta"):
        dst = VisionTower(VisionConfig(**TINY))
    load_vision_weights(dst, checkpoint(src, "vision_tower."), source="ckpt", dtype=torch.bfloat16)
    w = dst.blocks[1].mlp.down_proj.weight
    assert w.device.type == "cpu" and w.dtype == torch.bfloat16
    assert torch.equal(w, src.blocks[1].mlp.down_proj.weight.bfloat16())


def test_missing_tensor_is_named():
    sd = checkpoint(random_tower(), "vision_tower.")
    del sd["vision_tower.blocks.1.attn.qkv.bias"]
    with pytest.raises(CheckpointError, match=r"missing 1 tensor\(s\): blocks\.1\.attn\.qkv\.bias"):
        load_vision_weights(random_tower(), sd, source="ckpt")


def test_misshaped_tensor_is_named_with_both_shapes():
    sd = checkpoint(random_tower(), "visual.")
    sd["visual.blocks.0.mlp.up_proj.weight"] = torch.zeros(50, 32)
    with pytest.raises(CheckpointError, match=r"blocks\.0\.mlp\.up_proj\.weight: checkpoint has \(50, 32\), "
                                              r"model expects \(48, 32\)"):
        load_vision_weights(random_tower(), sd, source="ckpt")


def test_unexpected_tensor_is_named():
    sd = checkpoint(random_tower(), "vision_tower.")
    sd["vision_tower.blocks.0.attn.q_norm.weight"] = torch.ones(16)
    with pytest.raises(CheckpointError, match=r"unexpected 1 tensor\(s\): blocks\.0\.attn\.q_norm\.weight"):
        load_vision_weights(random_tower(), sd, source="ckpt")


def test_two_frame_patch_embedding_is_refused():
    t2 = random_tower(temporal_patch_size=2)
    with pytest.raises(CheckpointError) as e:
        load_vision_weights(random_tower(), checkpoint(t2, "visual."), source="qwen.safetensors")
    msg = str(e.value)
    assert "visual.patch_embed.proj.weight" in msg and "temporal extent 2" in msg
    assert "temporal_patch_size=1" in msg and "(32, 3, 2, 14, 14)" in msg


def test_folded_two_frame_embedding_sees_a_still_image_as_the_two_frame_tower_does():
    t2 = random_tower(0, temporal_patch_size=2)
    t1 = random_tower(1)
    load_vision_weights(t1, checkpoint(t2, "visual."), source="qwen", fold_temporal=True)
    grid = torch.tensor([[1, 6, 8]])
    still = torch.randn(48, 3, 1, 14, 14, generator=torch.Generator().manual_seed(2))
    two_frames = still.expand(48, 3, 2, 14, 14).reshape(48, -1)  # what Qwen's processor makes of an image
    with torch.no_grad():
        diff = (t1(still.reshape(48, -1), grid) - t2(two_frames, grid)).abs().max().item()
    assert diff <= 1e-5


def test_other_merger_width_with_skip_merger_output():
    qwen = random_tower(0, out_hidden_size=40)  # a Qwen2.5-VL tower whose LM is 40 wide
    dst = random_tower(1)  # our LM is 24 wide
    before = dst.merger.mlp[2].weight.clone()
    with pytest.raises(CheckpointError, match=r"merger\.mlp\.2\.weight: checkpoint has \(40, 128\)"):
        load_vision_weights(dst, checkpoint(qwen, "model.visual."), source="qwen")
    load_vision_weights(dst, checkpoint(qwen, "model.visual."), source="qwen", skip_merger_output=True)
    assert torch.equal(dst.merger.mlp[0].weight, qwen.merger.mlp[0].weight)
    assert torch.equal(dst.merger.mlp[2].weight, before)


def test_no_vision_keys_and_two_prefixes_are_refused():
    cfg = VisionConfig(**TINY)
    with pytest.raises(CheckpointError, match="no vision-tower weights.*language_model.lm_head.weight"):
        vision_state_dict_from_checkpoint({"language_model.lm_head.weight": torch.zeros(1)}, cfg)
    sd = {**checkpoint(random_tower(), "visual."), **checkpoint(random_tower(), "vision_tower.")}
    with pytest.raises(CheckpointError, match="several prefixes"):
        vision_state_dict_from_checkpoint(sd, cfg)
