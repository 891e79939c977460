"""The auxiliary pixel-reconstruction objective (train/reconstruction.py) and its place in the trainer."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from trainkit import (finish, run_train, stage_config, start_train, straight_and_resumed, tiny_vl_config,
                      write_config)

from zamba2vl.errors import ConfigError
from zamba2vl.processing.image import ImageProcessor
from zamba2vl.train.config import config_from_dict
from zamba2vl.train.loss import CausalLMLoss
from zamba2vl.train.reconstruction import PixelReconstruction


def test_targets_are_each_tokens_own_pixels_pooled():
    # A 56x84 image (2x3 merged tokens of 28x28, no resize): the target of token (r, c) is, for its patch
    # (dy, dx), channel ch and pooled pixel (i, j), the mean of the 2x2 normalised pixels at
    # y = 28r + 14dy + 2i, x = 28c + 14dx + 2j. Computed here from the image itself, not from pixel_values.
    vision = tiny_vl_config().vision_config
    rng = np.random.default_rng(0)
    u8 = rng.integers(0, 256, size=(56, 84, 3), dtype=np.uint8)
    proc = ImageProcessor()
    out = proc([Image.fromarray(u8)])
    assert out["image_grid_thw"].tolist() == [[1, 4, 6]]
    head = PixelReconstruction(vision, hidden_size=32, pool=2)
    got = head.targets(out["pixel_values"])
    assert got.shape == (6, 4 * 3 * 7 * 7)

    norm = (u8.astype(np.float64) / 255 - np.asarray(proc.image_mean)) / np.asarray(proc.image_std)  # [y, x, ch]
    want = np.zeros((6, 4, 3, 7, 7))
    for r in range(2):
        for c in range(3):
            for dy in range(2):
                for dx in range(2):
                    for ch in range(3):
                        for i in range(7):
                            for j in range(7):
                                y, x = 28 * r + 14 * dy + 2 * i, 28 * c + 14 * dx + 2 * j
                                want[r * 3 + c, 2 * dy + dx, ch, i, j] = norm[y:y + 2, x:x + 2, ch].mean()
    np.testing.assert_allclose(got.numpy(), want.reshape(6, -1), atol=1e-5)


def test_error_is_a_mean_per_image_summed_over_images():
    vision = tiny_vl_config().vision_config
    head = PixelReconstruction(vision, hidden_size=32, pool=7, seed=3)
    torch.manual_seed(0)
    grids = torch.tensor([[1, 4, 4], [1, 2, 6]])  # 4 and 3 merged tokens
    pixels = torch.randn(int(grids.prod(-1).sum()), 3 * 14 * 14)
    feats = torch.randn(7, 32)
    error, images = head(feats, pixels, grids)
    assert images == 2
    first, _ = head(feats[:4], pixels[:16], grids[:1])
    second, _ = head(feats[4:], pixels[16:], grids[1:])
    assert torch.allclose(error, first + second, atol=1e-6)  # the same however the images are batched
    by_hand = ((head.proj(feats[4:]) - head.targets(pixels[16:])) ** 2).mean()
    assert torch.allclose(second, by_hand, atol=1e-6)
    assert not torch.allclose(first, second)
    # The same seed gives the same head (every process, every run); another seed another one.
    assert torch.equal(PixelReconstruction(vision, 32, pool=7, seed=3).proj.weight, head.proj.weight)
    assert not torch.equal(PixelReconstruction(vision, 32, pool=7, seed=4).proj.weight, head.proj.weight)


def test_the_gradient_reaches_the_vision_side_only_through_the_image_features():
    # With the language-model loss masked away entirely (no labels), the reconstruction still trains the merger
    # and the tower, and the language model gets no gradient from it.
    from zamba2vl.train.build import random_model

    config = tiny_vl_config()
    model = random_model(config, seed=1)
    head = PixelReconstruction(config.vision_config, config.text_config.hidden_size)
    loss_fn = CausalLMLoss(model, None, head, reconstruction_weight=2.0)
    grid = torch.tensor([[1, 4, 4]])
    pixels = torch.randn(16, 3 * 14 * 14)
    ids = torch.tensor([[1] + [config.image_token_index] * 4 + [5, 6]])
    labels = torch.full_like(ids, -100)
    loss, count = loss_fn(ids, labels, pixels, grid)
    assert count == 0
    error, _ = head(model.get_image_features(pixels, grid), pixels, grid)
    assert torch.allclose(loss, 2.0 * error, atol=1e-5)
    loss.backward()
    merger = model.vision_tower.merger
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in merger.parameters())
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in model.language_model.parameters())


def test_bad_settings_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="reconstruction"):
        config_from_dict(stage_config(tmp_path / "a", reconstruction={"weight": -1.0}))
    with pytest.raises(ConfigError, match="unknown key"):
        config_from_dict(stage_config(tmp_path / "a", reconstruction={"wieght": 1.0}))
    bad_pool = write_config(tmp_path / "pool.yaml", stage_config(tmp_path / "p", reconstruction={"weight": 1.0,
                                                                                                  "pool": 3}))
    run = run_train(bad_pool)
    assert run.returncode != 0 and "pool=3 must divide the patch size 14" in run.stderr, run.stderr[-2000:]
    assert "Traceback" not in run.stderr


def test_a_run_with_reconstruction_resumes_exactly_and_keeps_the_head_out_of_the_model(tmp_path):
    def config(name, every):
        return stage_config(tmp_path / name, optim={"max_steps": 6, "loss_per": "sample"},
                            checkpoint={"every": every}, reconstruction={"weight": 0.5})

    a, b = straight_and_resumed(tmp_path, config)
    assert sorted(a) == sorted(b) == list(range(1, 7))
    assert [b[s] for s in range(1, 7)] == [a[s] for s in range(1, 7)]
    rows = [json.loads(line) for line in (tmp_path / "killed" / "loss.jsonl").read_text().splitlines()]
    # One image per sample and a loss per sample: loss = lm_loss + weight x the mean reconstruction error.
    for r in rows:
        assert r["reconstruction_mse"] > 0
        assert abs(r["loss"] - (r["lm_loss"] + 0.5 * r["reconstruction_mse"])) < 1e-5
    assert rows[-1]["reconstruction_mse"] < rows[0]["reconstruction_mse"]  # lr 3e-3 on a fresh head: it learns

    ckpt = tmp_path / "killed" / "checkpoints" / "step-000006"
    with safe_open(str(ckpt / "model.safetensors"), "pt") as f:
        assert not [k for k in f.keys() if "recon" in k or "proj" == k.split(".")[0]]
    state = torch.load(ckpt / "trainer_state.pt", weights_only=False)
    assert set(state["reconstruction"]) == {"proj.weight", "proj.bias"}
    assert [g["name"] for g in state["optimizer"]["param_groups"]][-2:] == ["reconstruction",
                                                                            "reconstruction.no_decay"]


def test_two_processes_train_the_head_like_one(tmp_path, capsys):
    # DistributedDataParallel wraps the loss module, head included: two gloo processes with the same global batch
    # log the same losses and reconstruction errors as one process; with optim.loss_per: sqrt the step's
    # normaliser (the sum of sqrt(labelled tokens)) is summed over processes and micro-batches the same way. The
    # objects head (train/objects.py) rides along: its loss is per annotated image, summed the same way.
    from trainkit import train_in_process

    section = dict(batch={"global_batch_size": 4, "micro_batch_size": 1}, optim={"max_steps": 6, "loss_per": "sqrt"},
                   reconstruction={"weight": 1.0}, objects={"weight": 0.5})
    two = start_train(write_config(tmp_path / "two.yaml", stage_config(tmp_path / "two", **section)), torchrun=2)
    train_in_process(stage_config(tmp_path / "one", **section))
    two = finish(two)
    assert two.returncode == 0, two.stderr[-3000:]
    rows = {name: [json.loads(line) for line in (tmp_path / name / "loss.jsonl").read_text().splitlines()]
            for name in ("one", "two")}
    assert len(rows["one"]) == len(rows["two"]) == 6
    for a, b in zip(rows["one"], rows["two"]):
        for key in ("loss", "lm_loss", "reconstruction_mse", "objects_loss"):
            assert abs(a[key] - b[key]) <= 1e-4, (key, a, b)
    assert rows["one"][-1]["reconstruction_mse"] < rows["one"][0]["reconstruction_mse"]
    assert sum(r["objects_loss"] > 0 for r in rows["one"]) >= 3  # most steps hold a counting or grounding image
