"""Evaluation during training: greedy answers to held-out synthetic examples, accuracy per task.

A handful of examples per task (from ``eval.seed``, which no training source uses) are answered in one
left-padded batch by ``zamba2vl.generation.generate`` and scored with ``synthetic.score``. It is meant to be
cheap enough to run every few hundred steps: a few rows and a short ``max_new_tokens``. It runs in the
model's own dtype (float32 master weights), without autocast: the decode path updates caches in place,
which autocast's casts do not reach.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from zamba2vl.generation import GenerationConfig, generate
from zamba2vl.model import Zamba2VL
from zamba2vl.processing.processor import Processor
from zamba2vl.train import synthetic
from zamba2vl.train.config import EvalSection
from zamba2vl.train.sources import example_messages


@dataclass
class EvalResult:
    accuracy: dict[str, float]  # per task and "overall", in [0, 1]
    samples: list[dict]  # id, task, answer, prediction, score


def held_out_examples(section: EvalSection) -> list[synthetic.SyntheticExample]:
    """``n_per_task`` examples of each task: indices 0.. of ``make_example`` under the eval seed."""
    tasks = section.tasks or synthetic.TASKS
    return [synthetic.make_example(task, section.seed, i, section.image_size, reading_size=section.reading_size)
            for task in tasks for i in range(section.n_per_task)]


@torch.no_grad()
def evaluate(model: Zamba2VL, processor: Processor, examples: list[synthetic.SyntheticExample], *,
             max_new_tokens: int, batch_size: int = 16) -> EvalResult:
    was_training = model.training
    model.eval()
    config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False)
    samples = []
    try:
        for start in range(0, len(examples), batch_size):
            chunk = examples[start : start + batch_size]
            inputs = processor.process_messages([example_messages(ex, with_answer=False) for ex in chunk])
            extra = inputs.model_inputs()
            ids, mask = extra.pop("input_ids").to(model.device), extra.pop("attention_mask").to(model.device)
            extra = {k: v.to(model.device) for k, v in extra.items()}
            result = generate(model, ids, mask, config, processor.tokenizer, **extra)
            for ex, text in zip(chunk, result.texts):
                samples.append({"id": ex.id, "task": ex.task, "answer": ex.answer, "prediction": text,
                                "score": synthetic.score(ex.task, text, ex)})
    finally:
        model.train(was_training)
    accuracy = {}
    for task in dict.fromkeys(s["task"] for s in samples):
        scores = [s["score"] for s in samples if s["task"] == task]
        accuracy[task] = sum(scores) / len(scores)
    accuracy["overall"] = sum(s["score"] for s in samples) / max(1, len(samples))
    return EvalResult(accuracy, samples)
