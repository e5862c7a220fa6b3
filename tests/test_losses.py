"""variants.losses against naive per-row references computed from the formulas."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from common.errors import UserError
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
        clip_loss(
            image[r * 4 : (r + 1) * 4],
            text[r * 4 : (r + 1) * 4],
            10.0,
            all_image=image,
            all_text=text,
            row_offset=r * 4,
        )
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


# ---- the other objectives against loops over the formulas (float64) ------------------------
from variants.losses import (  # noqa: E402
    cyclic_losses,
    filip_loss,
    filip_similarity,
    grad_reverse,
    mmd2,
    siglip_loss,
    simclr_loss,
)

D64 = torch.float64


def _unit(*shape: int) -> torch.Tensor:
    return F.normalize(torch.randn(*shape, dtype=D64), dim=-1)


def test_siglip_loss_matches_naive() -> None:
    image, text, s, b = _unit(6, 4), _unit(6, 4), 7.0, -3.0
    naive = 0.0
    for i in range(6):
        for j in range(6):
            z = 1.0 if i == j else -1.0
            naive -= math.log(1 / (1 + math.exp(-z * (s * float(image[i] @ text[j]) + b))))
    torch.testing.assert_close(siglip_loss(image, text, s, b), torch.tensor(naive / 6, dtype=D64))


def _naive_filip(x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    ni, p = x.shape[:2]
    nt = y.shape[0]
    i2t, t2i = torch.zeros(ni, nt, dtype=D64), torch.zeros(ni, nt, dtype=D64)
    for i in range(ni):
        for j in range(nt):
            valid = [k for k in range(y.shape[1]) if mask[j, k]]
            i2t[i, j] = sum(max(float(x[i, q] @ y[j, k]) for k in valid) for q in range(p)) / p
            t2i[i, j] = sum(max(float(x[i, q] @ y[j, k]) for q in range(p)) for k in valid) / len(valid)
    return i2t, t2i


def _mask(lengths: list[int], length: int) -> torch.Tensor:
    return torch.arange(length)[None] < torch.tensor(lengths)[:, None]


def test_filip_similarity_matches_naive_and_ignores_padding() -> None:
    x, y = _unit(4, 3, 5), _unit(5, 6, 5)
    mask = _mask([2, 6, 3, 1, 4], 6)
    i2t, t2i = filip_similarity(x, y, mask)
    naive_i2t, naive_t2i = _naive_filip(x, y, mask)
    torch.testing.assert_close(i2t, naive_i2t)
    torch.testing.assert_close(t2i, naive_t2i)
    assert not torch.allclose(i2t, t2i)  # one-axis max then mean, not max over both axes
    changed = y.clone()
    changed[~mask] = _unit(int((~mask).sum()), 5)  # new embeddings at every padded position
    for a, b in zip(filip_similarity(x, changed, mask), (i2t, t2i), strict=True):
        torch.testing.assert_close(a, b)


def test_filip_chunked_equals_unchunked() -> None:
    x, y = _unit(9, 4, 6), _unit(7, 5, 6)
    mask = _mask([5, 2, 3, 5, 1, 4, 2], 5)
    whole = filip_similarity(x, y, mask, chunk=9)
    for chunk in (1, 2, 4):
        for a, b in zip(filip_similarity(x, y, mask, chunk=chunk), whole, strict=True):
            torch.testing.assert_close(a, b)


def test_filip_loss_matches_naive_and_its_gradient_survives_chunking() -> None:
    x, y = _unit(5, 3, 4).requires_grad_(), _unit(5, 4, 4).requires_grad_()
    mask = _mask([4, 2, 3, 1, 4], 4)
    i2t, t2i = _naive_filip(x.detach(), y.detach(), mask)
    s = 9.0
    naive = 0.5 * (F.cross_entropy(s * i2t, torch.arange(5)) + F.cross_entropy(s * t2i.T, torch.arange(5)))
    loss = filip_loss(x, y, mask, s, chunk=2)
    torch.testing.assert_close(loss, naive)
    loss.backward()
    grads = x.grad.clone(), y.grad.clone()
    x.grad = y.grad = None
    filip_loss(x, y, mask, s, chunk=5).backward()
    torch.testing.assert_close(grads[0], x.grad)
    torch.testing.assert_close(grads[1], y.grad)


def _dense_filip(x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """FILIP from the whole [Ni, P, Nt, L] block with autograd's amax (ties share the gradient)."""
    sim = torch.einsum("ipd,jkd->ipjk", x, y)
    i2t = sim.masked_fill(~mask[None, None], float("-inf")).amax(dim=3).mean(dim=1)
    t2i = (sim.amax(dim=1) * mask).sum(dim=-1) / mask.sum(dim=-1)
    return i2t, t2i


