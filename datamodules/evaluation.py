"""What a datamodule asks the model to be evaluated on.

A datamodule that offers ``eval_tasks(stage)`` returns a list of :class:`EvalTask` and serves
one evaluation loader over :class:`TaskDatasets` (the datasets of all its tasks as one).
``ContrastiveModule`` logs ``<name>/top1`` for "zeroshot" tasks, ``<name>/i2t_R@1``, ``<name>/t2i_R@1`` for
"retrieval" tasks, ``<name>/direct_R@k``, ``<name>/via_image_R@k`` (k = 1, 5, 10) for "crosslingual" tasks
and ``<name>/top1`` for "linear_probe" tasks: a linear probe (``variants.probe``) fitted on the images
of the "probe_train" task at position ``fit_task`` (which logs nothing) and scored on its own items.
One loader (not one per task) keeps Lightning's result table to one table.

A retrieval task counts as right for an image the captions identical to its own (``positives:
"caption"``) or every caption of its class (``"label"``, for class-level captions).

A "crosslingual" task's items are image-caption items like retrieval's, two per scene: item ``2 i``
holds scene i with its caption in the query language (English), item ``2 i + 1`` the same image with
its caption in the target language (Chinese), and each item's "label" is its position in the task
(so ``label // 2`` pairs them and ``label % 2`` is the language), e.g.
``datamodules.shapesworld.CrossLingualScenes``.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch.utils.data import Dataset


@dataclass(frozen=True)
class EvalTask:
    name: str  # metric prefix, e.g. "zeroshot/shapesworld_val/shape" or "retrieval/shapesworld_val"
    kind: Literal["zeroshot", "retrieval", "crosslingual", "linear_probe", "probe_train"]
    prompts: torch.Tensor | None = None  # zeroshot: token ids [classes, templates, L]
    positives: Literal["caption", "label"] = "caption"  # retrieval: which captions are right for an image
    fit_task: int | None = None  # linear_probe: the position of the "probe_train" task it is fitted on


class TaskDatasets(Dataset):
    """The datasets of several tasks as one; items gain "task" (position in the task list)
    and a suite-wide "index" (unique, so DDP padding duplicates can be dropped)."""

    def __init__(self, datasets: Sequence[Dataset]) -> None:
        self.datasets = datasets
        self.starts = [0]
        for dataset in datasets:
            self.starts.append(self.starts[-1] + len(dataset))  # type: ignore[arg-type]  # map-style: sized

    def __len__(self) -> int:
        return self.starts[-1]

    def __getitem__(self, index: int) -> dict:
        task = bisect.bisect_right(self.starts, index) - 1
        item = dict(self.datasets[task][index - self.starts[task]])
        item.update(task=task, index=index)
        return item
