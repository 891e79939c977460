"""Stage configs, freezing per stage, parameter groups and the learning-rate schedule."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from trainkit import one_thread, stage_config, tiny_vl_config, write_config

from zamba2vl.errors import ConfigError
from zamba2vl.train.build import random_model
from zamba2vl.train.config import config_from_dict, load_config
from zamba2vl.train.optim import apply_freeze, lr_factor, make_optimizer, make_scheduler, param_groups

CONFIGS = Path(__file__).parents[2] / "configs" / "train"


@pytest.fixture(scope="module")
def model():
    config = tiny_vl_config()
    with one_thread():
        return random_model(config)


def trainable_parts(model, config) -> set[str]:
    apply_freeze(model, config)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    parts = set()
    for n in names:
        parts.add("merger" if n.startswith("vision_tower.merger.") else n.split(".")[0])
    return parts


@pytest.mark.parametrize("stage, freeze, expected", [
    ("align", {}, {"merger"}),
    ("pretrain", {}, {"vision_tower", "merger", "language_model"}),
    ("sft", {}, {"merger", "language_model"}),
    ("sft", {"vision_tower": False, "language_model": True}, {"vision_tower", "merger"}),
])
def test_stage_and_freeze_flags_pick_the_trained_parts(model, tmp_path, stage, freeze, expected):
    config = config_from_dict(stage_config(tmp_path, stage=stage, freeze=freeze))
    assert trainable_parts(model, config) == expected


def test_everything_frozen_is_an_error(model, tmp_path):
    config = config_from_dict(stage_config(tmp_path, stage="align", freeze={"merger": True}))
    with pytest.raises(ValueError, match="every part is frozen"):
        apply_freeze(model, config)


def test_param_groups_decay_matrices_only_and_scale_lr_per_part(model, tmp_path):
    config = config_from_dict(stage_config(tmp_path, optim={"lr": 1e-3, "weight_decay": 0.1,
                                                            "lr_scale": {"vision_tower": 0.5}}))
    apply_freeze(model, config)
    groups = {g["name"]: g for g in param_groups(model, config.optim)}
    assert list(groups) == ["vision_tower", "vision_tower.no_decay", "merger", "merger.no_decay",
                            "language_model", "language_model.no_decay"]
    assert all(p.dim() >= 2 for g in groups.values() if g["weight_decay"] for p in g["params"])
    assert all(p.dim() == 1 for g in groups.values() if not g["weight_decay"] for p in g["params"])
    assert groups["vision_tower"]["lr"] == 5e-4 and groups["merger"]["lr"] == 1e-3
    assert sum(len(g["params"]) for g in groups.values()) == len(list(model.parameters()))


def test_warmup_then_cosine(model, tmp_path):
    assert [lr_factor(s, 4, 20, 0.1) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_factor(12, 4, 20, 0.1) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lr_factor(20, 4, 20, 0.1) == pytest.approx(0.1) and lr_factor(50, 4, 20, 0.1) == pytest.approx(0.1)
    config = config_from_dict(stage_config(tmp_path, optim={"lr": 2e-3, "warmup_steps": 2, "max_steps": 6}))
    apply_freeze(model, config)
    opt = make_optimizer(model, config.optim)
    sched = make_scheduler(opt, config.optim)
    seen = []
    for _ in range(6):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx([2e-3 * lr_factor(s, 2, 6, 0.1) for s in range(6)])


def test_config_errors_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"optim\.lrr: unknown key"):
        config_from_dict(stage_config(tmp_path, optim={"lrr": 1}))
    with pytest.raises(ConfigError, match=r"data\.sources\[0\]\.wieght: unknown key"):
        config_from_dict(stage_config(tmp_path, data={"sources": [{"type": "synthetic", "wieght": 2}]}))
    with pytest.raises(ConfigError, match="stage: 'finetune' is not a stage"):
        config_from_dict(stage_config(tmp_path, stage="finetune"))
    with pytest.raises(ConfigError, match=r"batch\.global_batch_size=6 does not split over 4"):
        config_from_dict(stage_config(tmp_path, batch={"global_batch_size": 6})).accumulation(4)
    with pytest.raises(ConfigError, match="would be training examples"):
        config_from_dict(stage_config(tmp_path, eval={"every": 5, "seed": 5}))
    for bad in ([224], [224, 14], [56, 28], ["224", 28]):
        with pytest.raises(ConfigError, match=r"data\.sources\[0\]\.reading_size: .*\[width, height\]"):
            config_from_dict(stage_config(tmp_path, data={"sources": [{"type": "synthetic", "reading_size": bad}]}))
    with pytest.raises(ConfigError, match=r"eval\.reading_size"):
        config_from_dict(stage_config(tmp_path, eval={"reading_size": [28, 28]}))
    ok = config_from_dict(stage_config(tmp_path, data={"sources": [{"type": "synthetic", "reading_size": [224, 28]}]}))
    assert ok.data.sources[0].reading_size == [224, 28]


def test_yaml_and_set_overrides(tmp_path):
    path = write_config(tmp_path / "c.yaml", stage_config(tmp_path / "run"))
    config = load_config(path, ["optim.lr=1e-5", "batch.micro_batch_size=1", "freeze.merger=true"])
    assert config.optim.lr == 1e-5 and config.batch.micro_batch_size == 1 and config.freeze.merger is True
    assert config.accumulation(1) == 2 and config.accumulation(2) == 1


@pytest.mark.parametrize("name", sorted(p.name for p in CONFIGS.glob("*.yaml")))
def test_shipped_stage_configs_parse(name):
    config = load_config(CONFIGS / name)
    assert config.data.sources and config.optim.max_steps > 0
    config.accumulation(1)


def test_bf16_is_flagged_where_the_cpu_would_emulate_it(monkeypatch):
    import torch

    from zamba2vl.train import trainer

    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    monkeypatch.setattr(trainer, "cpu_has_native_gemm", lambda dtype: False)
    assert trainer.emulated_bf16("bf16", cpu)
    assert not trainer.emulated_bf16("auto", cpu) and not trainer.emulated_bf16("none", cpu)
    assert not trainer.emulated_bf16("bf16", gpu)
    assert trainer.resolve_autocast("auto", cpu) is None  # auto keeps fp32 there
    monkeypatch.setattr(trainer, "cpu_has_native_gemm", lambda dtype: True)
    assert not trainer.emulated_bf16("bf16", cpu) and trainer.resolve_autocast("auto", cpu) == torch.bfloat16
