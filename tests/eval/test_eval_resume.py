"""Killing a run half-way and running it again gives the same files, without re-generating rows."""

import json
import subprocess
import sys

import pytest

from zamba2vl.eval.fixtures import png_b64

SCRIPT = r"""
import json, os, signal, sys
from zamba2vl.eval.benchmarks import EvalConfig, get_benchmark
from zamba2vl.eval.predictors import AnswerPredictor
from zamba2vl.eval.runner import RunSettings, load_samples, run_benchmark

data, out, answers, kill_after = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), int(sys.argv[4])

class Dying(AnswerPredictor):
    def generate(self, requests):
        if kill_after and self.calls >= kill_after:
            os.kill(os.getpid(), signal.SIGKILL)  # a hard kill: no cleanup, no flush
        return super().generate(requests)

bench = get_benchmark("seedbench_img")
samples = load_samples(bench, data, EvalConfig())
predictor = Dying(answers)
run_benchmark(bench, samples, predictor, out, EvalConfig(), RunSettings(model="m", batch_size=3, progress=False))
print("GENERATED", predictor.calls)
"""


def make_data(tmp_path, n=20):
    lines = ["index\timage\tquestion\tA\tB\tC\tanswer\tcategory"]
    for i in range(n):
        lines.append(f"{i}\t{png_b64(i)}\tq{i}\tred\tgreen\tblue\t{'ABC'[i % 3]}\tc{i % 2}")
    lines.append(f"{n}\t{'x' * 80}\tbroken\tred\tgreen\tblue\tA\tc0")  # undecodable image
    path = tmp_path / "seed.tsv"
    path.write_text("\n".join(lines) + "\n")
    return path, {str(i): "ABCA"[i % 4] for i in range(n)}


def run(data, out, answers, kill_after=0):
    return subprocess.run([sys.executable, "-c", SCRIPT, str(data), str(out), json.dumps(answers), str(kill_after)],
                          capture_output=True, text=True, timeout=120)


def test_kill_and_resume_matches_an_uninterrupted_run(tmp_path):
    data, answers = make_data(tmp_path)
    full = run(data, tmp_path / "full", answers)
    assert full.returncode == 0 and "GENERATED 20" in full.stdout

    killed = run(data, tmp_path / "resumed", answers, kill_after=6)
    assert killed.returncode == -9  # SIGKILL
    part = tmp_path / "resumed" / "predictions.part000.jsonl"
    assert len(part.read_text().splitlines()) == 6  # two batches of three made it to disk
    with open(part, "a") as f:
        f.write('{"index": 6, "predic')  # and a write cut off by the kill

    resumed = run(data, tmp_path / "resumed", answers)
    assert resumed.returncode == 0, resumed.stderr
    assert "GENERATED 14" in resumed.stdout  # 21 rows - 6 done - 1 corrupt (never generated)
    for name in ("results.json", "predictions.jsonl", "results.md"):
        assert (tmp_path / "resumed" / name).read_bytes() == (tmp_path / "full" / name).read_bytes(), name
    results = json.loads((tmp_path / "full" / "results.json").read_text())
    assert results["corrupt"]["rows"][0]["index"] == 20
    # rows 0-19: prediction "ABCA"[i % 4] vs answer "ABC"[i % 3] agree for i in 0-3 and 12-15
    assert results["score"] == pytest.approx(100 * 8 / 21)

    again = run(data, tmp_path / "resumed", answers)  # a finished run generates nothing
    assert "GENERATED 0" in again.stdout
