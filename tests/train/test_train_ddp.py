"""torchrun with 2 CPU processes (gloo, DistributedDataParallel) trains like one process with the same global batch."""

from __future__ import annotations

from trainkit import finish, losses, stage_config, start_train, train_in_process, write_config

def test_two_processes_reach_the_loss_of_one(tmp_path, capsys):
    # Global batch 4: one process runs 4 micro-batches of 1, each of the two runs its shard as 2 micro-batches
    # (so accumulation under no_sync is covered too). The single process runs here, beside torchrun.
    section = dict(batch={"global_batch_size": 4, "micro_batch_size": 1}, optim={"max_steps": 10})
    two = start_train(write_config(tmp_path / "two.yaml", stage_config(tmp_path / "two", **section)), torchrun=2)
    train_in_process(stage_config(tmp_path / "one", **section))
    two = finish(two)
    assert two.returncode == 0, two.stderr[-3000:]
    assert "1 process(es) x 4 micro-batch(es) of 1" in capsys.readouterr().err
    assert "2 process(es) x 2 micro-batch(es) of 1" in two.stderr

    a, b = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert sorted(a) == sorted(b) == list(range(1, 11))
    assert abs(a[10] - b[10]) <= 1e-4
    assert max(abs(a[s] - b[s]) for s in a) <= 1e-4
    assert a[10] < a[1] - 0.05  # it did train
