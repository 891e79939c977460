"""One small module per metric; each reproduces the scoring code of the harness named in its docstring."""

from zamba2vl.eval.scorers.anls import ANLS
from zamba2vl.eval.scorers.base import Graded, ScoreReport, Scorer
from zamba2vl.eval.scorers.choice import ChoiceAccuracy, extract_choice
from zamba2vl.eval.scorers.counting import CountingAccuracy
from zamba2vl.eval.scorers.mathvista import MathVistaAccuracy
from zamba2vl.eval.scorers.ocrbench import OCRBenchScore
from zamba2vl.eval.scorers.relaxed import RelaxedAccuracy
from zamba2vl.eval.scorers.vqa_accuracy import TextVQAAccuracy, VQAv2Accuracy

__all__ = [
    "ANLS", "ChoiceAccuracy", "CountingAccuracy", "Graded", "MathVistaAccuracy", "OCRBenchScore",
    "RelaxedAccuracy", "ScoreReport", "Scorer", "TextVQAAccuracy", "VQAv2Accuracy", "extract_choice",
]
