"""SLIP's self-supervised term (Mu et al. 2021, "SLIP: Self-supervision meets Language-Image
Pre-training", arXiv 2112.12750; official code losses.py SIMCLRLoss, models.py image_mlp).

Two augmented views of every image go through the shared image trunk and an MLP projector
(Linear-BN-ReLU-Linear-BN-ReLU-Linear, 4096 hidden, 256 out; BN over the global batch under
DDP), normalised to q_a, q_b. With temperature tau = 0.1:

    l_i^a = -log exp(q_a_i.q_b_i/tau) / (sum_j exp(q_a_i.q_b_j/tau) + sum_{j!=i} exp(q_a_i.q_a_j/tau))

symmetric in a/b and averaged. SLIP = [InfoNCE, SimCLR] with weight (ssl_scale) 1.0. The
official code gathers the CLIP negatives without gradient; here every term gathers with
gradient (docs/DESIGN.md), so the multi-process gradient equals the single-process one.
"""

from __future__ import annotations

import torch
from torch import nn

from common.errors import UserError
from variants.distributed import GlobalBatchNorm1d, gather_with_grad, row_offset
from variants.losses import simclr_loss
from variants.objectives.base import Term, at_least_float32, attached, full_precision, positive, present
from variants.towers import Encoded


class SimCLR(Term):
    """NT-Xent between two augmented views (needs the datamodule to supply "views").

    Args:
        weight: SLIP's ssl_scale (1.0).
        hidden_dim: width of the projector's hidden layers (4096 in SLIP).
        out_dim: output size of the projector (256 in SLIP).
        temperature: tau (0.1 in SLIP).
    """

    min_batch_size = 2
    min_batch_reason = (
        "its projector's BatchNorm normalises over the batch, and each view needs the other rows as negatives"
    )

    needs = frozenset({"views"})
    needs_global = False

    def __init__(
        self, weight: float = 1.0, hidden_dim: int = 4096, out_dim: int = 256, temperature: float = 0.1
    ) -> None:
        super().__init__(weight)
        positive(self, hidden_dim=hidden_dim, out_dim=out_dim, temperature=temperature)
        self.hidden_dim, self.out_dim, self.temperature = hidden_dim, out_dim, temperature
        self.projector: nn.Module | None = None

    def attach(self, vision_tower: nn.Module, text_tower: nn.Module) -> None:
        width = getattr(vision_tower, "feature_dim", None)
        if not width:
            raise UserError(
                f"simclr needs the vision tower's pooled features, but {type(vision_tower).__name__} has no feature_dim"
            )
        h = self.hidden_dim
        self.projector = nn.Sequential(
            nn.Linear(width, h), GlobalBatchNorm1d(h), nn.ReLU(inplace=True),
            nn.Linear(h, h), GlobalBatchNorm1d(h), nn.ReLU(inplace=True),
            nn.Linear(h, self.out_dim),
        )  # fmt: skip

    def forward(self, encoded: Encoded) -> dict[str, torch.Tensor]:
        # One projector call per view, as SLIP does: each view's BN statistics are its own.
        views, projector = present(encoded, "views"), attached(self, self.projector)
        z_a, z_b = at_least_float32(projector(views[:, 0]), projector(views[:, 1]))
        with full_precision(z_a.device):
            offset = row_offset(z_a.shape[0])
            loss = simclr_loss(
                z_a,
                z_b,
                self.temperature,
                all_z_a=gather_with_grad(z_a),
                all_z_b=gather_with_grad(z_b),
                row_offset=offset,
            )
            with torch.no_grad():  # how often view b is view a's nearest other-view neighbour
                scores = nn.functional.normalize(z_a, dim=-1) @ nn.functional.normalize(z_b, dim=-1).T
                acc = (scores.argmax(1) == torch.arange(z_a.shape[0], device=z_a.device)).float().mean()
        return {"loss": loss, "acc": acc}
