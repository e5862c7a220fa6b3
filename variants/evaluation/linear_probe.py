"""The linear probe (Radford et al. 2021, appendix A.3): a logistic regression on the frozen image
embeddings of the task's "probe_train" rows, its L2 strength chosen on a held-out part of them
(``variants.probe``, the method the analysis uses too), scored on the task's own images.

Logs ``<task name>/top1`` for every "linear_probe" task.
"""

from __future__ import annotations

import torch

from common.evaluation import Evaluator, TaskContext
from variants.probe import probe_accuracy


class LinearProbe(Evaluator):
    kinds = ("linear_probe",)

    def evaluate(self, context: TaskContext) -> dict[str, torch.Tensor]:
        task, records = context.task, context.records
        assert task.fit_task is not None  # EvalTask refuses a probe without its fitting task
        fit = context.by_position.get(task.fit_task)
        if fit is None:
            return {}  # e.g. limit_val_batches stopped before the fitting rows
        train_x, test_x = fit.images.image, records.images.image
        assert train_x is not None and test_x is not None
        accuracy = probe_accuracy(
            train_x.cpu().numpy(), fit.labels.cpu().numpy(), test_x.cpu().numpy(), records.labels.cpu().numpy(),
            fix="raise data.init_args.probe_train_rows",
        )  # fmt: skip
        return {self.metric(task, "top1"): torch.tensor(accuracy, device=test_x.device)}
