"""`zamba2vl demo`: answer questions about the bundled example images with the model that ships with the package.

The shipped model (``assets/nano``) is a small Zamba2-VL trained from scratch by this project's own pipeline on
the synthetic tasks of ``zamba2vl.train.synthetic`` (counting shapes, reading a word, the largest bar of a
chart, grounding a named shape), so it answers those kinds of questions about those kinds of images and
nothing else. The bundled images (``assets/examples``) come from a seed used neither in training nor in its
evaluation. Everything runs offline.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ASSETS = Path(__file__).parent / "assets"
DEMO_MODEL_DIR = ASSETS / "nano"
EXAMPLES_DIR = ASSETS / "examples"
DEMO_SEED = 424242  # the bundled examples' seed: not a training seed, not an evaluation seed


def shipped_reading_size() -> list[int] | None:
    """The reading task's canvas the shipped model was trained on (its train_config.yaml), or None (the image size)."""
    import yaml

    config = yaml.safe_load((DEMO_MODEL_DIR / "train_config.yaml").read_text(encoding="utf-8"))
    return config["data"]["sources"][0].get("reading_size")


def write_examples(folder: str | Path = EXAMPLES_DIR, per_task: int = 2, image_size: int = 112,
                   seed: int = DEMO_SEED, reading_size="shipped") -> Path:
    """Generate the bundled examples: ``per_task`` images of each synthetic task plus examples.json. The reading
    examples are drawn on ``reading_size`` (default: the canvas the shipped model reads, e.g. a 224 x 28 banner)."""
    from zamba2vl.train import synthetic

    if reading_size == "shipped":
        reading_size = shipped_reading_size()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    records = []
    for task in synthetic.TASKS:
        for i in range(per_task):
            ex = synthetic.make_example(task, seed, i, image_size, reading_size=reading_size)
            name = f"{task}-{i}.png"
            ex.image.save(folder / name)
            records.append({"image": name, "question": ex.question, "expected": ex.answer, "task": task})
    path = folder / "examples.json"
    path.write_text(json.dumps(records, indent=1) + "\n", encoding="utf-8")
    return path


def _load_examples(args: argparse.Namespace) -> list[dict]:
    if args.image:
        if len(args.question) not in (0, 1, len(args.image)):
            raise SystemExit("zamba2vl demo: give one --question for all images or one per --image")
        questions = args.question or ["How many shapes are in the image?"]
        if len(questions) == 1:
            questions = questions * len(args.image)
        return [{"image": str(Path(p).resolve()), "question": q, "expected": None}
                for p, q in zip(args.image, questions)]
    records = json.loads((EXAMPLES_DIR / "examples.json").read_text(encoding="utf-8"))
    for r in records:
        r["image"] = str(EXAMPLES_DIR / r["image"])
    return records


def add_demo_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="nano",
                   help="checkpoint folder or Hub id (default: nano, the model that ships with the package)")
    p.add_argument("--image", action="append", default=[], help="your own image(s) instead of the bundled ones")
    p.add_argument("--question", action="append", default=[], help="question(s) for --image")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--max-new-tokens", type=int, default=64)


def run_demo(args: argparse.Namespace) -> int:
    t_start = time.perf_counter()
    import torch

    from zamba2vl.checkpoint import SHIPPED_MODEL_NAME
    from zamba2vl.errors import Zamba2VLError
    from zamba2vl.pipeline import load

    model_name = getattr(args, "model", SHIPPED_MODEL_NAME)
    if model_name == SHIPPED_MODEL_NAME and not (DEMO_MODEL_DIR / "config.json").is_file():
        print(f"zamba2vl demo: the shipped model is missing ({DEMO_MODEL_DIR}); reinstall the package, or pass "
              "--model <checkpoint folder>", file=sys.stderr)
        return 1
    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    examples = _load_examples(args)
    vlm = load(model_name, dtype="float32")
    params = sum(p.numel() for p in vlm.model.parameters())
    print(f"zamba2vl demo: model {model_name} ({params / 1e6:.1f}M parameters, float32, {torch.get_num_threads()} "
          f"thread(s)), loaded in {vlm.load_seconds:.2f} s; {len(examples)} image(s)\n")
    from PIL import Image

    from zamba2vl.train import synthetic

    right = known = 0
    times = []
    for ex in examples:
        name = Path(ex["image"]).name
        try:
            with Image.open(ex["image"]) as im:
                image = im.convert("RGB")
            messages = [{"role": "user", "content": [{"type": "image", "image": image},
                                                     {"type": "text", "text": ex["question"]}]}]
            t0 = time.perf_counter()
            answer = vlm.chat(messages, max_new_tokens=getattr(args, "max_new_tokens", 64))
            dt = time.perf_counter() - t0
        except (OSError, Zamba2VLError) as e:
            print(f"[{name}] {ex['question']}\n  error: {e}\n")
            continue
        times.append(dt)
        line = f"[{name}] {ex['question']}\n  answer: {answer}   ({dt * 1000:.0f} ms)"
        if ex.get("expected") is not None:
            if ex.get("task") == "grounding":
                box, want = synthetic.parse_box(answer), synthetic.parse_box(ex["expected"])
                ok = box is not None and synthetic.box_iou(box, want) > 0.5
            else:
                ok = answer.strip() == ex["expected"]
            right += ok
            known += 1
            line += f"\n  expected: {ex['expected']}   {'right' if ok else 'WRONG'}"
        print(line + "\n")
    total = time.perf_counter() - t_start
    summary = f"zamba2vl demo: {len(times)} answer(s), {sum(times):.2f} s answering"
    if times:
        summary += f" ({sum(times) / len(times) * 1000:.0f} ms each on average)"
    if known:
        summary += f"; {right}/{known} as expected"
    print(summary + f"; {total:.1f} s in all (imports and loading included)")
    return 0
