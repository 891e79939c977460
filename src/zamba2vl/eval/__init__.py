"""Evaluation on the 14 benchmarks of the Zamba2-VL report, scored as the reference harnesses score them.

Entry points: `zamba2vl eval` (see `zamba2vl.eval.cli`), `run_benchmark` for a Python caller, the
scorers in `zamba2vl.eval.scorers`. Nothing here downloads anything or imports the model until a run
actually needs it. See docs/EVAL.md.
"""

from zamba2vl.eval.benchmarks import BENCHMARKS, Benchmark, EvalConfig, get_benchmark
from zamba2vl.eval.data import EvalSample, read_rows
from zamba2vl.eval.predictors import AnswerPredictor, EvalRequest, ModelPredictor, Predictor
from zamba2vl.eval.runner import RunSettings, load_samples, run_benchmark

__all__ = [
    "AnswerPredictor", "BENCHMARKS", "Benchmark", "EvalConfig", "EvalRequest", "EvalSample", "ModelPredictor",
    "Predictor", "RunSettings", "get_benchmark", "load_samples", "read_rows", "run_benchmark",
]
