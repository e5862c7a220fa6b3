"""The modality gap (Liang et al. 2022, "Mind the Gap: Understanding the Modality Gap in
Multi-modal Contrastive Representation Learning", section 4.1): the distance between the centres
of the image and the text embeddings, ``|| mean_i x_i - mean_j y_j ||`` over the L2-normalised
global embeddings of a retrieval set's pairs. A run tracks it as it trains; the analysis measures
the full geometry of a checkpoint (``python -m analysis geometry``).

Logs ``geometry/<suite>/modality_gap`` beside ``retrieval/<suite>/...`` for every "retrieval" task.
"""

from __future__ import annotations

import torch

from common.evaluation import Evaluator, TaskContext


class ModalityGap(Evaluator):
    kinds = ("retrieval",)
    default_prefix = "geometry"

    def evaluate(self, context: TaskContext) -> dict[str, torch.Tensor]:
        images, texts = context.records.images.image, context.records.texts.text
        assert images is not None and texts is not None  # every record holds the global embeddings
        return {self.metric(context.task, "modality_gap"): (images.mean(0) - texts.mean(0)).norm()}