def test_filip_gradient_matches_autograd_through_the_dense_block_even_with_ties() -> None:
    x, y = _unit(5, 4, 6), _unit(6, 5, 6)
    x[:, 2] = x[:, 0]  # tied patches: each word's max over patches is reached twice
    y[:, 3] = y[:, 1]  # tied words: each patch's max over words is reached twice
    mask = torch.tensor(
        [[1, 1, 1, 1, 0], [1, 0, 1, 1, 1], [0, 1, 1, 1, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0], [1, 1, 1, 1, 1]]
    )
    mask = mask.bool()  # holes and leading padding too: any mask, not only a padded suffix
    weights_i2t, weights_t2i = torch.randn(5, 6, dtype=D64), torch.randn(5, 6, dtype=D64)
    grads = []
    for scores in (filip_similarity, _dense_filip):
        a, b = x.clone().requires_grad_(), y.clone().requires_grad_()
        i2t, t2i = scores(a, b, mask) if scores is _dense_filip else scores(a, b, mask, chunk=2)
        ((i2t * weights_i2t).sum() + (t2i * weights_t2i).sum()).backward()
        assert b.grad[~mask].abs().max() == 0  # padding gets no gradient
        grads.append((i2t.detach(), t2i.detach(), _merge(a.grad, 0, 2), _merge(b.grad, 1, 3)))
    for got, want in zip(*grads, strict=True):
        torch.testing.assert_close(got, want)


def _merge(grad: torch.Tensor, keep: int, copy: int) -> torch.Tensor:
    """Gradients of two copies of one vector summed into the first: how a tie's gradient is split
    depends on the last bit of each GEMM (the copies' similarities may differ by an ulp), what
    the shared vector receives does not. Deliberately blind to the split itself."""
    merged = grad.clone()
    merged[:, keep] += merged[:, copy]
    merged[:, copy] = 0
    return merged


def test_filip_drops_the_padding_after_the_longest_text_and_handles_many_patches() -> None:
    x, y = _unit(3, 260, 4), _unit(4, 7, 4)  # >= 256 patches: tie counts leave uint8
    mask = _mask([3, 1, 2, 3], 7)  # the longest text ends at 3 of 7 positions
    weights = torch.randn(3, 4, dtype=D64), torch.randn(3, 4, dtype=D64)
    grads = []
    for scores in (filip_similarity, _dense_filip):
        a, b = x.clone().requires_grad_(), y.clone().requires_grad_()
        i2t, t2i = scores(a, b, mask)
        ((i2t * weights[0]).sum() + (t2i * weights[1]).sum()).backward()
        grads.append((i2t.detach(), t2i.detach(), a.grad, b.grad))
    for got, want in zip(*grads, strict=True):
        torch.testing.assert_close(got, want)


def test_filip_refuses_a_text_without_real_tokens() -> None:
    with pytest.raises(UserError, match="a text has no real token"):
        filip_similarity(_unit(2, 3, 4), _unit(2, 3, 4), _mask([2, 0], 3))


