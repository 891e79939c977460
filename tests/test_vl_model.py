"""Zamba2-VL end to end against an oracle assembled from transformers==4.52.4 classes (spec section 5)."""

import json

import pytest
import torch
from zamba_testkit import make_oracle_lm, randomize_, tiny_text_dict

from zamba2vl.config import vl_preset
from zamba2vl.errors import InputError
from zamba2vl.model import Zamba2VL

IMG = 100  # image token id of the tiny vocabulary
VISION = dict(depth=3, hidden_size=32, intermediate_size=48, num_heads=4, out_hidden_size=64, patch_size=14,
              spatial_merge_size=2, temporal_patch_size=1, window_size=56, fullatt_block_indexes=[1], in_channels=3)


def make_oracle_vision(seed=0):
    from transformers.models.qwen2_5_vl.configuration_qwen2_5_vl import Qwen2_5_VLVisionConfig
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VisionTransformerPretrainedModel

    cfg = Qwen2_5_VLVisionConfig(**{("in_chans" if k == "in_channels" else k): v for k, v in VISION.items()})
    cfg._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = Qwen2_5_VisionTransformerPretrainedModel(cfg).eval()
    randomize_(model, seed + 100)
    return model


@pytest.fixture(scope="module")
def oracle_and_folder(tmp_path_factory):
    """Random tiny oracle, written as a checkpoint in the Zyphra layout (shared blocks under every hybrid layer)."""
    from safetensors.torch import save_file

    text = tiny_text_dict("like_1.2b", chunk_size=64)  # >= every prompt here (<= 53 tokens)
    lm = make_oracle_lm(text, seed=11)
    vision = make_oracle_vision(seed=12)
    folder = tmp_path_factory.mktemp("vl")
    tensors = {f"vision_tower.{k}": v for k, v in vision.state_dict().items()}
    tensors.update({f"language_model.{k}": v for k, v in lm.state_dict().items()})
    tensors = {k: v.detach().clone().contiguous() for k, v in tensors.items()}
    save_file(tensors, str(folder / "model.safetensors"))
    config = {"model_type": "zamba2_vl", "image_token_index": IMG, "text_config": text,
              "vision_config": dict(VISION, model_type="qwen2_5_vl")}
    (folder / "config.json").write_text(json.dumps(config))
    return lm, vision, folder


def make_inputs(n_images, seed):
    """Random text around image-token runs, and random pixel patches for grids of different sizes."""
    g = torch.Generator().manual_seed(seed)
    grids = [(1, 8, 6), (1, 4, 10), (1, 6, 6)][:n_images]
    ids = [torch.randint(0, 90, (7,), generator=g)]
    for t, h, w in grids:
        ids += [torch.full((t * h * w // 4,), IMG), torch.randint(0, 90, (5,), generator=g)]
    ids = torch.cat(ids)[None]
    if not grids:
        return ids, None, None
    n_patches = sum(t * h * w for t, h, w in grids)
    return ids, torch.randn(n_patches, 3 * 14 * 14, generator=g), torch.tensor(grids)


def oracle_embeds(lm, vision, ids, pixels, grid):
    emb = lm.model.embed_tokens(ids)
    if pixels is not None:
        feats = vision(pixels, grid_thw=grid)
        emb = emb.masked_scatter((ids == IMG)[..., None], feats.to(emb.dtype))
    return emb


@pytest.mark.parametrize("n_images", [0, 1, 3])
def test_logits_and_32_greedy_tokens_match_the_oracle(oracle_and_folder, n_images):
    from transformers.models.zamba2.modeling_zamba2 import Zamba2HybridDynamicCache

    lm, vision, folder = oracle_and_folder
    ours = Zamba2VL.from_pretrained(folder, dtype=torch.float32, dt_clamp_to_time_step_min=True)
    ids, pixels, grid = make_inputs(n_images, seed=n_images)
    assert ids.shape[1] <= lm.config.chunk_size  # the oracle's chunked scan is only right within one chunk
    with torch.no_grad():
        emb = oracle_embeds(lm, vision, ids, pixels, grid)
        ref = lm(inputs_embeds=emb, use_cache=False).logits
        got = ours(input_ids=ids, pixel_values=pixels, image_grid_thw=grid).logits
        assert 0.2 < ref.abs().mean() < 3
        assert (got - ref).abs().max().item() <= 1e-4

        # 32 greedy tokens, each system with its own cache.
        cache = Zamba2HybridDynamicCache(lm.config, 1, dtype=torch.float32)
        logits = lm(inputs_embeds=emb, past_key_values=cache, use_cache=True).logits[:, -1]
        ref_tokens = []
        for step in range(32):
            nxt = logits.argmax(-1, keepdim=True)
            ref_tokens.append(int(nxt))
            pos = torch.tensor([ids.shape[1] + step])
            logits = lm(input_ids=nxt, past_key_values=cache, use_cache=True, cache_position=pos, position_ids=pos[None]).logits[:, -1]
        out = ours(input_ids=ids, pixel_values=pixels, image_grid_thw=grid, use_cache=True, logits_to_keep=1)
        logits, our_cache, our_tokens = out.logits[:, -1], out.cache, []
        for _ in range(32):
            nxt = logits.argmax(-1, keepdim=True)
            our_tokens.append(int(nxt))
            logits = ours(input_ids=nxt, cache=our_cache).logits[:, -1]
    assert our_tokens == ref_tokens


def test_image_token_and_feature_mismatch_is_explained(oracle_and_folder):
    _, _, folder = oracle_and_folder
    ours = Zamba2VL.from_pretrained(folder)
    ids, pixels, grid = make_inputs(1, seed=0)
    with pytest.raises(InputError, match=r"the prompt has 11 image tokens .* but the images give 12 features \(per image: \[12\]\)"):
        first_image = int((ids[0] == IMG).nonzero()[0])
        dropped = torch.cat([ids[:, :first_image], ids[:, first_image + 1:]], 1)
        ours(input_ids=dropped, pixel_values=pixels, image_grid_thw=grid)
    with pytest.raises(InputError, match="0 features"):
        ours(input_ids=ids)


def test_save_and_reload_in_the_same_layout(oracle_and_folder, tmp_path):
    _, _, folder = oracle_and_folder
    ours = Zamba2VL.from_pretrained(folder)
    ours.save_pretrained(tmp_path / "copy", max_shard_bytes=200_000)
    assert (tmp_path / "copy" / "model.safetensors.index.json").is_file()
    again = Zamba2VL.from_pretrained(tmp_path / "copy")
    ids, pixels, grid = make_inputs(3, seed=4)
    with torch.no_grad():
        a = ours(input_ids=ids, pixel_values=pixels, image_grid_thw=grid).logits
        b = again(input_ids=ids, pixel_values=pixels, image_grid_thw=grid).logits
    assert torch.equal(a, b)


@pytest.mark.parametrize("size,expected", [("1.2b", 1_883_127_424), ("2.7b", 3_332_932_000), ("7b", 8_032_776_528)])
def test_vl_presets_have_the_released_parameter_counts(size, expected):
    with torch.device("meta"):
        model = Zamba2VL(vl_preset(size))
    assert sum(p.numel() for p in model.parameters()) == expected


def test_unknown_model_type_and_missing_config_are_explained(tmp_path):
    from zamba2vl.errors import ConfigError

    with pytest.raises(ConfigError, match="no config.json"):
        Zamba2VL.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llava"}))
    with pytest.raises(ConfigError, match="'llava'.*must say 'zamba2_vl'"):
        Zamba2VL.from_pretrained(tmp_path)
