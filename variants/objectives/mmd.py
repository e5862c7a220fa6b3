"""Modality alignment by maximum mean discrepancy (Gretton et al. 2012, "A Kernel Two-Sample
Test", JMLR 13), used beside InfoNCE to close the modality gap (Liang et al. 2022, "Mind the
Gap", arXiv 2203.02053).

    MMD^2 = mean(Kxx) + mean(Kyy) - 2 mean(Kxy),  k(a, b) = sum_sigma exp(-||a-b||^2 / (2 sigma^2))

between the image embeddings x and the text embeddings y (biased estimator). Unless given, the
bandwidths are the median pairwise distance of the pooled global batch times {0.5, 1, 2}.
With a linear kernel MMD^2 is the squared modality gap ||mean(I) - mean(T)||^2.
"""

from __future__ import annotations

import torch

from common.errors import UserError
from variants.distributed import gather_with_grad
from variants.losses import median_bandwidths, mmd2
from variants.objectives.base import Term, at_least_float32, full_precision, positive, present
from variants.towers import Encoded


class MMD(Term):
    """Biased MMD^2 between the image and text embedding sets of the global batch.

    Args:
        weight: weight in the total loss.
        sigmas: fixed Gaussian bandwidths; None for the median heuristic.
        multipliers: factors applied to the median distance when ``sigmas`` is None.
    """

    min_batch_size = 2
    min_batch_reason = "it compares the distributions of the two modalities, which one sample each does not describe"

    def __init__(
        self, weight: float = 1.0, sigmas: list[float] | None = None, multipliers: tuple[float, ...] = (0.5, 1.0, 2.0)
    ) -> None:
        super().__init__(weight)
        if sigmas is not None and not sigmas:
            raise UserError("mmd: sigmas is empty; give bandwidths or null for the median heuristic")
        positive(self, **{f"sigmas[{i}]": s for i, s in enumerate(sigmas or [])})
        positive(self, **{f"multipliers[{i}]": m for i, m in enumerate(multipliers)})
        self.sigmas, self.multipliers = sigmas, tuple(multipliers)

    def forward(self, encoded: Encoded) -> dict[str, torch.Tensor]:
        image, text = present(encoded, "image"), present(encoded, "text")
        with full_precision(image.device):
            image, text = at_least_float32(image, text)
            all_image, all_text = gather_with_grad(image), gather_with_grad(text)
            if self.sigmas is None:
                sigmas = median_bandwidths(all_image, all_text, self.multipliers)
            else:
                sigmas = torch.tensor(self.sigmas, dtype=image.dtype, device=image.device)
            loss = mmd2(image, text, sigmas, all_x=all_image, all_y=all_text)
            gap = (all_image.mean(0) - all_text.mean(0)).norm().detach()
        return {"loss": loss, "bandwidth": sigmas.median().detach(), "modality_gap": gap}
