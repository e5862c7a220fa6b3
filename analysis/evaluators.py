"""Your own benchmarks during training: :class:`SuiteEvaluator` evaluates the suites that
``python -m analysis zeroshot --suite ...`` reads (an image folder, CIFAR, a Karpathy JSON, a
folder in CLIP_benchmark's format, ShapesWorld, digits ...) at a run's evaluation passes, with the
same functions (``analysis.zeroshot``), so a curve logged during training ends at the number the
analysis gives for the final checkpoint (tests/test_evaluation.py checks it on a CLIP_benchmark
folder).

Declared in a run's YAML next to the built-in evaluators (``model.evaluators`` replaces the
default list, so list those you keep)::

    model:
      evaluators:
        - class_path: variants.evaluation.ZeroShot
        - class_path: variants.evaluation.Retrieval
        - class_path: analysis.evaluators.SuiteEvaluator
          init_args: {suites: ["clip_benchmark:/data/wds_pets"], every_n_steps: 500}

Metrics: ``<prefix>/<suite>/<metric>`` with CLIP_benchmark's metric names (acc1, acc5,
mean_per_class_recall; text_retrieval_recall@k, image_retrieval_recall@k), default prefix
"benchmark". Every process evaluates the whole suite (no collective, so equal everywhere); the
suites are read once, at the first pass, with the run's tokenizer and image transform.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from analysis.checkpoint import LoadedCheckpoint
from analysis.embed import EmbedOptions
from analysis.suite_specs import SuiteOptions, load_suites
from analysis.zeroshot import zeroshot_classification, zeroshot_retrieval
from common.errors import UserError
from common.evaluation import SPLITS, Evaluator, missing_contract
from datamodules.suites import ClassificationSuite, RetrievalSuite


class SuiteEvaluator(Evaluator):
    """Zero-shot classification and retrieval on analysis suites during training.

    Args:
        suites: suite specs as ``python -m analysis zeroshot --suite`` takes them, e.g.
            ``imagefolder:DIR``.
        templates: a templates file (text with ``{c}`` or ``{}`` for the class name, or
            CLIP_benchmark's template JSON) for imagefolder and clip_benchmark suites, as
            ``--templates``.
        classnames: CLIP_benchmark's class names JSON for those suites, as ``--classnames``.
        images_root: where the image paths of a Karpathy JSON start, as ``--images-root``.
        samples: items per ShapesWorld task (None: the run's ``test_samples``).
        batch_size: images per forward pass.
        prefix, splits, every_n_steps: as every evaluator (``common.evaluation.Evaluator``).
    """

    def __init__(
        self,
        suites: Sequence[str],
        templates: str | None = None,
        classnames: str | None = None,
        images_root: str | None = None,
        samples: int | None = None,
        batch_size: int = 256,
        prefix: str = "benchmark",
        splits: Sequence[str] = SPLITS,
        every_n_steps: int | None = None,
    ) -> None:
        super().__init__(prefix, splits, every_n_steps)
        if not suites or isinstance(suites, str):
            raise UserError("SuiteEvaluator: suites is a list of suite specs, e.g. [imagefolder:/data/pets]")
        self.specs = list(suites)
        self.options = SuiteOptions(
            samples=samples, templates=templates, classnames=classnames, images_root=images_root
        )
        self.embed = EmbedOptions(batch_size=batch_size)
        self._suites: list[ClassificationSuite | RetrievalSuite] | None = None

    def setup(self, model: Any, data: Any) -> None:
        """Read and check the suites (folders, templates against the run's tokenizer) before training."""
        self._suites = load_suites(self.specs, _as_loaded(model, data, 0), self.options)

    def evaluate_model(self, model: Any, data: Any, stage: str, step: int) -> dict[str, float]:
        loaded = _as_loaded(model, data, step)
        if self._suites is None:  # a validate or test run without fit
            self._suites = load_suites(self.specs, loaded, self.options)
        metrics: dict[str, float] = {}
        for suite in self._suites:
            if isinstance(suite, ClassificationSuite):
                result = zeroshot_classification(loaded, suite, options=self.embed)
            else:
                result = zeroshot_retrieval(loaded, suite, options=self.embed)
            for key, value in result["metrics"].items():
                if value is not None:  # acc5 below 5 classes, recall@k at k >= the candidates
                    metrics[f"{self.prefix}/{suite.name}/{key}"] = float(value)
        return metrics


def _as_loaded(model: Any, data: Any, step: int) -> LoadedCheckpoint:
    """The live run as the analysis sees a checkpoint: the module, the data's tokenizer and transform."""
    if data is None or missing_contract(data):
        raise UserError(
            "SuiteEvaluator needs the run's datamodule (its tokenizer and image transform) to read its suites; "
            "fit with a suite datamodule (data.class_path)"
        )
    return LoadedCheckpoint.of(model, data, Path("."), "training", step)
