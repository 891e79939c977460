"""`zamba2vl demo` and the model that ships with the package (src/zamba2vl/assets/nano)."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
import yaml

from zamba2vl.checkpoint import resolve_model_dir
from zamba2vl.demo import DEMO_MODEL_DIR, EXAMPLES_DIR, shipped_reading_size, write_examples
from zamba2vl.train import synthetic

TRAIN_CONFIG = yaml.safe_load((DEMO_MODEL_DIR / "train_config.yaml").read_text())


def _demo(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "zamba2vl.cli", "demo", "--threads", "1", *args],
                          capture_output=True, text=True, timeout=timeout)


def test_shipped_model_is_small_and_complete():
    files = {p.name: p.stat().st_size for p in DEMO_MODEL_DIR.iterdir()}
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                 "chat_template.jinja", "preprocessor_config.json", "train_config.yaml"):
        assert name in files, name
    assert sum(files.values()) <= 25 * 1024**2
    assert resolve_model_dir("nano") == DEMO_MODEL_DIR


# The shipped model is two runs, the second from the first's last checkpoint (README, "The nano model"): the vision
# tower and merger from scratch on the objects objective alone, then the whole model.
STAGES = ("two_stage_vision.yaml", "two_stage.yaml")


def test_the_repository_configs_reproduce_the_shipped_model():
    # `zamba2vl train --config configs/train/X.yaml` for each stage in turn is the documented way to reproduce the
    # shipped model: each stage starts from the last checkpoint of the one before, and the last stage's settings are
    # the shipped run's own (train_config.yaml), all but where it writes and whether bars are drawn.
    import dataclasses
    from pathlib import Path

    from zamba2vl.train.config import config_from_dict

    root = Path(__file__).resolve().parents[1]
    folder = root / "configs" / "train"
    raws = [yaml.safe_load((folder / name).read_text()) for name in STAGES]
    # `make nano` runs the same stages in the same order and exports the last one's run.
    make = (root / "Makefile").read_text()
    assert re.search(r"^NANO_STAGES\s*:=\s*(.+)$", make, re.M).group(1).split() == [n[:-5] for n in STAGES]
    assert f"runs/{Path(raws[-1]['output_dir']).name}/checkpoints/latest" in make
    configs = [config_from_dict(raw) for raw in raws]
    assert configs[0].model.config and configs[0].model.path is None  # from scratch
    assert [c.stage for c in configs] == ["vision", "pretrain"]
    for before, after in zip(configs, configs[1:]):
        assert after.model.path == f"{before.output_dir}/checkpoints/latest"
    ours, shipped = (dataclasses.asdict(config_from_dict(raw)) for raw in (raws[-1], TRAIN_CONFIG))
    for settings in (ours, shipped):
        del settings["output_dir"], settings["data"]["progress"]
    assert ours == shipped
    # ... and the model's config.json is what the first stage built (the later ones keep its structure).
    model_config = json.loads((DEMO_MODEL_DIR / "config.json").read_text())
    for part in ("text_config", "vision_config"):
        asked = raws[0]["model"]["config"][part]
        assert asked and {k: model_config[part][k] for k in asked} == asked, part


def test_bundled_examples_are_the_demo_seed(tmp_path):
    # The committed images are exactly what write_examples makes (the seed is neither a training nor an eval seed).
    write_examples(tmp_path)
    ours = json.loads((EXAMPLES_DIR / "examples.json").read_text())
    assert json.loads((tmp_path / "examples.json").read_text()) == ours
    assert {r["task"] for r in ours} == set(synthetic.TASKS)
    from PIL import Image

    reading = shipped_reading_size()  # the reading examples are drawn on the canvas the shipped model reads
    for r in ours:
        if r["task"] == "reading" and reading:
            with Image.open(EXAMPLES_DIR / r["image"]) as a:
                assert list(a.size) == list(reading)
        if r["task"] != "reading":  # text pixels depend on the FreeType build
            with Image.open(EXAMPLES_DIR / r["image"]) as a, Image.open(tmp_path / r["image"]) as b:
                assert a.tobytes() == b.tobytes()


def test_demo_answers_the_bundled_images():
    out = _demo()
    assert out.returncode == 0, out.stderr
    records = json.loads((EXAMPLES_DIR / "examples.json").read_text())
    answers = [line.split("  answer: ", 1)[1].rsplit("   (", 1)[0]
               for line in out.stdout.splitlines() if line.startswith("  answer: ")]
    assert len(answers) == len(records)
    last = out.stdout.strip().splitlines()[-1]
    assert last.startswith(f"zamba2vl demo: {len(records)} answer(s)") and f"/{len(records)} as expected" in last
    # Whatever its accuracy (README, "The nano model"), the shipped model has learned each task's answer format:
    # a number, a lowercase word, a palette colour, and a box: Qwen2.5-VL JSON naming the asked object, or the bare
    # [x1, y1, x2, y2] when it was trained with grounding_format "box" (its train_config.yaml says which).
    for record, answer in zip(records, answers):
        task = record["task"]
        if task == "counting":
            assert answer.isdigit(), answer
        elif task == "reading":
            assert answer.isalpha() and answer.islower(), answer
        elif task == "bar_chart":
            assert answer in synthetic.COLORS, answer
        elif TRAIN_CONFIG["data"]["sources"][0].get("grounding_format", "json") == "box":
            assert re.fullmatch(r"\[\d+, \d+, \d+, \d+\]", answer), answer
        else:
            box = json.loads(answer)
            assert synthetic.parse_box(answer) is not None and len(box) == 1, answer
            assert box[0]["label"] in record["question"], (answer, record["question"])


def test_demo_on_user_images_reports_a_bad_one_and_goes_on(tmp_path):
    good = synthetic.make_example("bar_chart", 5, 0, 112)
    good.image.save(tmp_path / "chart.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    out = _demo("--image", str(tmp_path / "broken.png"), "--image", str(tmp_path / "chart.png"),
                "--question", good.question)
    assert out.returncode == 0, out.stderr
    assert "[broken.png]" in out.stdout and "error:" in out.stdout
    assert "[chart.png]" in out.stdout and out.stdout.count("  answer: ") == 1


def test_demo_with_a_missing_model_says_what_to_do(tmp_path):
    out = _demo("--model", str(tmp_path / "nowhere"))
    assert out.returncode != 0
    assert "nowhere" in (out.stderr + out.stdout)


def test_eval_of_the_shipped_model_on_the_synthetic_benchmark(tmp_path):
    # Offline end to end: the shipped model, the synthetic benchmark at the model's own image size, a table.
    out = subprocess.run([sys.executable, "-m", "zamba2vl.cli", "eval", "--model", "nano", "--bench", "synthetic",
                          "--synthetic-rows", "12", "--out", str(tmp_path), "--no-progress"],
                         capture_output=True, text=True, timeout=300, env={**__import__("os").environ,
                                                                             "HF_HUB_OFFLINE": "1"})
    assert out.returncode == 0, out.stderr
    assert "| Synthetic tasks | accuracy |" in out.stdout and "| 12 | 0 |" in out.stdout
    assert "Synthetic tasks by category: " in out.stdout
    result = json.loads((tmp_path / "summary.json").read_text())[0]
    assert result["rows"] == 12 and "Overall" in result["metrics"]
    assert set(result["metrics"]) - {"Overall"} <= set(synthetic.TASKS) and len(result["metrics"]) >= 3
    assert 0.0 <= result["score"] <= 100.0 and result["score"] == result["metrics"]["Overall"]
    predictions = [json.loads(line) for line in (tmp_path / "synthetic" / "predictions.jsonl").open()]
    assert len(predictions) == 12
