"""CyCLIP's consistency score (Goel et al. 2022, "CyCLIP: Cyclic Contrastive Language-Image
Pretraining", arXiv 2205.14459): how often a model's two ways of classifying an image agree.

The paper's claim is that CLIP's image and text representations "are not interchangeable and can
lead to inconsistent downstream predictions" (abstract), and that CyCLIP's cyclic terms make
them consistent. Its consistency figure (``analysis/plots/consistency.png`` in the official
repository, CLIP -> CyCLIP 44.6 -> 48.8% on CIFAR-10 at k = 1) was computed by
``utils/consistency.py`` (goel-shashank/CyCLIP at commit e9b05a4; the file was deleted later, in
f740441, and no current file computes it). That code defines, for each test image x:

    zero-shot label  z(x) = argmax_c <img(x), T_c>        (T_c: the class's prompt embeddings
                                                           averaged over templates, normalised)
    in-modal label   p_k(x) = majority label of the k training images nearest to x
                              (cosine of image embeddings); on a tie the vote is retaken over
                              k-1, k-2, ... neighbours until one label wins
    consistency@k  = fraction of test images with z(x) == p_k(x)        (k = 1, 3, 5, 10 here; the
                                                                     official default adds 30)

so a consistency score is one number per k: the agreement of the cross-modal (image-text)
classifier with the in-modal (image-image) one, with no ground-truth label involved. The
in-modal classifier's own accuracy (``knn{k}_accuracy``) is reported beside it.

Here the zero-shot scores are the checkpoint's own (``ContrastiveModule.zeroshot_scores``: the
prompt ensemble of the global embeddings, or FILIP's token-wise scores), and the labelled
reference images are a classification suite's ``train`` split (for ShapesWorld, the linear-probe
stream). Metric names: ``consistency/<suite>/top<k>`` and ``consistency/<suite>/knn<k>_accuracy``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from analysis.checkpoint import LoadedCheckpoint
from analysis.embed import DEFAULT_OPTIONS, EmbedOptions, embed_images, embed_texts
from common.errors import UserError
from datamodules.suites import ClassificationSuite

KS = (1, 3, 5, 10)


def knn_labels(
    test: torch.Tensor, train: torch.Tensor, train_labels: torch.Tensor, ks: Sequence[int] = KS, chunk: int = 1024
) -> dict[int, torch.Tensor]:
    """The in-modal k-NN label of every test embedding for each k: the majority label among the k
    nearest training embeddings by cosine (inputs L2-normalised), a tie retaken over fewer
    neighbours, as CyCLIP's ``utils/consistency.py`` does."""
    if len(train) < max(ks):
        raise UserError(f"consistency needs at least {max(ks)} reference images, got {len(train)}")
    classes = int(train_labels.max()) + 1
    out: dict[int, list[torch.Tensor]] = {k: [] for k in ks}
    for start in range(0, len(test), chunk):
        neighbours = (test[start : start + chunk] @ train.T).topk(max(ks), dim=1).indices
        labels = train_labels[neighbours]  # [n, max k], nearest first
        votes = torch.zeros(len(labels), classes, dtype=torch.long)
        winners: list[torch.Tensor] = []  # winners[j]: [n] label after a vote over j + 1 neighbours, -1 on a tie
        for j in range(max(ks)):
            votes.scatter_add_(1, labels[:, j : j + 1], torch.ones_like(labels[:, j : j + 1]))
            top = votes.max(dim=1, keepdim=True).values
            unique = (votes == top).sum(dim=1) == 1
            winners.append(torch.where(unique, votes.argmax(dim=1), -1))
        for k in ks:
            label = winners[0].clone()  # one neighbour never ties
            for j in range(1, k):  # the largest vote size <= k without a tie wins
                label = torch.where(winners[j] >= 0, winners[j], label)
            out[k].append(label)
    return {k: torch.cat(parts) for k, parts in out.items()}


def consistency_scores(
    zeroshot: torch.Tensor, knn: dict[int, torch.Tensor], labels: torch.Tensor | None = None
) -> dict[str, float]:
    """{"top<k>": agreement of the zero-shot and k-NN labels, "knn<k>_accuracy": the k-NN labels'
    accuracy when ``labels`` are given}."""
    scores = {f"top{k}": float((zeroshot == predicted).float().mean()) for k, predicted in knn.items()}
    if labels is not None:
        scores |= {f"knn{k}_accuracy": float((labels == predicted).float().mean()) for k, predicted in knn.items()}
    return scores


@torch.inference_mode()
def suite_consistency(
    loaded: LoadedCheckpoint,
    suites: Sequence[ClassificationSuite],
    ks: Sequence[int] = KS,
    options: EmbedOptions = DEFAULT_OPTIONS,
) -> dict[str, float]:
    """Consistency scores of a checkpoint on every classification suite with a train split."""
    metrics: dict[str, float] = {}
    needs = loaded.model.scoring_needs
    for suite in suites:
        if suite.train is None:
            continue
        test = embed_images(loaded, suite.test, tokens="image_tokens" in needs, options=options, desc=suite.name)
        train = embed_images(loaded, suite.train, options=options, desc=f"{suite.name} references")
        prompts = suite.class_prompts()
        texts = embed_texts(
            loaded,
            [p for ps in prompts for p in ps],
            tokens="text_tokens" in needs,
            options=options,
            desc=f"{suite.name} prompts",
        )
        zeroshot = loaded.model.zeroshot_scores(test.encoded, texts, len(prompts[0])).argmax(dim=1)
        assert train.labels is not None, "a classification suite's items carry their label"
        knn = knn_labels(test.image, train.image, train.labels, ks)
        scores = consistency_scores(zeroshot, knn, test.labels)
        metrics |= {f"consistency/{suite.name}/{key}": value for key, value in scores.items()}
    if not metrics:
        raise UserError("consistency needs a classification suite with a train split (e.g. --suite shapesworld)")
    return metrics
