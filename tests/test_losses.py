"""variants.losses against naive per-row references computed from the formulas."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from variants.losses import clip_loss


def naive_clip_loss(image: torch.Tensor, text: torch.Tensor, scale: float) -> torch.Tensor:
    """1/2 [CE(s I T^T) + CE(s T I^T)] written as explicit loops over rows and columns."""
    n = image.shape[0]
    total = 0.0
    for i in range(n):
        i2t = [scale * float(image[i] @ text[j]) for j in range(n)]
        t2i = [scale * float(text[i] @ image[j]) for j in range(n)]
        total += -(i2t[i] - math.log(sum(math.exp(v) for v in i2t)))
        total += -(t2i[i] - math.log(sum(math.exp(v) for v in t2i)))
    return torch.tensor(total / (2 * n), dtype=torch.float64)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_clip_loss_matches_naive_reference(dtype: torch.dtype) -> None:
    image = F.normalize(torch.randn(7, 5, dtype=dtype), dim=-1)
    text = F.normalize(torch.randn(7, 5, dtype=dtype), dim=-1)
    got = clip_loss(image, text, torch.tensor(14.3, dtype=dtype))
    assert got.dtype == dtype
    torch.testing.assert_close(got.double(), naive_clip_loss(image.double(), text.double(), 14.3), rtol=1e-5, atol=1e-6)


def test_clip_loss_local_rows_against_global_columns_average_to_global_loss() -> None:
    """The distributed form: each shard's rows against all columns, averaged over shards."""
    image = F.normalize(torch.randn(8, 4, dtype=torch.float64), dim=-1)
    text = F.normalize(torch.randn(8, 4, dtype=torch.float64), dim=-1)
    shards = [
        clip_loss(image[r * 4 : (r + 1) * 4], text[r * 4 : (r + 1) * 4], 10.0, all_image=image, all_text=text, row_offset=r * 4)
        for r in range(2)
    ]
    torch.testing.assert_close(sum(shards) / 2, clip_loss(image, text, 10.0))


def test_clip_loss_is_low_for_matching_pairs_and_high_for_shuffled() -> None:
    image = F.normalize(torch.randn(16, 32), dim=-1)
    assert clip_loss(image, image, 100.0) < 0.01
    assert clip_loss(image, image.roll(1, 0), 100.0) > 10


def test_clip_loss_gradients_reach_both_modalities_and_the_scale() -> None:
    image = F.normalize(torch.randn(6, 5), dim=-1).requires_grad_()
    text = F.normalize(torch.randn(6, 5), dim=-1).requires_grad_()
    log_scale = torch.tensor(2.0, requires_grad=True)
    clip_loss(image, text, log_scale.exp()).backward()
    for grad in (image.grad, text.grad, log_scale.grad):
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
