"""Building a Zamba2-VL from a Zamba2 text checkpoint and a Qwen2.5-VL checkpoint's vision tower."""

from __future__ import annotations

import argparse
import json
import shutil

import pytest
import torch
from safetensors.torch import save_file
from trainkit import IMAGE_TOKEN_ID, TINY_TEXT, TINY_VISION, one_thread, tiny_vl_config, tokenizer_dirs

from zamba2vl.config import VisionConfig, Zamba2TextConfig
from zamba2vl.errors import CheckpointError
from zamba2vl.model import Zamba2VL
from zamba2vl.processing.processor import Processor
from zamba2vl.text.model import Zamba2LM
from zamba2vl.train.build import build_from_parts, init_text_model, init_vision_tower, random_model
from zamba2vl.train.cli import add_build_arguments, run_build_from_args
from zamba2vl.vision.tower import VisionTower

QWEN_VISION = {**TINY_VISION, "temporal_patch_size": 2, "out_hidden_size": 48, "model_type": "qwen2_5_vl"}


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    root = tmp_path_factory.mktemp("parts")
    with one_thread():
        text = Zamba2LM(Zamba2TextConfig.from_dict({"model_type": "zamba2", **TINY_TEXT, "vocab_size": 32000}))
        init_text_model(text, seed=1)
        text.save_pretrained(root / "text")
        for f in tokenizer_dirs()[0].iterdir():  # the plain Mistral tokenizer, no image token yet
            shutil.copy(f, root / "text" / f.name)

        qwen = VisionTower(VisionConfig.from_dict(QWEN_VISION))
        init_vision_tower(qwen, seed=2)
    (root / "qwen").mkdir()
    tensors = {f"visual.{k}": v.contiguous() for k, v in qwen.state_dict().items()}
    tensors["model.embed_tokens.weight"] = torch.zeros(10, 48)  # Qwen's own LM: not ours to take
    save_file(tensors, str(root / "qwen" / "model.safetensors"))
    qwen_config = {"model_type": "qwen2_5_vl", "hidden_size": 48,
                   "vision_config": {**QWEN_VISION, "in_chans": 3, "spatial_patch_size": 14}}
    (root / "qwen" / "config.json").write_text(json.dumps(qwen_config))
    return root, text, qwen


def test_build_from_parts_saves_a_loadable_hub_checkpoint(parts, tmp_path):
    root, text, qwen = parts
    with one_thread():
        built = build_from_parts(root / "text", root / "qwen", tmp_path / "vl", seed=5)
        loaded = Zamba2VL.from_pretrained(tmp_path / "vl")
    for name, value in built.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name
    cfg = loaded.config
    assert cfg.image_token_index == IMAGE_TOKEN_ID and cfg.text_config.vocab_size == 32064
    assert cfg.vision_config.temporal_patch_size == 1 and cfg.vision_config.out_hidden_size == 32

    tower, q = loaded.vision_tower.state_dict(), qwen.state_dict()
    assert torch.allclose(tower["patch_embed.proj.weight"], q["patch_embed.proj.weight"].sum(2, keepdim=True))
    for name in q:
        if not name.startswith(("patch_embed", "merger.mlp.2")):
            assert torch.equal(tower[name], q[name]), name
    fc2 = loaded.vision_tower.merger.mlp[2]
    assert fc2.weight.shape == (32, 128) and torch.equal(fc2.bias, torch.zeros(32))
    assert abs(fc2.weight.std().item() - 0.02) < 0.004  # fresh, at the LM's initializer_range

    embed = loaded.language_model.model.embed_tokens.weight
    assert torch.equal(embed[:32000], text.model.embed_tokens.weight)
    assert torch.allclose(embed[32000:], text.model.embed_tokens.weight.mean(0).expand(64, -1))
    lm_state, text_state = loaded.language_model.state_dict(), text.state_dict()
    assert all(torch.equal(lm_state[k], v) for k, v in text_state.items() if "embed_tokens" not in k)

    proc = Processor.from_pretrained(tmp_path / "vl")
    assert proc.image_token_id == IMAGE_TOKEN_ID
    assert proc.tokenizer.encode("<image>", add_special_tokens=False) == [IMAGE_TOKEN_ID]


def test_build_command_and_image_token_clash(parts, tmp_path, capsys):
    root, _, _ = parts
    args = add_build_arguments(argparse.ArgumentParser()).parse_args(
        ["--text", str(root / "text"), "--vision", str(root / "qwen"), "--out", str(tmp_path / "vl")])
    with one_thread():
        assert run_build_from_args(args) == 0
    assert (tmp_path / "vl" / "model.safetensors").is_file() and "Zamba2-VL" in capsys.readouterr().err
    with pytest.raises(CheckpointError, match="gives '<image>' the id 32000, but the model's image_token_index is 31"):
        build_from_parts(root / "text", root / "qwen", tmp_path / "clash", image_token_index=31)


def test_random_model_is_reproducible_and_mamba_init_is_the_reference_one():
    config = tiny_vl_config()
    with one_thread():
        a, b = random_model(config, seed=0), random_model(config, seed=0)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    mixer = a.language_model.model.layers[0].mamba
    dt = torch.nn.functional.softplus(mixer.dt_bias)
    assert bool(((dt >= 1e-3 - 1e-7) & (dt <= 0.1 + 1e-7)).all())
    assert torch.allclose(mixer.A_log, torch.log(torch.arange(1.0, 5.0)))
    assert torch.equal(mixer.D, torch.ones(4))
