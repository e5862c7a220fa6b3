"""CLIP's contrastive objective (Radford et al. 2021, "Learning Transferable Visual Models From
Natural Language Supervision", arXiv 2103.00020, Figure 3).

    L = 1/2 [CE(s I T^T) + CE(s T I^T)],  targets arange(N),  s = exp(t)

I, T are the L2-normalised image and text embeddings of the batch; t is learned, initialised to
log(1/0.07) and clamped after every optimizer step so that s <= 100 (paper, section 2.5).
Above a size the loss is computed in blocks of rows with a recomputing backward
(``variants.losses.clip_loss``'s ``chunk``): the same loss and gradients in O(N x chunk) memory.
"""

from __future__ import annotations

import torch

from variants.distributed import gather_with_grad, row_offset
from variants.losses import clip_loss
from variants.objectives.base import (
    NEEDS_NEGATIVES,
    LearnedScale,
    Term,
    at_least_float32,
    check_chunk_size,
    chunk_rows,
    full_precision,
    positive,
    present,
)
from variants.towers import Encoded


class InfoNCE(Term):
    """Symmetric InfoNCE over global embeddings with a learnable temperature.

    Args:
        weight: weight in the total loss.
        init_temperature: initial 1/s (0.07 in CLIP).
        max_logit_scale: upper bound of s = exp(t) (100 in CLIP).
        learn_temperature: learn t (True) or keep s fixed at 1/init_temperature.
        chunk_size: rows per block of the chunked, recomputing loss (memory O(N x chunk_size)
            instead of the dense formula's O(N^2); the same loss and gradients). None (default):
            chosen by size (``variants.losses.logit_chunk``: dense up to 2**20 logits per process
            on a CPU, 2**24 on a GPU, blocks of that many logits above); 0: dense at every size.
    """

    min_batch_size = 2
    min_batch_reason = NEEDS_NEGATIVES

    def __init__(
        self,
        weight: float = 1.0,
        init_temperature: float = 0.07,
        max_logit_scale: float = 100.0,
        learn_temperature: bool = True,
        chunk_size: int | None = None,
    ) -> None:
        super().__init__(weight)
        positive(self, init_temperature=init_temperature)
        check_chunk_size(self, chunk_size)
        self.chunk_size = chunk_size
        self.logit_scale = LearnedScale(1.0 / init_temperature, max_logit_scale, learn_temperature)

    def forward(self, encoded: Encoded) -> dict[str, torch.Tensor]:
        image, text = present(encoded, "image"), present(encoded, "text")
        with full_precision(image.device):
            image, text = at_least_float32(image, text)
            scale = self.logit_scale()
            all_image, all_text = gather_with_grad(image), gather_with_grad(text)
            loss = clip_loss(
                image,
                text,
                scale,
                all_image=all_image,
                all_text=all_text,
                row_offset=row_offset(image.shape[0]),
                chunk=chunk_rows(self.chunk_size, image.shape[0], all_text.shape[0], image.device),
            )
        return {"loss": loss, "logit_scale": scale.detach()}

    def post_step(self) -> None:
        self.logit_scale.clamp_()