def test_filip_backward_passes_gradcheck() -> None:
    x, y = _unit(3, 4, 5).requires_grad_(), _unit(4, 3, 5).requires_grad_()
    mask = _mask([3, 1, 2, 3], 3)
    assert torch.autograd.gradcheck(lambda a, b: filip_similarity(a, b, mask, chunk=2), (x, y))


def test_filip_in_bf16_stays_close_to_float32() -> None:
    x, y = _unit(16, 16, 32).float(), _unit(16, 8, 32).float()
    mask = _mask(list(range(1, 9)) * 2, 8)
    exact = filip_loss(x, y, mask, 50.0)
    low = filip_loss(x.bfloat16(), y.bfloat16(), mask, 50.0)
    assert low.dtype == torch.float32  # scores and loss in float32 whatever the GEMM's dtype
    torch.testing.assert_close(low, exact, atol=0.05, rtol=0.02)


def test_cyclic_losses_match_naive() -> None:
    image, text = _unit(5, 3), _unit(5, 3)
    inmodal = sum((float(image[i] @ image[j]) - float(text[i] @ text[j])) ** 2 for i in range(5) for j in range(5)) / 5
    cross = sum((float(image[i] @ text[j]) - float(text[i] @ image[j])) ** 2 for i in range(5) for j in range(5)) / 5
    got = cyclic_losses(image, text)
    torch.testing.assert_close(got[0], torch.tensor(inmodal, dtype=D64))
    torch.testing.assert_close(got[1], torch.tensor(cross, dtype=D64))


def test_simclr_loss_matches_naive() -> None:
    z_a, z_b, tau = torch.randn(5, 4, dtype=D64), torch.randn(5, 4, dtype=D64), 0.1
    q_a, q_b = F.normalize(z_a, dim=-1), F.normalize(z_b, dim=-1)

    def side(q: torch.Tensor, other: torch.Tensor) -> float:
        total = 0.0
        for i in range(5):
            positive = math.exp(float(q[i] @ other[i]) / tau)
            denominator = sum(math.exp(float(q[i] @ other[j]) / tau) for j in range(5))
            denominator += sum(math.exp(float(q[i] @ q[j]) / tau) for j in range(5) if j != i)
            total -= math.log(positive / denominator)
        return total / 5

    naive = 0.5 * (side(q_a, q_b) + side(q_b, q_a))
    torch.testing.assert_close(simclr_loss(z_a, z_b, tau), torch.tensor(naive, dtype=D64))


def test_mmd2_matches_naive_and_is_the_squared_gap_for_a_linear_kernel() -> None:
    x, y, sigmas = torch.randn(4, 3, dtype=D64), torch.randn(6, 3, dtype=D64) + 1, torch.tensor([0.5, 2.0], dtype=D64)

    def k(a: torch.Tensor, b: torch.Tensor) -> float:
        return sum(math.exp(-float((a - b).square().sum()) / (2 * s**2)) for s in sigmas.tolist())

    def mean_k(a: torch.Tensor, b: torch.Tensor) -> float:
        return sum(k(u, v) for u in a for v in b) / (len(a) * len(b))

    naive = mean_k(x, x) + mean_k(y, y) - 2 * mean_k(x, y)  # 4 against 6 points: unequal sets
    torch.testing.assert_close(mmd2(x, y, sigmas), torch.tensor(naive, dtype=D64))
    torch.testing.assert_close(mmd2(x, y, sigmas.tolist()), torch.tensor(naive, dtype=D64))  # sigmas as a list
    x4, y4 = x[:4], y[:4]  # equal sizes, as image and text sets are
    naive = mean_k(x4, x4) + mean_k(y4, y4) - 2 * mean_k(x4, y4)
    torch.testing.assert_close(mmd2(x4, y4, sigmas), torch.tensor(naive, dtype=D64))
    assert mmd2(x, x, sigmas) < 1e-12
    # The distributed form with unequal sets: 2 ranks, 2 of the 4 x rows and 3 of the 6 y rows each.
    shards = [(x[r * 2 : (r + 1) * 2], y[r * 3 : (r + 1) * 3]) for r in range(2)]
    averaged = sum(mmd2(xr, yr, sigmas, all_x=x, all_y=y) for xr, yr in shards) / 2
    torch.testing.assert_close(averaged, mmd2(x, y, sigmas))
    with pytest.raises(UserError, match="shards must be even"):
        mmd2(x[:2], y[:2], sigmas, all_x=x, all_y=y)


