"""A short align run end to end: frozen parts keep their weights, the checkpoint is a loadable Hub model."""

from __future__ import annotations

import json

import torch
from trainkit import stage_config, train_in_process

from zamba2vl.config import Zamba2VLConfig, load_config_json
from zamba2vl.model import Zamba2VL
from zamba2vl.processing.processor import Processor
from zamba2vl.train.build import random_model

def test_align_trains_only_the_merger(tmp_path):
    config = stage_config(tmp_path / "run", stage="align", optim={"max_steps": 2, "lr": 1e-2},
                          precision={"autocast": "bf16", "gradient_checkpointing": True},
                          eval={"at_end": True, "n_per_task": 1, "max_new_tokens": 2})
    summary = train_in_process(config)
    assert summary["step"] == 2 and set(summary["eval"]) == {"counting", "reading", "bar_chart", "grounding",
                                                             "overall"}
    folder = tmp_path / "run" / "checkpoints" / "step-000002"
    trained = Zamba2VL.from_pretrained(folder)
    start = random_model(Zamba2VLConfig.from_dict(load_config_json(folder)), seed=0)  # model.init_seed 0
    changed = {name for name, value in trained.state_dict().items() if not torch.equal(value, start.state_dict()[name])}
    assert changed and all(name.startswith("vision_tower.merger.") for name in changed)
    assert Processor.from_pretrained(folder).image_token_id == 32000  # the checkpoint carries its processor

    rows = [json.loads(line) for line in (tmp_path / "run" / "loss.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and rows[0]["lr"] == 5e-3  # warmup: 2 steps to the peak
    assert (tmp_path / "run" / "eval.jsonl").is_file() and (tmp_path / "run" / "loss.png").is_file()
