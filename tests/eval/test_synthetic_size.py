"""The synthetic benchmark draws its images at the size the model was trained at, when the model says so."""

from __future__ import annotations

import argparse

from zamba2vl.eval.cli import _synthetic_image_size


def _args(model: str, size=None) -> argparse.Namespace:
    return argparse.Namespace(model=model, synthetic_image_size=size)


def test_size_from_the_models_training_config(tmp_path):
    (tmp_path / "train_config.yaml").write_text("stage: pretrain\neval: {every: 100, image_size: 112}\n")
    assert _synthetic_image_size(_args(str(tmp_path))) == 112
    assert _synthetic_image_size(_args(str(tmp_path), 168)) == 168  # the flag wins


def test_default_without_a_training_config(tmp_path):
    assert _synthetic_image_size(_args(str(tmp_path))) == 224
    assert _synthetic_image_size(_args("oracle")) == 224
    assert _synthetic_image_size(_args("answers:preds.jsonl")) == 224
