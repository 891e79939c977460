"""data.min_pixels / data.max_pixels become the model's own image budget: training, evaluation during training and
the checkpoints' preprocessor_config.json (what inference and `zamba2vl eval` read) all resize images alike."""

from __future__ import annotations

import json

import pytest
import torch
from trainkit import one_thread, stage_config

from zamba2vl.errors import ConfigError
from zamba2vl.processing.image import ImageProcessor
from zamba2vl.train.config import config_from_dict
from zamba2vl.train.trainer import Trainer


def test_the_runs_floor_is_trained_evaluated_and_saved(tmp_path, monkeypatch):
    # 56x56 synthetic images (3,136 pixels) under a floor of 12,544 are enlarged to 112x112: 8x8 patches.
    from zamba2vl.train import trainer as trainer_module

    config = stage_config(tmp_path / "run", data={"min_pixels": 112 * 112},
                          optim={"max_steps": 2, "warmup_steps": 1}, checkpoint={"every": 2, "keep": 1},
                          eval={"every": 0, "at_end": True, "n_per_task": 1, "image_size": 56,
                                "max_new_tokens": 2})
    with one_thread():
        trainer = Trainer(config_from_dict(config), progress=False)
        assert trainer.processor.image_processor.min_pixels == 112 * 112
        batch = trainer.mixture.next_step(2, 0, 1, 2)[0]
        assert all(e.image_grid_thw.tolist() == [[1, 8, 8]] for e in batch)
        # The held-out evaluation at the end resizes as training did.
        sizes, evaluating = [], []
        ip = trainer.processor.image_processor
        real_size, real_evaluate = ip.resized_size, trainer_module.evaluate
        monkeypatch.setattr(ip, "resized_size", lambda *a, **k: sizes.append((bool(evaluating), real_size(*a, **k)))
                            or sizes[-1][1])
        monkeypatch.setattr(trainer_module, "evaluate",
                            lambda *a, **k: evaluating.append(1) or real_evaluate(*a, **k))
        trainer.train()
    in_eval = [size for during, size in sizes if during]
    assert len(in_eval) >= 4 and set(in_eval) == {(112, 112)}, sizes  # one image of each task, enlarged
    saved = json.loads((tmp_path / "run" / "checkpoints" / "step-000002" / "preprocessor_config.json").read_text())
    assert (saved["min_pixels"], saved["max_pixels"]) == (112 * 112, ImageProcessor().max_pixels)
    assert ImageProcessor.from_dict(saved).grid_thw(56, 56) == (1, 8, 8)


def test_without_a_budget_the_processors_own_is_kept(tmp_path):
    with one_thread():
        trainer = Trainer(config_from_dict(stage_config(tmp_path / "run")), progress=False)
    ip = trainer.processor.image_processor
    assert (ip.min_pixels, ip.max_pixels) == (ImageProcessor().min_pixels, ImageProcessor().max_pixels)
    assert trainer.mixture.next_step(2, 0, 1, 2)[0][0].image_grid_thw.tolist() == [[1, 4, 4]]


def test_a_floor_above_the_ceiling_is_a_config_error(tmp_path):
    config = stage_config(tmp_path / "run", data={"min_pixels": 200_000, "max_pixels": 100_000})
    with pytest.raises(ConfigError, match=r"data.min_pixels / data.max_pixels: .*min_pixels=200000"):
        Trainer(config_from_dict(config), progress=False)
