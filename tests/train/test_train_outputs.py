"""What a run leaves behind: atomic checkpoints, RNG states, the loss-curve PNG, evaluation results."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from PIL import Image
from trainkit import one_thread, processor, tiny_vl_config

from zamba2vl.model import Zamba2VL
from zamba2vl.train import synthetic
from zamba2vl.train.build import random_model
from zamba2vl.train.checkpoints import (
    CheckpointWriter, latest_checkpoint, load_model_weights, load_trainer_state, rng_state, set_rng_state,
)
from zamba2vl.train.config import EvalSection
from zamba2vl.train.evaluate import evaluate, held_out_examples
from zamba2vl.train.plot import nice_ticks, plot_run, read_jsonl

@pytest.fixture(scope="module")
def model():
    config = tiny_vl_config()
    with one_thread():
        return random_model(config, seed=7)


def test_checkpoint_is_committed_by_rename_and_pruned(model, tmp_path):
    writer = CheckpointWriter(tmp_path / "ckpt", keep=2)
    for step in (5, 10, 15):
        writer.begin(step)
        writer.write_rank(step, 0)
        writer.commit(step, model, None, {"step": step})
    names = sorted(p.name for p in (tmp_path / "ckpt").iterdir())
    assert names == ["latest", "step-000010", "step-000015"]
    assert (tmp_path / "ckpt" / "latest").read_text().strip() == "step-000015"
    # Anything that takes a model folder also takes the run's `latest` pointer file.
    from zamba2vl.checkpoint import resolve_model_dir

    assert resolve_model_dir(tmp_path / "ckpt" / "latest") == tmp_path / "ckpt" / "step-000015"
    # A half-written checkpoint (the process died before the rename) is never picked.
    writer.begin(20)
    (writer.tmp(20) / "model.safetensors").write_bytes(b"partial")
    assert latest_checkpoint(tmp_path / "ckpt").name == "step-000015"
    # The committed folder is a Hub-layout model, and loads back into a live model exactly.
    folder = latest_checkpoint(tmp_path / "ckpt")
    other = random_model(model.config, seed=8)
    load_model_weights(other, folder)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), other.state_dict().values()))
    assert isinstance(Zamba2VL.from_pretrained(folder), Zamba2VL)
    state, rng = load_trainer_state(folder, rank=0)
    assert state == {"step": 15} and "torch" in rng
    with pytest.raises(Exception, match="fewer processes"):
        load_trainer_state(folder, rank=1)


def test_checkpoint_carries_the_run_config_for_eval(model, tmp_path):
    # `zamba2vl eval --model <checkpoint>` evaluates at the size the model was trained for, read from the folder.
    import argparse

    from zamba2vl.eval.cli import _synthetic_image_size

    writer = CheckpointWriter(tmp_path / "ckpt", keep=1)
    writer.begin(3)
    writer.write_rank(3, 0)
    folder = writer.commit(3, model, None, {"step": 3}, {"stage": "pretrain", "eval": {"image_size": 140}})
    assert (folder / "train_config.yaml").is_file()
    args = argparse.Namespace(model=str(folder), synthetic_image_size=None)
    assert _synthetic_image_size(args) == 140


def test_rng_states_round_trip():
    state = rng_state()
    first = (random.random(), np.random.rand(), torch.rand(3))
    set_rng_state(state)
    again = (random.random(), np.random.rand(), torch.rand(3))
    assert first[:2] == again[:2] and torch.equal(first[2], again[2])


def test_loss_curve_png(tmp_path):
    rows = [{"step": s, "loss": 10 * 0.97 ** s + 0.1 * (s % 3)} for s in range(1, 201)]
    evals = [{"step": s, "accuracy": {"counting": s / 400, "reading": 0.0, "overall": s / 800}} for s in (50, 100, 200)]
    (tmp_path / "loss.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 20')  # cut line
    assert read_jsonl(tmp_path / "loss.jsonl") == rows
    out = plot_run(read_jsonl(tmp_path / "loss.jsonl"), evals, tmp_path / "loss.png")
    image = Image.open(out)
    assert image.size == (960, 840)
    pixels = np.asarray(image.convert("RGB")).astype(int)
    blue = (np.abs(pixels - [31, 119, 180]).sum(-1) < 30).sum()  # the moving average's colour
    assert blue > 300
    assert plot_run(rows[:1], [], tmp_path / "one.png").is_file()
    assert nice_ticks(0, 200) == [0, 50, 100, 150, 200]
    assert nice_ticks(0.12, 0.9, 4) == pytest.approx([0.2, 0.4, 0.6, 0.8])


def test_evaluate_scores_held_out_examples_per_task(model):
    section = EvalSection(n_per_task=1, seed=77, image_size=56, tasks=["counting", "bar_chart"])
    examples = held_out_examples(section)
    assert [e.task for e in examples] == ["counting", "bar_chart"]
    assert examples[0].image.tobytes() == synthetic.make_example("counting", 77, 0, 56).image.tobytes()
    model.train()
    with one_thread():
        result = evaluate(model, processor(), examples, max_new_tokens=3)
    assert list(result.accuracy) == ["counting", "bar_chart", "overall"]
    for sample, ex in zip(result.samples, examples):
        assert sample["score"] == synthetic.score(ex.task, sample["prediction"], ex)
    assert model.training  # back in training mode after generating in eval mode


def test_loss_curve_shows_the_language_model_part_when_logged(tmp_path):
    # A run with the reconstruction objective logs lm_loss beside the total; its moving average is drawn in orange.
    rows = [{"step": s, "loss": 2 * 0.98 ** s + 0.3, "lm_loss": 2 * 0.98 ** s + 0.1} for s in range(1, 301)]
    orange = []
    for name, data in (("with", rows), ("without", [{"step": r["step"], "loss": r["loss"]} for r in rows])):
        image = np.asarray(Image.open(plot_run(data, [], tmp_path / f"{name}.png")).convert("RGB")).astype(int)
        plot = image[:, :-150]  # leave the legend out
        orange.append(int((np.abs(plot - [255, 127, 14]).sum(-1) < 30).sum()))
    assert orange[0] > 300 and orange[1] == 0, orange
