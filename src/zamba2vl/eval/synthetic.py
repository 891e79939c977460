"""The `synthetic` benchmark: held-out examples of the training issue's synthetic tasks
(`zamba2vl.train.synthetic`), scored by that module's own `score`, so the small model the project ships
can be evaluated offline end to end. Options: --synthetic-rows, --synthetic-seed (keep it different from
the training seed), --synthetic-image-size, --synthetic-reading-size.
"""

from __future__ import annotations

import numpy as np

from zamba2vl.eval.benchmarks import Benchmark, EvalConfig, register
from zamba2vl.eval.data import EvalSample, ImageRef
from zamba2vl.eval.scorers.base import Graded, ScoreReport
from zamba2vl.train import synthetic as tasks


def load_synthetic(_: str, config: EvalConfig) -> list[EvalSample]:
    opts = {"rows": 64, "seed": 1234, "image_size": 224, "reading_size": None, **config.synthetic}
    samples = []
    for ex in tasks.generate(tasks.TASKS, n=opts["rows"], seed=opts["seed"], image_size=opts["image_size"],
                             reading_size=opts["reading_size"]):
        fields = {"question": ex.question, "answer": ex.answer, "category": ex.task, "example": ex}
        samples.append(EvalSample(index=ex.id, fields=fields, images=[ImageRef("pil", ex.image)]))
    return samples


class SyntheticScore:
    name = "accuracy"

    def score(self, rows: list[Graded]) -> ScoreReport:
        hits = [0.0 if g.corrupt else float(tasks.score(g.sample.fields["category"], str(g.prediction),
                                                         g.sample.fields["example"])) for g in rows]
        metrics = {"Overall": float(np.mean(hits) * 100)} if hits else {"Overall": 0.0}
        for task in sorted({g.sample.fields["category"] for g in rows}):
            sub = [h for g, h in zip(rows, hits) if g.sample.fields["category"] == task]
            metrics[task] = float(np.mean(sub) * 100)
        return ScoreReport(metrics, "Overall", hits)


register(Benchmark(
    "synthetic", "Synthetic tasks", None, None,
    "Generated in memory from zamba2vl.train.synthetic; no file needed.", "synthetic",
    lambda c: SyntheticScore(), lambda s, c: s.question + (c.prompt_suffix or ""),
    # The images are drawn at the size the model was trained at (multiples of 28), so the floor is the model's own
    # processor's (min_pixels None): a model trained on them as drawn keeps them so, down to a 224x28 reading banner
    # (6,272 pixels; the usual floor of 10 tokens would enlarge it to another grid), and one trained with a higher
    # floor (the train config's data.min_pixels, saved in its preprocessor_config.json) enlarges them as it did.
    max_new_tokens=48, min_pixels=None, load=load_synthetic))