def test_grad_reverse_is_identity_forward_and_negated_scaled_backward() -> None:
    x = torch.randn(3, 2, dtype=D64, requires_grad=True)
    y = grad_reverse(x, 0.3)
    torch.testing.assert_close(y, x)
    (y * torch.arange(6, dtype=D64).view(3, 2)).sum().backward()
    torch.testing.assert_close(x.grad, -0.3 * torch.arange(6, dtype=D64).view(3, 2))


def test_distributed_forms_average_to_the_global_loss() -> None:
    """Every loss's local-rows/global-columns form, averaged over equal shards, is the global
    loss: the identity that makes DDP's gradient averaging exact."""
    n, half = 8, 4
    image, text = _unit(n, 5), _unit(n, 5)
    x, y = _unit(n, 3, 5), _unit(n, 4, 5)
    mask = _mask([4, 2, 3, 1, 4, 2, 3, 4], 4)
    sigmas = torch.tensor([0.7, 1.4], dtype=D64)
    shards = [slice(r * half, (r + 1) * half) for r in range(2)]

    def averaged(fn) -> torch.Tensor:
        return sum(fn(rows, rows.start) for rows in shards) / 2

    cases = {
        "siglip": (lambda r, o: siglip_loss(image[r], text[r], 5.0, -2.0, all_text=text, row_offset=o), siglip_loss(image, text, 5.0, -2.0)),
        "filip": (
            lambda r, o: filip_loss(x[r], y[r], mask[r], 6.0, all_image_tokens=x, all_text_tokens=y, all_text_mask=mask, row_offset=o),
            filip_loss(x, y, mask, 6.0),
        ),
        "cyclic_in": (lambda r, o: cyclic_losses(image[r], text[r], all_image=image, all_text=text)[0], cyclic_losses(image, text)[0]),
        "cyclic_cross": (lambda r, o: cyclic_losses(image[r], text[r], all_image=image, all_text=text)[1], cyclic_losses(image, text)[1]),
        "simclr": (lambda r, o: simclr_loss(image[r], text[r], 0.1, all_z_a=image, all_z_b=text, row_offset=o), simclr_loss(image, text, 0.1)),
        "mmd": (lambda r, o: mmd2(image[r], text[r], sigmas, all_x=image, all_y=text), mmd2(image, text, sigmas)),
    }  # fmt: skip
    for name, (local, global_value) in cases.items():
        torch.testing.assert_close(averaged(local), global_value, msg=name)


# ---- chunked, recomputing InfoNCE and sigmoid (issue 30) against the naive references --------
def naive_siglip_loss(image: torch.Tensor, text: torch.Tensor, scale: float, bias: float) -> torch.Tensor:
    """-(1/N) sum_ij log sigmoid(z_ij (s <I_i, T_j> + b)) as explicit loops."""
    n, total = image.shape[0], 0.0
    for i in range(n):
        for j in range(text.shape[0]):
            z = 1.0 if i == j else -1.0
            total += math.log1p(math.exp(-z * (scale * float(image[i] @ text[j]) + bias)))
    return torch.tensor(total / n, dtype=D64)


def dense_reference(kind: str, image: torch.Tensor, text: torch.Tensor, scale, bias) -> torch.Tensor:
    """The formula on the whole logit matrix, for autograd's gradients: InfoNCE from its row and
    column log-sum-exps, sigmoid from its signed logits."""
    logits = scale * image @ text.T
    if kind == "infonce":
        positives = logits.diagonal()
        return 0.5 * ((logits.logsumexp(1) - positives).mean() + (logits.logsumexp(0) - positives).mean())
    signs = 2 * torch.eye(image.shape[0], dtype=image.dtype) - 1
    return -F.logsigmoid(signs * (logits + bias)).sum() / image.shape[0]


