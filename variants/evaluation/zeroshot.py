"""Zero-shot classification (Radford et al. 2021, "Learning Transferable Visual Models From Natural
Language Supervision", section 3.1.4): each class's prompts are encoded, the prompt ensemble scores
every image (the cosine with the mean of the normalised template embeddings, renormalised; a term
that scores pairs its own way, FILIP, averages its template scores), and top-1 accuracy is the
share of images whose best class is their label.

Logs ``<task name>/top1`` for every "zeroshot" task.
"""

from __future__ import annotations

import torch

from common.evaluation import Evaluator, TaskContext
from variants.metrics import topk_accuracy


class ZeroShot(Evaluator):
    kinds = ("zeroshot",)

    def evaluate(self, context: TaskContext) -> dict[str, torch.Tensor]:
        task, records, model = context.task, context.records, context.model
        assert task.prompts is not None  # EvalTask refuses a zero-shot task without prompts
        classes, templates = task.prompts.shape[:2]
        prompts = model.text_record(
            task.prompts.flatten(0, 1).to(model.device), tokens="text_tokens" in model.scoring_needs
        )
        scores = model.zeroshot_scores(records.images, prompts, templates)
        return {self.metric(task, "top1"): topk_accuracy(scores, records.labels, 1)}
