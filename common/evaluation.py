"""The contracts of evaluation, in one place: what a datamodule asks the model to be evaluated on
(:class:`EvalTask`), what a datamodule must offer the model (:class:`ContrastiveData`), what an
evaluator receives (:class:`TaskRecords`, the :class:`Scoring` face of the model) and what an
evaluator is (:class:`Evaluator`).

The module gathers each task's items, encoded, and hands them to the evaluators a run declares
(``model.evaluators`` in YAML; ``variants.evaluation`` holds the built-in ones, and an evaluator
that brings its own benchmark is ``analysis.evaluators.SuiteEvaluator``). Evaluators compute
metrics; the module only logs them. Passing the model in as :class:`Scoring` keeps the imports
pointing one way: evaluators never import the module.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import KW_ONLY, dataclass, field
from typing import Any, ClassVar, Literal, Protocol, runtime_checkable

import torch

from common.errors import UserError
from common.records import Encoded

TaskKind = Literal["zeroshot", "retrieval", "crosslingual", "linear_probe", "probe_train"]
TASK_KINDS: tuple[str, ...] = ("zeroshot", "retrieval", "crosslingual", "linear_probe", "probe_train")
SPLITS = ("val", "test")


@dataclass(frozen=True)
class EvalTask:
    """One evaluation a datamodule asks for; its items come through the evaluation loader with
    "task" (the task's position in the list), "label" and the caption's token ids.

    name:      the metric prefix, "<kind>/<suite>_<split>[/<subtask>]", e.g.
               "zeroshot/shapesworld_val/shape"; an evaluator logs "<name>/<metric>".
    kind:      "zeroshot" (items: image + class label; ``prompts`` are the classifier),
               "retrieval" (image-caption items), "crosslingual" (see below), "linear_probe"
               (scored on its items, fitted on the "probe_train" task at ``fit_task``, which logs
               nothing itself).
    language:  the language of the task's texts (prompts, captions), e.g. "en", "zh", "both" for
               mixed captions, None where the data does not say; for "crosslingual" the
               language of the queries.
    target_language: "crosslingual" only: the language of the captions the queries retrieve.
               Its items come two per scene, each with the scene's image and one caption: the
               label is the scene, the item's ``target`` flag says the caption's language
               (``target_language`` when set, else ``language``).
    prompts:   "zeroshot" only: token ids [classes, templates, L].
    positives: "retrieval": the captions that count as right for an image: those identical to
               its own ("caption") or every caption of its class ("label", class-level captions).
    fit_task:  "linear_probe" only: the position of its "probe_train" task.
    """

    name: str
    kind: TaskKind
    _: KW_ONLY  # the rest by name: a new field cannot shift a caller's arguments
    language: str | None = None
    prompts: torch.Tensor | None = None
    positives: Literal["caption", "label"] = "caption"
    fit_task: int | None = None
    target_language: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in TASK_KINDS:
            raise UserError(f"evaluation task {self.name}: unknown kind {self.kind!r}; one of {', '.join(TASK_KINDS)}")
        needed = {"zeroshot": "prompts", "linear_probe": "fit_task", "crosslingual": "target_language"}
        if self.kind == "crosslingual" and self.language is None:
            raise UserError(f"evaluation task {self.name} (crosslingual) needs the language of its queries")
        if self.kind in needed and getattr(self, needed[self.kind]) is None:
            raise UserError(f"evaluation task {self.name} ({self.kind}) needs {needed[self.kind]}")

    @property
    def split_name(self) -> str:
        """The name without its kind: "shapesworld_val/shape" for "zeroshot/shapesworld_val/shape"."""
        return self.name.split("/", 1)[1] if "/" in self.name else self.name


@dataclass
class TaskRecords:
    """One task's evaluation items, encoded, gathered from every process, each item once.

    images: ``image`` [N, D] (and ``image_tokens`` when the scoring needs them);
    texts:  ``text`` [N, D] (and ``text_tokens`` + ``text_mask``) of each item's caption;
    labels: [N] int64 (-1 where the task has none); tokens: [N, L] the captions' token ids
    (identical captions are identical rows); target: [N] bool, the caption is in the task's
    target language (cross-lingual tasks; all False elsewhere).
    """

    images: Encoded
    texts: Encoded
    labels: torch.Tensor
    tokens: torch.Tensor
    target: torch.Tensor | None = None


class Scoring(Protocol):
    """What evaluators ask of the model; ``ContrastiveModule`` is one."""

    @property
    def device(self) -> torch.device: ...

    @property
    def scoring_needs(self) -> frozenset[str]: ...

    @property
    def scores_pairs(self) -> bool: ...

    def score(self, images: Encoded, texts: Encoded) -> tuple[torch.Tensor, torch.Tensor]: ...

    def zeroshot_scores(self, images: Encoded, prompts: Encoded, templates: int) -> torch.Tensor: ...

    def text_record(self, token_ids: torch.Tensor, tokens: bool = False) -> Encoded: ...


@dataclass
class TaskContext:
    """What an evaluator of a datamodule's task receives: the task, its records, the model's
    :class:`Scoring` and every task's records by position (a linear probe reads its fitting
    task's)."""

    task: EvalTask
    records: TaskRecords
    model: Scoring
    by_position: Mapping[int, TaskRecords] = field(default_factory=dict)


@runtime_checkable
class ContrastiveData(Protocol):
    """What the model reads from a datamodule besides its batches (``common.batch.Batch``): the
    tokenizer and image transform (evaluators that bring their own images and prompts use them),
    which optional batch fields it provides, and the evaluation tasks of a stage."""

    tokenizer: Callable[..., torch.Tensor]
    # PIL image or uint8 [3, H, W] -> float [3, H, W], with an ``image_size``; a datamodule whose
    # batches hold uint8 images also gives it ``normalize(uint8 [B, 3, H, W]) -> float``, which the
    # model applies per micro-batch (``ContrastiveModule.pixels``).
    image_transform: Any
    provides_views: bool
    provides_text_view: bool
    provides_mlm: bool

    def eval_tasks(self, stage: str) -> list[EvalTask]: ...


def missing_contract(data: object) -> list[str]:
    """The members of :class:`ContrastiveData` that ``data`` lacks (empty: it fulfils it)."""
    members = ("tokenizer", "image_transform", "provides_views", "provides_text_view", "provides_mlm", "eval_tasks")
    return [name for name in members if not hasattr(data, name)]


class Evaluator:
    """One evaluation a run declares under ``model.evaluators``.

    An evaluator of the datamodule's tasks lists their ``kinds`` and implements :meth:`evaluate`
    (one task's records -> named metrics); one that brings its own data has no kinds and
    implements :meth:`evaluate_model` instead (the model and the datamodule -> named metrics).

    Args:
        prefix: replaces the first part of the metric names ("zeroshot" in
            "zeroshot/shapesworld_val/shape/top1"); None keeps the evaluator's own.
        splits: the evaluation passes it runs in: "val" (during fit, and ``validate``) and/or
            "test".
        every_n_steps: during fit, run only at validation passes whose step is a multiple of
            this (the trainer must validate at those steps); None: at every validation pass.
            Passes outside fit (validate, test) always run it.
    """

    kinds: ClassVar[tuple[str, ...]] = ()
    default_prefix: ClassVar[str | None] = None

    def __init__(self, prefix: str | None = None, splits: Sequence[str] = SPLITS, every_n_steps: int | None = None):
        unknown = sorted(set(splits) - set(SPLITS))
        if unknown or not splits:
            raise UserError(f"{type(self).__name__}: splits takes some of {', '.join(SPLITS)}; got {list(splits)}")
        if every_n_steps is not None and not (isinstance(every_n_steps, int) and every_n_steps > 0):
            raise UserError(f"{type(self).__name__}: every_n_steps must be a positive number of steps or null")
        if prefix is not None and (not prefix or "/" in prefix):
            raise UserError(f"{type(self).__name__}: prefix is one word without '/', e.g. 'zeroshot'; got {prefix!r}")
        self.prefix = prefix if prefix is not None else self.default_prefix
        self.splits = tuple(splits)
        self.every_n_steps = every_n_steps

    @property
    def name(self) -> str:
        return type(self).__name__

    def due(self, stage: str, step: int, during_fit: bool) -> bool:
        """Whether it runs in this evaluation pass."""
        if stage not in self.splits:
            return False
        return not during_fit or self.every_n_steps is None or step % self.every_n_steps == 0

    def metric(self, task: EvalTask, key: str) -> str:
        """The logged name of metric ``key`` of ``task``."""
        kind = self.prefix or task.name.split("/", 1)[0]
        return f"{kind}/{task.split_name}/{key}"

    def setup(self, model: Any, data: Any) -> None:
        """Called once when a fit starts, before any training: read and check what the evaluator
        brings (a benchmark's files), so a mistake ends the run at once, not at its first pass."""

    def evaluate(self, context: TaskContext) -> dict[str, torch.Tensor]:
        """Metrics of one task of a kind in ``kinds``, keyed by their logged name."""
        raise NotImplementedError(f"{self.name} evaluates no datamodule task")

    def evaluate_model(self, model: Any, data: Any, stage: str, step: int) -> dict[str, float]:
        """Metrics of an evaluator that brings its own data, keyed by their logged name."""
        raise NotImplementedError(f"{self.name} brings no data of its own")
