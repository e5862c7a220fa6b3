"""SigLIP's pairwise sigmoid objective (Zhai et al. 2023, "Sigmoid Loss for Language Image
Pre-Training", arXiv 2303.15343, Algorithm 1).

    L = -(1/N) sum_i sum_j log sigmoid(z_ij (s <I_i, T_j> + b)),  z_ij = 1 if i == j else -1

with s = exp(t), t initialised to log 10 and b to -10, both learned. Every image-text pair is
an independent binary problem, so no softmax normalises over the batch. Above a size the loss is
computed in blocks of rows with a recomputing backward (``variants.losses.siglip_loss``'s
``chunk``): the same loss and gradients in O(N x chunk) memory.
"""

from __future__ import annotations

import torch
from torch import nn

from variants.distributed import gather_with_grad, row_offset
from variants.losses import siglip_loss
from variants.objectives.base import (
    NEEDS_NEGATIVES,
    LearnedScale,
    Term,
    at_least_float32,
    check_chunk_size,
    chunk_rows,
    full_precision,
    present,
)
from variants.towers import Encoded


class Sigmoid(Term):
    """SigLIP over global embeddings; images of this rank against the texts of all ranks.

    Args:
        weight: weight in the total loss.
        init_logit_scale: initial s (10 in SigLIP).
        init_logit_bias: initial b (-10 in SigLIP: most pairs are negatives).
        max_logit_scale: upper bound of s.
        chunk_size: rows per block of the chunked, recomputing loss (memory O(N x chunk_size)
            instead of O(N^2); the same loss and gradients). None (default): chosen by size
            (``variants.losses.logit_chunk``, as InfoNCE); 0: the dense formula at every size.
    """

    min_batch_size = 2
    min_batch_reason = NEEDS_NEGATIVES

    def __init__(
        self,
        weight: float = 1.0,
        init_logit_scale: float = 10.0,
        init_logit_bias: float = -10.0,
        max_logit_scale: float = 100.0,
        chunk_size: int | None = None,
    ) -> None:
        super().__init__(weight)
        check_chunk_size(self, chunk_size)
        self.chunk_size = chunk_size
        self.logit_scale = LearnedScale(init_logit_scale, max_logit_scale)
        self.logit_bias = nn.Parameter(torch.tensor(float(init_logit_bias)))

    def forward(self, encoded: Encoded) -> dict[str, torch.Tensor]:
        image, text = present(encoded, "image"), present(encoded, "text")
        with full_precision(image.device):
            image, text = at_least_float32(image, text)
            scale = self.logit_scale()
            all_text = gather_with_grad(text)
            loss = siglip_loss(
                image,
                text,
                scale,
                self.logit_bias,
                all_text=all_text,
                row_offset=row_offset(image.shape[0]),
                chunk=chunk_rows(self.chunk_size, image.shape[0], all_text.shape[0], image.device),
            )
        return {"loss": loss, "logit_scale": scale.detach(), "logit_bias": self.logit_bias.detach()}

    def post_step(self) -> None:
        self.logit_scale.clamp_()