def chunked(kind: str, image, text, scale, bias, chunk: int, **distributed) -> torch.Tensor:
    if kind == "infonce":
        return clip_loss(image, text, scale, chunk=chunk, **distributed)
    distributed.pop("all_image", None)
    return siglip_loss(image, text, scale, bias, chunk=chunk, **distributed)


def loss_and_grads(loss_fn, image: torch.Tensor, text: torch.Tensor, log_scale: float, bias: float):
    """(loss, dI, dT, d log s, db) of ``loss_fn(image, text, s, b)`` with s = exp(log_scale)."""
    leaves = [image.clone().requires_grad_(), text.clone().requires_grad_()]
    leaves += [
        torch.tensor(log_scale, dtype=D64, requires_grad=True),
        torch.tensor(bias, dtype=D64, requires_grad=True),
    ]
    loss = loss_fn(leaves[0], leaves[1], leaves[2].exp(), leaves[3])
    loss.backward()
    return [loss.detach()] + [leaf.grad if leaf.grad is not None else torch.zeros_like(leaf) for leaf in leaves]


def _pairs(n: int = 12, d: int = 6, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit image and text rows with duplicate captions: the last text repeats text 3, and texts
    1 and 2 both equal image 1 (a tie between the target column and another)."""
    torch.manual_seed(seed)
    image, text = _unit(n, d), _unit(n, d)
    text[-1] = text[3]
    text[1] = text[2] = image[1]
    return image, text


@pytest.mark.parametrize("kind", ["infonce", "sigmoid"])
@pytest.mark.parametrize("chunk", [1, 3, 4, 5, 7, 12, 20])  # divides 12 or not, one block, more than N
@pytest.mark.parametrize("log_scale", [math.log(10.0), math.log(100.0)])  # the init scale, the clamp
def test_chunked_loss_and_gradients_equal_the_naive_references(kind: str, chunk: int, log_scale: float) -> None:
    """float64, duplicate captions: the chunked loss equals the loops over the formula, and its
    gradients (embeddings, scale, bias) equal autograd's through the whole logit matrix, to 1e-9."""
    image, text = _pairs()
    scale, bias = math.exp(log_scale), -10.0
    got = loss_and_grads(lambda i, t, s, b: chunked(kind, i, t, s, b, chunk), image, text, log_scale, bias)
    want = loss_and_grads(lambda i, t, s, b: dense_reference(kind, i, t, s, b), image, text, log_scale, bias)
    naive = naive_clip_loss(image, text, scale) if kind == "infonce" else naive_siglip_loss(image, text, scale, bias)
    torch.testing.assert_close(got[0], naive, rtol=1e-9, atol=1e-9)
    if kind == "infonce":
        assert got[4].abs().max() == 0  # no bias
    for name, a, b in zip(["loss", "image", "text", "log_scale", "bias"], got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9, msg=name)


@pytest.mark.parametrize("kind", ["infonce", "sigmoid"])
@pytest.mark.parametrize("chunk", [2, 3, 6])
def test_chunked_distributed_form_gives_the_global_gradient(kind: str, chunk: int) -> None:
    """Two 'ranks' of 6 rows: each rank's local rows against the gathered columns, labels offset
    by 6, divided by 6; their mean and its gradients are the global loss's (the identity that
    makes DDP exact; the 2-process run is in test_objectives.py)."""
    image, text = _pairs()
    shards = [slice(0, 6), slice(6, 12)]

    def averaged(i, t, s, b):
        return (
            sum(chunked(kind, i[r], t[r], s, b, chunk, all_image=i, all_text=t, row_offset=r.start) for r in shards) / 2
        )

    got = loss_and_grads(averaged, image, text, 2.0, -3.0)
    want = loss_and_grads(lambda i, t, s, b: dense_reference(kind, i, t, s, b), image, text, 2.0, -3.0)
    for name, a, b in zip(["loss", "image", "text", "log_scale", "bias"], got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9, msg=name)


@pytest.mark.parametrize("kind", ["infonce", "sigmoid"])
def test_chunked_backward_passes_gradcheck(kind: str) -> None:
    """Finite differences, independent of autograd: one process, and a rank's distributed form."""
    image, text = _pairs(7, 4)
    leaves = (image.requires_grad_(), text.requires_grad_(), torch.tensor(1.7, dtype=D64, requires_grad=True),
              torch.tensor(-2.0, dtype=D64, requires_grad=True))  # fmt: skip
    assert torch.autograd.gradcheck(lambda i, t, s, b: chunked(kind, i, t, s, b, 3), leaves)
    assert torch.autograd.gradcheck(
        lambda i, t, s, b: chunked(kind, i[4:], t[4:], s, b, 2, all_image=i, all_text=t, row_offset=4), leaves
    )


@pytest.mark.parametrize("kind", ["infonce", "sigmoid"])
def test_chunked_losses_keep_float32_logits_under_bf16_autocast(kind: str) -> None:
    """Under bf16 autocast the chunked path computes exactly what it computes outside it, in
    float32 (forward and recomputing backward): autocast is off inside."""
    image, text = (x.float() for x in _pairs(10, 8))
    results = []
    for autocast in (False, True):
        i, t = image.clone().requires_grad_(), text.clone().requires_grad_()
        s, b = torch.tensor(50.0, requires_grad=True), torch.tensor(-10.0, requires_grad=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = chunked(kind, i, t, s, b, 3)
            loss.backward()  # inside the region: the backward must not drop to bf16 either
        assert loss.dtype == torch.float32
        results.append([loss.detach(), i.grad, t.grad, s.grad] + ([b.grad] if kind == "sigmoid" else []))
    for a, b in zip(*results, strict=True):
        assert torch.equal(a, b)
    dense = dense_reference(kind, image, text, torch.tensor(50.0), -10.0)
    torch.testing.assert_close(results[0][0], dense, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["infonce", "sigmoid"])
def test_chunked_losses_save_no_logit_matrix_for_the_backward(kind: str) -> None:
    """What autograd keeps for the backward: the dense formula saves [N, N] logits, the chunked
    path only its inputs and [N] log-sum-exps (memory O(N x chunk) at any N)."""
    n, d = 64, 8
    image, text = _unit(n, d).requires_grad_(), _unit(n, d).requires_grad_()
    scale = torch.tensor(10.0, dtype=D64, requires_grad=True)

    def largest_saved(chunk: int | None) -> int:
        sizes = [0]

        def pack(tensor: torch.Tensor) -> torch.Tensor:
            sizes.append(tensor.numel())
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            if kind == "infonce":
                clip_loss(image, text, scale, chunk=chunk)
            else:
                siglip_loss(image, text, scale, -10.0, chunk=chunk)
        return max(sizes)

    assert largest_saved(None) >= n * n
    assert largest_saved(8) <= n * d


def test_chunked_losses_stay_accurate_at_extreme_logits() -> None:
    """Scale 100 on identical pairs in float32 (target logits 100, loss ~0.01): the running
    log-sum-exp and the sigmoid's log stay finite, and the small loss survives the subtraction
    of target logits from log-sum-exps near 100 (each row's difference is taken first)."""
    image = F.normalize(torch.randn(33, 4), dim=-1)
    exact = image.double()
    for loss, reference in [
        (clip_loss(image, image, 100.0, chunk=8), clip_loss(exact, exact, 100.0)),
        (siglip_loss(image, image, 100.0, 10.0, chunk=8), siglip_loss(exact, exact, 100.0, 10.0)),
    ]:
        assert torch.isfinite(loss)
        torch.testing.assert_close(loss.double(), reference, rtol=1e-6, atol=1e-6)
