"""Image-text retrieval recall at 1 (CLIP's retrieval evaluation, Radford et al. 2021, section
3.1.5 / table 13): each image ranks every caption of the task by the model's image->text score, each
caption every image by text->image; a query is a hit when its best candidate is a right one.
Identical captions count as right (the ranking cannot tell them apart), and with ``positives:
"label"`` every caption of the image's class does.

Logs ``<task name>/i2t_R@1`` and ``<task name>/t2i_R@1`` for every "retrieval" task.
"""

from __future__ import annotations

import torch

from common.evaluation import Evaluator, TaskContext
from variants.metrics import recall_at_k


def right_captions(tokens: torch.Tensor, labels: torch.Tensor, by: str) -> torch.Tensor:
    """[N, N] bool: caption j is right for image i (identical caption text, or the same class)."""
    if by == "label":
        return labels[:, None] == labels[None]
    return (tokens[:, None] == tokens[None]).all(-1)


class Retrieval(Evaluator):
    kinds = ("retrieval",)

    def evaluate(self, context: TaskContext) -> dict[str, torch.Tensor]:
        task, records = context.task, context.records
        i2t, t2i = context.model.score(records.images, records.texts)
        positives = right_captions(records.tokens, records.labels, task.positives)
        return {
            self.metric(task, "i2t_R@1"): recall_at_k(i2t, positives, 1),
            self.metric(task, "t2i_R@1"): recall_at_k(t2i.T, positives.T, 1),
        }
