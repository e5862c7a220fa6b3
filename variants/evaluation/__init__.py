"""Evaluators of a datamodule's tasks, each one file (paper reference and what it logs in its
docstring); a run declares the ones it runs under ``model.evaluators`` in YAML
(``class_path: variants.evaluation.ZeroShot``), with a metric prefix, the splits it reads and how
often it runs (``common.evaluation.Evaluator``). Without a declaration a run runs
:func:`default_evaluators`, which log what every run logged before evaluators were declared.

Each receives one task's encoded records and the model's scoring (``common.evaluation``) and
returns named metrics; the module logs them. An evaluator that brings its own benchmark (a folder in
CLIP_benchmark's format, an image folder) is ``analysis.evaluators.SuiteEvaluator``.
"""

from common.evaluation import Evaluator
from variants.evaluation.crosslingual import CrossLingual
from variants.evaluation.linear_probe import LinearProbe
from variants.evaluation.modality_gap import ModalityGap
from variants.evaluation.retrieval import Retrieval
from variants.evaluation.zeroshot import ZeroShot

__all__ = ["CrossLingual", "Evaluator", "LinearProbe", "ModalityGap", "Retrieval", "ZeroShot", "default_evaluators"]


def default_evaluators() -> list[Evaluator]:
    """Every built-in evaluator at every validation and test pass."""
    return [ZeroShot(), Retrieval(), ModalityGap(), CrossLingual(), LinearProbe()]
