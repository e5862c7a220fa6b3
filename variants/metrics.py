"""Evaluation metrics on embeddings (zero-shot classification, retrieval; pure torch). Statistics
over runs (means and intervals over seeds) are in analysis.stats."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def class_embeddings(text_embeddings: torch.Tensor) -> torch.Tensor:
    """Prompt-ensemble classifier: [C, T, D] normalised template embeddings -> [C, D].

    The templates of each class are averaged and the mean renormalised (CLIP, section 3.1.4).
    """
    return F.normalize(text_embeddings.mean(dim=1), dim=-1)


def topk_accuracy(scores: torch.Tensor, labels: torch.Tensor, k: int = 1) -> torch.Tensor:
    """Fraction of rows of ``scores`` [N, C] whose label is among the k highest scores."""
    topk = scores.topk(min(k, scores.shape[1]), dim=1).indices
    return (topk == labels[:, None]).any(dim=1).float().mean()


def recall_at_k(scores: torch.Tensor, positives: torch.Tensor, k: int = 1) -> torch.Tensor:
    """CLIP-style retrieval recall: a query [row of scores, N x M] is a hit if any of its
    positives (``positives`` [N, M] bool) is among its k highest-scoring candidates."""
    topk = scores.topk(min(k, scores.shape[1]), dim=1).indices
    return positives.gather(1, topk).any(dim=1).float().mean()


def mean_per_class_recall(scores: torch.Tensor, labels: torch.Tensor, num_classes: int | None = None) -> torch.Tensor:
    """Top-1 recall of each class that occurs in ``labels``, averaged over those classes
    (balanced accuracy; CLIP reports it for unbalanced sets such as FGVC Aircraft)."""
    num_classes = num_classes or scores.shape[1]
    predicted = scores.argmax(dim=1)
    hits = torch.zeros(num_classes, device=scores.device).index_add_(0, labels, (predicted == labels).float())
    counts = torch.bincount(labels, minlength=num_classes).float()
    present = counts > 0
    return (hits[present] / counts[present]).mean()
