"""optim.ema: an exponential moving average of the trained weights, in checkpoints and evaluations."""

from __future__ import annotations

import copy
import types

import pytest
import torch
from safetensors.torch import load_file
from trainkit import one_thread, stage_config, straight_and_resumed

from zamba2vl.errors import ConfigError
from zamba2vl.train.config import config_from_dict
from zamba2vl.train.checkpoints import STATE_FILE, load_model_weights
from zamba2vl.train.trainer import Trainer


def test_the_average_follows_its_formula_and_the_trained_weights_do_not_change(tmp_path, monkeypatch):
    config = stage_config(tmp_path / "run", optim={"ema": 0.7, "max_steps": 6})
    with one_thread():
        trainer = Trainer(config_from_dict(config), progress=False)
        names = list(trainer.averaged)
        assert names and all(not n.startswith(("objects", "match", "spell")) for n in names)
        expected = {n: p.detach().double().clone() for n, p in trainer.averaged.items()}
        for step in range(1, 7):
            trainer._train_step()
            d = min(0.7, (1 + step) / (10 + step))  # 0.18, 0.25, 0.31, 0.36, 0.4, 0.44, ... up to 0.7
            for n, p in trainer.averaged.items():
                expected[n] = d * expected[n] + (1 - d) * p.detach().double()
        for n in names:
            torch.testing.assert_close(trainer.ema[n].double(), expected[n], rtol=0, atol=1e-6)
        far = max((trainer.ema[n] - trainer.averaged[n]).abs().max().item() for n in names)
        assert far > 1e-4  # the average lags the trained weights: the comparison above is not vacuous

        # Saving writes the average as the folder's model and keeps training on the trained weights.
        before = {n: p.detach().clone() for n, p in trainer.averaged.items()}
        folder = trainer.save()
        for n, p in trainer.averaged.items():
            assert torch.equal(p, before[n]), n
        state = torch.load(folder / STATE_FILE, weights_only=True)
        assert set(state["ema_trained"]) == set(names)
        assert all(torch.equal(state["ema_trained"][n], before[n]) for n in names)
        # Evaluation during training sees the average too.
        seen = {}

        def evaluate(model, *args, **kwargs):
            seen.update({n: p.detach().clone() for n, p in model.named_parameters() if n in trainer.averaged})
            return types.SimpleNamespace(accuracy={"counting": 0.5}, samples=[])

        monkeypatch.setattr("zamba2vl.train.trainer.evaluate", evaluate)
        trainer.eval_examples = ["an example"]
        trainer.run_eval()
        assert set(seen) == set(names) and all(torch.equal(seen[n], trainer.ema[n]) for n in names)
        assert all(torch.equal(p, before[n]) for n, p in trainer.averaged.items())
        reread = copy.deepcopy(trainer.model)
        load_model_weights(reread, folder)  # the folder's model (Hub key names) is the average
        again = dict(reread.named_parameters())
        assert all(torch.equal(again[n], trainer.ema[n]) for n in names)


def test_a_killed_run_with_ema_resumes_exactly(tmp_path):
    def config(name, every):
        return stage_config(tmp_path / name, optim={"ema": 0.8, "max_steps": 8}, checkpoint={"every": every})

    straight, killed = straight_and_resumed(tmp_path, config)
    assert killed == straight and len(set(straight.values())) == 8
    # The last checkpoints (the averages) are the same tensors, bit for bit.
    final = [load_file(tmp_path / run / "checkpoints" / "step-000008" / "model.safetensors")
             for run in ("straight", "killed")]
    assert final[0].keys() == final[1].keys()
    assert all(torch.equal(final[0][k], final[1][k]) for k in final[0])


def test_resuming_with_other_ema_settings_is_refused(tmp_path):
    plain = stage_config(tmp_path / "run", optim={"max_steps": 2}, checkpoint={"every": 2})
    with one_thread():
        Trainer(config_from_dict(plain), progress=False).train()
        averaged = stage_config(tmp_path / "run", optim={"max_steps": 4, "ema": 0.9})
        with pytest.raises(ConfigError, match="written by a run without optim.ema, and this run's optim.ema is 0.9"):
            Trainer(config_from_dict(averaged), resume=True, progress=False)


@pytest.mark.parametrize("decay", [1.0, -0.1])
def test_a_decay_outside_0_1_is_refused(tmp_path, decay):
    with pytest.raises(ConfigError, match="optim.ema"):
        config_from_dict(stage_config(tmp_path / "run", optim={"ema": decay}))
