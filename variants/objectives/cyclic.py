"""CyCLIP's cyclic consistency (Goel et al. 2022, "CyCLIP: Cyclic Contrastive Language-Image
Pretraining", arXiv 2205.14459; official code src/train.py, get_loss).

    L = l1 * ||I I^T - T T^T||_F^2 / N  +  l2 * ||I T^T - T I^T||_F^2 / N

on the L2-normalised embeddings: raw cosines, no softmax, no temperature, the sum divided by N
(not N^2). CyCLIP = [InfoNCE, Cyclic]; the paper runs l1 = l2 = 0.25.
"""

from __future__ import annotations

import torch

from variants.distributed import gather_with_grad
from variants.losses import cyclic_losses
from variants.objectives.base import Term, at_least_float32, full_precision, present
from variants.towers import Encoded


class Cyclic(Term):
    """In-modal and cross-modal consistency of the similarity matrices; use beside InfoNCE.

    Args:
        weight: weight of the whole term in the total loss (the paper's l1, l2 already in).
        inmodal_weight: l1, weight of ||I I^T - T T^T||^2 / N.
        crossmodal_weight: l2, weight of ||I T^T - T I^T||^2 / N.
    """

    min_batch_size = 2
    min_batch_reason = "with one row both similarity matrices are [[1]] and the loss is 0"

    def __init__(self, weight: float = 1.0, inmodal_weight: float = 0.25, crossmodal_weight: float = 0.25) -> None:
        super().__init__(weight)
        self.inmodal_weight, self.crossmodal_weight = inmodal_weight, crossmodal_weight

    def forward(self, encoded: Encoded) -> dict[str, torch.Tensor]:
        image, text = present(encoded, "image"), present(encoded, "text")
        with full_precision(image.device):
            image, text = at_least_float32(image, text)
            inmodal, crossmodal = cyclic_losses(
                image, text, all_image=gather_with_grad(image), all_text=gather_with_grad(text)
            )
        loss = self.inmodal_weight * inmodal + self.crossmodal_weight * crossmodal
        return {"loss": loss, "inmodal": inmodal.detach(), "crossmodal": crossmodal.detach()}
