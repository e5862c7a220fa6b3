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


def in_batch_accuracy(image: torch.Tensor, text: torch.Tensor, block: int = 2**24) -> tuple[torch.Tensor, torch.Tensor]:
    """(image->text, text->image) top-1 accuracy of a batch's pairs [B, D] among the batch, by
    cosine: how often row i's best match is its own pair (the training log's train/acc_*).

    Computed over blocks of rows of about ``block`` scores each, so a large batch never holds its
    B x B matrix (8 GiB in bf16 at B = 65,536, more than the whole cached step needs); each
    column's best row is kept across blocks, the earliest on ties, as ``argmax`` picks.
    """
    n = image.shape[0]
    target = torch.arange(n, device=image.device)
    texts = text.float().T
    rows = max(1, block // max(n, 1))
    hits = torch.zeros((), device=image.device)
    best = torch.full((n,), float("-inf"), device=image.device)
    best_row = torch.zeros(n, dtype=torch.long, device=image.device)
    for start in range(0, n, rows):
        scores = image[start : start + rows].float() @ texts  # [rows, n], in autocast's dtype if on
        hits += (scores.argmax(1) == target[start : start + rows]).sum()
        block_best, block_row = scores.max(0)
        better = block_best.float() > best  # strict: an earlier block keeps a tie
        best = torch.where(better, block_best.float(), best)
        best_row = torch.where(better, block_row + start, best_row)
    return hits / n, (best_row == target).float().mean()


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


def crosslingual_recall(
    en: torch.Tensor,
    zh: torch.Tensor,
    images: torch.Tensor,
    ks: tuple[int, ...] = (1, 5, 10),
    *,
    en_to_image: torch.Tensor | None = None,
    image_to_zh: torch.Tensor | None = None,
    positives: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Cross-lingual retrieval of N scenes: English caption i should find Chinese caption i.

    ``en``, ``zh``, ``images``: [N, D] L2-normalised embeddings, row i of each from scene i.
    "direct_R@k": Chinese captions ranked by the cosine of text embeddings (do the two languages
    share one text space?). "via_image_R@k": the English caption picks its top-1 image by its
    text->image score, and that image ranks the Chinese captions by its image->text score (do
    they meet through the images, as a model trained only on image-caption pairs can?).

    ``en_to_image`` [N, N] (English caption x image) and ``image_to_zh`` [N, N] (image x Chinese
    caption) replace the cosine scores when the model scores pairs its own way (FILIP).
    ``positives`` [N, N] bool marks the Chinese captions that count as hits for each English one
    (default: the diagonal; identical Chinese caption texts of other scenes count too when the
    caller says so, as retrieval counts identical captions).
    """
    n = en.shape[0]
    if positives is None:
        positives = torch.eye(n, dtype=torch.bool, device=en.device)
    en_to_image = en @ images.T if en_to_image is None else en_to_image
    image_to_zh = images @ zh.T if image_to_zh is None else image_to_zh
    direct = en @ zh.T
    via_image = image_to_zh[en_to_image.argmax(dim=1)]
    metrics = {}
    for name, scores in (("direct", direct), ("via_image", via_image)):
        for k in ks:
            metrics[f"{name}_R@{k}"] = recall_at_k(scores, positives, k)
    return metrics
