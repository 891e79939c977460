"""The synthetic benchmark draws its images at the size the model was trained at, when the model says so."""

from __future__ import annotations

import argparse

import pytest

from zamba2vl.eval.cli import _synthetic_image_size, _synthetic_options, add_eval_arguments
from zamba2vl.eval.benchmarks import EvalConfig
from zamba2vl.eval.synthetic import load_synthetic


def _args(model: str, size=None, reading=None) -> argparse.Namespace:
    return argparse.Namespace(model=model, synthetic_image_size=size, synthetic_reading_size=reading,
                              synthetic_rows=8, synthetic_seed=1234)


def test_size_from_the_models_training_config(tmp_path):
    (tmp_path / "train_config.yaml").write_text("stage: pretrain\neval: {every: 100, image_size: 112}\n")
    assert _synthetic_image_size(_args(str(tmp_path))) == 112
    assert _synthetic_image_size(_args(str(tmp_path), 168)) == 168  # the flag wins


def test_default_without_a_training_config(tmp_path):
    assert _synthetic_image_size(_args(str(tmp_path))) == 224
    assert _synthetic_image_size(_args("oracle")) == 224
    assert _synthetic_image_size(_args("answers:preds.jsonl")) == 224


def test_reading_canvas_from_the_models_training_config(tmp_path):
    (tmp_path / "train_config.yaml").write_text("eval: {image_size: 112, reading_size: [224, 28]}\n")
    opts = _synthetic_options(_args(str(tmp_path)))
    assert opts == {"rows": 8, "seed": 1234, "image_size": 112, "reading_size": [224, 28]}
    assert _synthetic_options(_args(str(tmp_path), reading=[280, 56]))["reading_size"] == [280, 56]  # flag wins
    # Without one the options stay as before (an earlier run's output folder still resumes).
    assert "reading_size" not in _synthetic_options(_args("oracle"))
    samples = load_synthetic("", EvalConfig(synthetic={**opts, "rows": 40}))
    sizes = {s.fields["category"]: s.images[0].value.size for s in samples}
    assert sizes["reading"] == (224, 28) and sizes["counting"] == (112, 112)


def test_the_training_config_is_read_once(tmp_path, monkeypatch):
    # Both sizes come from one read of the model's folder (a Hub id is resolved once), and none when both flags
    # are given.
    from zamba2vl.eval import cli

    (tmp_path / "train_config.yaml").write_text("eval: {image_size: 112, reading_size: [224, 28]}\n")
    reads = []
    real = cli._train_eval_section
    monkeypatch.setattr(cli, "_train_eval_section", lambda model: reads.append(model) or real(model))
    assert _synthetic_options(_args(str(tmp_path)))["reading_size"] == [224, 28]
    assert reads == [str(tmp_path)]
    opts = _synthetic_options(_args(str(tmp_path), 168, [280, 56]))
    assert (opts["image_size"], opts["reading_size"], reads) == (168, [280, 56], [str(tmp_path)])


def test_reading_size_flag():
    parser = add_eval_arguments(argparse.ArgumentParser())
    args = parser.parse_args(["--model", "oracle", "--bench", "synthetic", "--synthetic-reading-size", "224x28"])
    assert args.synthetic_reading_size == [224, 28]
    for bad in ("224", "224x14", "56x28"):
        with pytest.raises(SystemExit):
            parser.parse_args(["--model", "oracle", "--bench", "synthetic", "--synthetic-reading-size", bad])


def test_banners_are_resized_by_the_models_own_processor():
    # A 224x28 reading banner has 6,272 pixels, under the usual floor of 10 merged tokens (7,840). The synthetic
    # benchmark sets no floor of its own: the model's processor decides, as in training. The shipped nano model's
    # (3,136) keeps the banner as drawn (one row of 8 tokens); a model trained with data.min_pixels 12,544 enlarges
    # it to 336x56 (2 rows of 12), as it saw it in training.
    from zamba2vl.eval.benchmarks import get_benchmark
    from zamba2vl.eval.runner import _request
    from zamba2vl.processing.image import ImageProcessor

    bench = get_benchmark("synthetic")
    sample = next(s for s in load_synthetic("", EvalConfig(synthetic={"rows": 8, "seed": 1234, "image_size": 112,
                                                                      "reading_size": [224, 28]}))
                  if s.fields["category"] == "reading")
    request = _request(bench, sample, EvalConfig())
    assert request.min_pixels is None and request.images[0].size == (224, 28)
    for floor, grid in ((3136, [1, 2, 16]), (112 * 112, [1, 4, 24])):
        out = ImageProcessor(min_pixels=floor)(request.images, min_pixels=request.min_pixels)
        assert out["image_grid_thw"].tolist() == [grid]
    # An explicit --min-pixels still wins.
    assert _request(bench, sample, EvalConfig(min_pixels=112 * 112)).min_pixels == 112 * 112
