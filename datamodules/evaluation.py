"""The evaluation loader's dataset: the datasets of a datamodule's tasks as one.

A datamodule that offers ``eval_tasks(stage)`` (``common.evaluation.ContrastiveData``) returns a
list of :class:`~common.evaluation.EvalTask` and serves one evaluation loader over
:class:`TaskDatasets` (the datasets of all its tasks as one, in the same order). One loader (not one
per task) keeps Lightning's result table to one table. What each kind of task logs is the
evaluators' business (``variants.evaluation``).
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

from torch.utils.data import Dataset

from common.evaluation import EvalTask

__all__ = ["EvalTask", "TaskDatasets"]


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
