"""A run SIGKILLed after a checkpoint and resumed writes the same losses as an uninterrupted run (CPU float32)."""

from __future__ import annotations

import json
import signal

from trainkit import finish, losses, run_train, stage_config, start_train, write_config

from zamba2vl.train import synthetic
from zamba2vl.train.trainer import KILL_ENV


def mixed_config(tmp_path, name, every):
    """Synthetic examples plus a 3-record JSONL (with one bad line), so the resumed sampler has to continue
    both sources, the JSONL one across epochs of its permutation, and the skip count."""
    data = tmp_path / "jsonl"
    if not data.exists():
        path = synthetic.to_jsonl(synthetic.generate(n=3, seed=9, image_size=56), data)
        path.write_text(path.read_text() + "{not json\n")
    return stage_config(tmp_path / name, optim={"max_steps": 22}, checkpoint={"every": every},
                        data={"sources": [{"type": "synthetic", "image_size": 56, "seed": 5, "weight": 1},
                                          {"type": "jsonl", "path": str(data / "data.jsonl"), "weight": 2}]})


def test_sigkilled_run_resumes_with_the_same_losses(tmp_path):
    config = write_config(tmp_path / "killed.yaml", mixed_config(tmp_path, "killed", every=2))
    # The uninterrupted run (no checkpoint until its end) and the one that dies run side by side, a thread each.
    straight = start_train(write_config(tmp_path / "straight.yaml", mixed_config(tmp_path, "straight", every=0)))
    first = finish(start_train(config, extra_env={KILL_ENV: "3"}))
    assert first.returncode == -signal.SIGKILL, first.stderr[-3000:]
    run = tmp_path / "killed"
    assert sorted(p.name for p in (run / "checkpoints").iterdir() if p.name.startswith("step-")) == ["step-000002"]
    assert sorted(losses(run)) == [1, 2, 3]  # step 3 was logged, then the process died without a checkpoint

    resumed = run_train(config, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    straight = finish(straight)
    assert straight.returncode == 0, straight.stderr[-3000:]
    assert "resumed from" in resumed.stderr and "step-000002 at step 2" in resumed.stderr

    a, b = losses(tmp_path / "straight"), losses(run)
    assert sorted(b) == list(range(1, 23))  # the log was cut back to the checkpoint, then continued
    assert [b[s] for s in range(3, 23)] == [a[s] for s in range(3, 23)]  # the 20 steps after it, exactly
    assert [b[1], b[2]] == [a[1], a[2]]
    assert len(set(a.values())) == 22  # the steps do differ: equality is not vacuous

    rows = [json.loads(line) for line in (run / "loss.jsonl").read_text().splitlines()]
    assert all(r["skipped"] == 1 for r in rows)  # the bad JSONL line, counted once and reported every step
    skipped = [json.loads(line) for line in (run / "skipped.jsonl").read_text().splitlines()]
    assert [(s["where"].rsplit("/", 1)[-1], s["step"]) for s in skipped] == [("data.jsonl:4", None)]
    assert (run / "loss.png").stat().st_size > 0


def test_a_run_with_prefetch_writes_the_same_losses(tmp_path):
    from zamba2vl.train.config import config_from_dict
    from zamba2vl.train.trainer import Trainer

    runs = {}
    for prefetch in (False, True):
        config = mixed_config(tmp_path, f"prefetch_{prefetch}", every=0)
        config["optim"]["max_steps"] = 5
        config["data"]["prefetch"] = prefetch
        summary = Trainer(config_from_dict(config), progress=False).train()
        rows = [json.loads(line) for line in open(tmp_path / f"prefetch_{prefetch}" / "loss.jsonl")]
        runs[prefetch] = ([(r["loss"], r["skipped"]) for r in rows], summary["skipped"])
    assert len(runs[False][0]) == 5 and runs[True] == runs[False]
    assert runs[False][1] >= 1  # the bad JSONL line was met and counted in both
