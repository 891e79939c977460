"""torchrun --nproc-per-node 2 gives the same files as one process."""

import os
import subprocess
import sys
from pathlib import Path

DATA = Path(__file__).parent / "data" / "bench" / "mmmu_val"


def test_two_processes_match_one(tmp_path):
    common = ["-m", "zamba2vl.eval", "--model", f"answers:{DATA / 'answers.json'}", "--bench", "mmmu_val",
              "--data", str(DATA / "MMMU_DEV_VAL.tsv"), "--batch-size", "1", "--no-progress", "--model-size", "1.2B"]
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}
    env.pop("RANK", None), env.pop("WORLD_SIZE", None)
    one = subprocess.run([sys.executable, *common, "--out", str(tmp_path / "one")], capture_output=True, text=True,
                         env=env, timeout=60)
    assert one.returncode == 0, one.stderr
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                          *common, "--out", str(tmp_path / "two")], capture_output=True, text=True, env=env,
                         timeout=120)
    assert two.returncode == 0, two.stderr[-3000:]
    parts = sorted(p.name for p in (tmp_path / "two" / "mmmu_val").glob("predictions.part*.jsonl"))
    assert parts == ["predictions.part000.jsonl", "predictions.part001.jsonl"]  # both ranks generated
    for name in ("results.json", "predictions.jsonl", "results.md"):
        one_file, two_file = tmp_path / "one" / "mmmu_val" / name, tmp_path / "two" / "mmmu_val" / name
        assert two_file.read_bytes() == one_file.read_bytes(), name
    assert two.stdout.count("| MMMU (val) |") == 1  # only rank 0 prints the table
    assert "| MMMU (val) | accuracy | 66.67 | 32.4 | +34.27 | 4 | 0 |" in two.stdout
