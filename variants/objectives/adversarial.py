"""Modality alignment by adversarial training (domain-adversarial training, Ganin et al. 2016,
"Domain-Adversarial Training of Neural Networks", arXiv 1505.07818), used beside InfoNCE.

A discriminator D predicts the modality of an embedding (image = 1, text = 0) and minimises

    L = BCE(D(GRL(I)), 1) + BCE(D(GRL(T)), 0)   (mean over the 2N embeddings)

while the gradient reversal layer GRL (identity forward, -lambda * grad backward) makes the
towers MAXIMISE the same loss: they learn embeddings D cannot tell apart. Optionally lambda
follows the DANN ramp lambda(p) = 2 / (1 + exp(-10 p)) - 1 over training progress p.
A discriminator and towers that both minimise the BCE (as a seed tutorial does) make the
modalities MORE separable; that is a bug this term exists to avoid.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from variants.losses import grad_reverse
from variants.objectives.base import Term, at_least_float32, attached, full_precision, positive, present
from variants.towers import Encoded


class Adversarial(Term):
    """Modality discriminator behind a gradient reversal layer.

    Args:
        weight: weight in the total loss.
        hidden_dim: width of the discriminator's two hidden layers.
        reversal: lambda, the scale of the reversed gradient reaching the towers.
        dann_ramp: multiply lambda by the DANN ramp 2/(1+exp(-10p)) - 1 (p = training progress).
        embed_dim: the discriminator's input size; None takes the towers' embed_dim.
    """

    def __init__(
        self,
        weight: float = 1.0,
        hidden_dim: int = 256,
        reversal: float = 1.0,
        dann_ramp: bool = False,
        embed_dim: int | None = None,
    ) -> None:
        super().__init__(weight)
        positive(self, hidden_dim=hidden_dim, reversal=reversal)
        self.hidden_dim, self.reversal, self.dann_ramp, self.embed_dim = hidden_dim, reversal, dann_ramp, embed_dim
        self.discriminator: nn.Module | None = None

    def attach(self, vision_tower: nn.Module, text_tower: nn.Module) -> None:
        # A given embed_dim that differs from the towers' is refused by ContrastiveModule.
        dim = self.embed_dim = self.embed_dim or int(vision_tower.embed_dim)  # type: ignore[arg-type]
        h = self.hidden_dim
        self.discriminator = nn.Sequential(nn.Linear(dim, h), nn.ReLU(), nn.Linear(h, h), nn.ReLU(), nn.Linear(h, 1))

    def current_lambda(self) -> float:
        ramp = 2.0 / (1.0 + math.exp(-10.0 * self.progress)) - 1.0 if self.dann_ramp else 1.0
        return self.reversal * ramp

    def forward(self, encoded: Encoded) -> dict[str, torch.Tensor]:
        lambd = self.current_lambda()
        image, text = present(encoded, "image"), present(encoded, "text")
        n = image.shape[0]
        embeddings = torch.cat([grad_reverse(image, lambd), grad_reverse(text, lambd)])
        (logits,) = at_least_float32(attached(self, self.discriminator)(embeddings).squeeze(-1))
        with full_precision(logits.device):
            labels = torch.cat([logits.new_ones(n), logits.new_zeros(n)])
            loss = F.binary_cross_entropy_with_logits(logits, labels)
            accuracy = ((logits > 0).to(labels.dtype) == labels).float().mean()
        return {"loss": loss, "discriminator_acc": accuracy.detach(), "lambda": torch.tensor(lambd)}
