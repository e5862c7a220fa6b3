"""DeCLIP's image self-supervision, ISS: SimSiam (Chen and He 2021, "Exploring Simple Siamese
Representation Learning", arXiv 2011.10566) on two augmented views of each image, as DeCLIP
trains it (Li et al. 2022, arXiv 2110.05208; official code Sense-GVT/DeCLIP @ 5d99a85,
prototype/model/declip.py L33-130 and L238-241, prototype/loss_functions/loss.py L49-81).

Both views go through the whole image tower including the CLIP projection, and the projection
BEFORE L2 normalisation, x_v [B, D], is the input of SimSiam's MLPs (declip.py L238-241 reads
``image_features_1`` there; normalisation only follows at L254):

    projector g: Linear(D, 1024)-BN-ReLU-Linear(1024, 1024)-BN-ReLU-Linear(1024, 1024)-BN
    predictor h: Linear(1024, 512)-BN-ReLU-Linear(512, 1024)
    z_v = g(x_v),  p_v = h(z_v),  L = -1/2 [cos(p_1, sg(z_2)) + cos(p_2, sg(z_1))]

with sg the stop-gradient; weight 0.2 in DeCLIP's total loss; no temperature. Each view goes
through the MLPs on its own (its own BatchNorm statistics), as in the official code. Deviation:
the official BatchNorm is per GPU (``nn.BatchNorm1d``, not synchronised); here it is
``GlobalBatchNorm1d`` over the global batch, so that DDP computes exactly the single-process step
on the global batch (docs/DESIGN.md, the distributed rule).
"""

from __future__ import annotations

import torch
from torch import nn

from common.errors import UserError
from variants.distributed import GlobalBatchNorm1d
from variants.losses import simsiam_loss
from variants.objectives.base import Term, at_least_float32, attached, full_precision, positive, present
from variants.towers import Encoded


class SimSiam(Term):
    """SimSiam between two augmented views of each image (needs the data's ``views``).

    Args:
        weight: weight in the total loss (0.2 in DeCLIP).
        hidden_dim: the projector's hidden width (1024 in DeCLIP).
        out_dim: the projector's output and the predictor's input/output width (1024).
        predictor_dim: the predictor's bottleneck (512).
    """

    min_batch_size = 2
    min_batch_reason = "its projector's and predictor's BatchNorm normalises over the batch"

    needs = frozenset({"image_views"})

    def __init__(
        self, weight: float = 1.0, hidden_dim: int = 1024, out_dim: int = 1024, predictor_dim: int = 512
    ) -> None:
        super().__init__(weight)
        positive(self, hidden_dim=hidden_dim, out_dim=out_dim, predictor_dim=predictor_dim)
        self.hidden_dim, self.out_dim, self.predictor_dim = hidden_dim, out_dim, predictor_dim
        self.projector: nn.Module | None = None
        self.predictor: nn.Module | None = None

    def attach(self, vision_tower: nn.Module, text_tower: nn.Module) -> None:
        width = getattr(vision_tower, "embed_dim", None)
        if not width:
            raise UserError(
                f"simsiam reads the vision tower's projection, but {type(vision_tower).__name__} has no embed_dim"
            )
        h, d, b = self.hidden_dim, self.out_dim, self.predictor_dim
        self.projector = nn.Sequential(
            nn.Linear(width, h), GlobalBatchNorm1d(h), nn.ReLU(inplace=True),
            nn.Linear(h, h), GlobalBatchNorm1d(h), nn.ReLU(inplace=True),
            nn.Linear(h, d), GlobalBatchNorm1d(d),
        )  # fmt: skip
        self.predictor = nn.Sequential(nn.Linear(d, b), GlobalBatchNorm1d(b), nn.ReLU(inplace=True), nn.Linear(b, d))

    def forward(self, encoded: Encoded) -> dict[str, torch.Tensor]:
        views = present(encoded, "image_views")
        projector, predictor = attached(self, self.projector), attached(self, self.predictor)
        z_a, z_b = projector(views[:, 0]), projector(views[:, 1])
        p_a, p_b = predictor(z_a), predictor(z_b)
        p_a, z_a, p_b, z_b = at_least_float32(p_a, z_a, p_b, z_b)
        with full_precision(z_a.device):
            loss = simsiam_loss(p_a, z_a, p_b, z_b)
            # SimSiam's collapse signal: the per-dimension std of normalised z, 1/sqrt(d) when healthy, 0 collapsed
            spread = torch.nn.functional.normalize(z_a.detach(), dim=-1).std(dim=0).mean()
        return {"loss": loss, "z_std": spread}
