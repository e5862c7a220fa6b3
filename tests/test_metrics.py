"""Evaluation metrics against naive loops."""

from __future__ import annotations

import pytest
import torch

from variants.metrics import class_embeddings, in_batch_accuracy, mean_per_class_recall, recall_at_k, topk_accuracy


def test_topk_accuracy_matches_naive() -> None:
    scores, labels = torch.randn(50, 7), torch.randint(0, 7, (50,))
    for k in (1, 3, 7, 10):
        naive = sum(int(labels[i] in sorted(range(7), key=lambda c: -scores[i, c])[:k]) for i in range(50)) / 50
        assert abs(float(topk_accuracy(scores, labels, k)) - naive) < 1e-6


@pytest.mark.parametrize("block", [1, 7 * 13, 13 * 13, 2**24])  # a row per block, 7 rows, 13 (all), the default
def test_in_batch_accuracy_in_blocks_equals_the_whole_matrix_with_ties(block: int) -> None:
    """Blocks of rows (sizes that do and do not divide the batch) give the whole matrix's argmax
    in both directions, ties included: duplicate captions tie in a column, and the earliest row
    wins, as argmax picks."""
    g = torch.Generator().manual_seed(0)
    image = torch.nn.functional.normalize(torch.randn(13, 4, generator=g), dim=-1)
    text = image + 0.3 * torch.randn(13, 4, generator=g)
    text[[3, 8]] = text[5].clone()  # three identical captions: tied rows and columns
    image[9] = image[2].clone()  # two identical images
    scores = image @ text.T
    target = torch.arange(13)
    naive_i2t = sum(int(max(range(13), key=lambda j: (scores[i, j], -j)) == i) for i in range(13)) / 13
    naive_t2i = sum(int(max(range(13), key=lambda i: (scores[i, j], -i)) == j) for j in range(13)) / 13
    i2t, t2i = in_batch_accuracy(image, text, block=block)
    assert (float(i2t), float(t2i)) == pytest.approx((naive_i2t, naive_t2i), abs=1e-7)
    assert float(t2i) == float((scores.argmax(0) == target).float().mean())


def test_recall_at_k_counts_a_hit_when_any_positive_is_in_the_top_k() -> None:
    scores = torch.randn(30, 40)
    positives = torch.rand(30, 40) < 0.08
    for k in (1, 5, 10):
        naive = (
            sum(any(positives[i, j] for j in sorted(range(40), key=lambda c: -scores[i, c])[:k]) for i in range(30))
            / 30
        )
        assert abs(float(recall_at_k(scores, positives, k)) - naive) < 1e-6


def test_class_embeddings_average_templates_and_renormalise() -> None:
    templates = torch.nn.functional.normalize(torch.randn(3, 4, 8), dim=-1)
    got = class_embeddings(templates)
    expected = templates.mean(1) / templates.mean(1).norm(dim=-1, keepdim=True)
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(got.norm(dim=-1), torch.ones(3))


def test_mean_per_class_recall_matches_naive_and_skips_absent_classes() -> None:
    scores, labels = torch.randn(60, 6), torch.randint(0, 5, (60,))  # class 5 never occurs
    predicted = scores.argmax(1).tolist()
    recalls = []
    for c in set(labels.tolist()):
        rows = [i for i in range(60) if labels[i] == c]
        recalls.append(sum(predicted[i] == c for i in rows) / len(rows))
    assert abs(float(mean_per_class_recall(scores, labels)) - sum(recalls) / len(recalls)) < 1e-6
    # Unbalanced: 9 of class 0 (all right), 1 of class 1 (wrong): accuracy 0.9, balanced 0.5.
    scores = torch.tensor([[1.0, 0.0]] * 10)
    labels = torch.tensor([0] * 9 + [1])
    assert float(mean_per_class_recall(scores, labels)) == 0.5
