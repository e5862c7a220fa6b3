"""Pure tensor functions for the objective terms: no Lightning, no torch.distributed.

Every function takes the rows this process owns and, optionally, the columns of the whole
global batch (gathered by the caller with gradient) plus the offset of its own rows in that
batch. Called with local tensors only, they are exactly the single-process paper formulas;
called with gathered columns and normalised by the local row count, DDP's gradient averaging
turns them into the gradient of the global-batch loss (DESIGN.md, "Distributed rule").
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def clip_loss(
    image: torch.Tensor,
    text: torch.Tensor,
    logit_scale: torch.Tensor | float,
    *,
    all_image: torch.Tensor | None = None,
    all_text: torch.Tensor | None = None,
    row_offset: int = 0,
) -> torch.Tensor:
    """CLIP's symmetric InfoNCE (Radford et al. 2021, arXiv 2103.00020).

    L = 1/2 [CE(s I T^T) + CE(s T I^T)] with targets arange(N), for L2-normalised
    ``image``, ``text`` [N, D] and an already exponentiated scale ``s``.

    Under DDP pass this rank's rows as ``image``/``text``, the gathered global batch as
    ``all_image``/``all_text`` and ``row_offset = rank * local_batch``: the result is the
    mean over the local rows of the same per-row losses as the global formula.
    """
    all_image = image if all_image is None else all_image
    all_text = text if all_text is None else all_text
    targets = torch.arange(image.shape[0], device=image.device) + row_offset
    logits_i2t = logit_scale * image @ all_text.T
    logits_t2i = logit_scale * text @ all_image.T
    return 0.5 * (F.cross_entropy(logits_i2t, targets) + F.cross_entropy(logits_t2i, targets))


def siglip_loss(
    image: torch.Tensor,
    text: torch.Tensor,
    logit_scale: torch.Tensor | float,
    logit_bias: torch.Tensor | float,
    *,
    all_text: torch.Tensor | None = None,
    row_offset: int = 0,
) -> torch.Tensor:
    """SigLIP's pairwise sigmoid loss (Zhai et al. 2023, arXiv 2303.15343, Algorithm 1).

    L = -(1/N) sum_ij log sigmoid(z_ij (s <I_i, T_j> + b)),  z_ij = +1 if i == j else -1.

    Rows are this rank's images, columns all texts (``all_text``); dividing by the local row
    count keeps the per-row sums of the global formula.
    """
    all_text = text if all_text is None else all_text
    logits = logit_scale * image @ all_text.T + logit_bias
    signs = -torch.ones_like(logits)
    rows = torch.arange(image.shape[0], device=image.device)
    signs[rows, rows + row_offset] = 1.0
    return -F.logsigmoid(signs * logits).sum() / image.shape[0]


def filip_chunk(n_images: int, n_texts: int, patches: int, tokens: int, budget: int = 2**24) -> int:
    """Images per chunk so that one [chunk, Nt, P, L] similarity block holds at most ``budget``
    elements (2**24 floats = 64 MiB)."""
    return max(1, min(n_images, budget // max(1, n_texts * patches * tokens)))


def _filip_block(
    image_tokens: torch.Tensor, text_tokens: torch.Tensor, text_mask: torch.Tensor, i2t: bool, t2i: bool
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    c, p, d = image_tokens.shape
    n, length = text_tokens.shape[:2]
    # One GEMM, laid out [c, P, Nt, L] so that no permuted copy of the block is made.
    sim = (image_tokens.reshape(c * p, d) @ text_tokens.reshape(n * length, d).T).view(c, p, n, length)
    out_i2t = out_t2i = None
    if t2i:  # max over the patches of image i, mean over the valid tokens of text j
        valid = text_mask.to(sim.dtype)
        out_t2i = (sim.max(dim=1).values * valid).sum(dim=2) / valid.sum(dim=1)
    if i2t:  # max over the valid tokens of text j, mean over the patches of image i
        # In place: max saves only its indices, so the block is not needed any more.
        masked = sim.masked_fill_(~text_mask, float("-inf"))
        out_i2t = masked.max(dim=3).values.mean(dim=1)
    return out_i2t, out_t2i


def _filip_scores(
    image_tokens: torch.Tensor,
    text_tokens: torch.Tensor,
    text_mask: torch.Tensor,
    chunk: int | None,
    i2t: bool = True,
    t2i: bool = True,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Chunked over images. Under autograd each chunk is checkpointed: only its inputs are kept
    and the [chunk, Nt, P, L] block is recomputed in backward, so no chunk's block (nor its
    argmax indices) outlives the chunk: extra memory is O(chunk * Nt * P * L)."""
    n_images, patches = image_tokens.shape[:2]
    chunk = chunk or filip_chunk(n_images, text_tokens.shape[0], patches, text_tokens.shape[1])
    track = torch.is_grad_enabled() and (image_tokens.requires_grad or text_tokens.requires_grad)
    parts_i2t, parts_t2i = [], []
    for start in range(0, n_images, chunk):
        args = (image_tokens[start : start + chunk], text_tokens, text_mask, i2t, t2i)
        if track:
            a, b = torch.utils.checkpoint.checkpoint(_filip_block, *args, use_reentrant=False)
        else:
            a, b = _filip_block(*args)
        parts_i2t.append(a)
        parts_t2i.append(b)
    return (torch.cat(parts_i2t) if i2t else None, torch.cat(parts_t2i) if t2i else None)


def filip_similarity(
    image_tokens: torch.Tensor, text_tokens: torch.Tensor, text_mask: torch.Tensor, chunk: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """FILIP's token-wise late-interaction similarities (Yao et al. 2021, arXiv 2111.07783, eq. 4-5).

    image_tokens [Ni, P, D], text_tokens [Nt, L, D] (L2-normalised), text_mask [Nt, L] bool
    (True = real token). Returns (i2t, t2i), both [Ni, Nt]:
        i2t[i, j] = mean over patches p of max over valid tokens k of <x_ip, y_jk>,
        t2i[i, j] = mean over valid tokens k of max over patches p of <x_ip, y_jk>.
    Padding never contributes. Never holds more than ``chunk`` images' [chunk, Nt, P, L] block.
    """
    return _filip_scores(image_tokens, text_tokens, text_mask, chunk)


def filip_loss(
    image_tokens: torch.Tensor,
    text_tokens: torch.Tensor,
    text_mask: torch.Tensor,
    logit_scale: torch.Tensor | float,
    *,
    all_image_tokens: torch.Tensor | None = None,
    all_text_tokens: torch.Tensor | None = None,
    all_text_mask: torch.Tensor | None = None,
    row_offset: int = 0,
    chunk: int | None = None,
) -> torch.Tensor:
    """FILIP's contrastive loss: L = 1/2 [CE(s * i2t) + CE(s * t2i^T)], targets arange(N).

    Distributed form: this rank's images against all texts (image->text rows) and this rank's
    texts against all images (text->image rows), labels offset by ``row_offset``.
    """
    n = image_tokens.shape[0]
    targets = torch.arange(n, device=image_tokens.device) + row_offset
    if all_image_tokens is None and all_text_tokens is None:
        i2t, t2i = _filip_scores(image_tokens, text_tokens, text_mask, chunk)
        t2i_rows = t2i.T
    else:
        i2t, _ = _filip_scores(image_tokens, all_text_tokens, all_text_mask, chunk, t2i=False)
        _, t2i = _filip_scores(all_image_tokens, text_tokens, text_mask, chunk, i2t=False)
        t2i_rows = t2i.T  # [n texts, N images]
    return 0.5 * (F.cross_entropy(logit_scale * i2t, targets) + F.cross_entropy(logit_scale * t2i_rows, targets))


def cyclic_losses(
    image: torch.Tensor,
    text: torch.Tensor,
    *,
    all_image: torch.Tensor | None = None,
    all_text: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """CyCLIP's consistency regularisers (Goel et al. 2022, arXiv 2205.14459; official code
    src/train.py get_loss), on raw cosines, no softmax, no temperature, divided by N:

        in-modal    = ||I I^T - T T^T||_F^2 / N,   cross-modal = ||I T^T - T I^T||_F^2 / N.

    Distributed form: this rank's rows against all columns, divided by the local row count.
    """
    all_image = image if all_image is None else all_image
    all_text = text if all_text is None else all_text
    n = image.shape[0]
    inmodal = (image @ all_image.T - text @ all_text.T).square().sum() / n
    crossmodal = (image @ all_text.T - text @ all_image.T).square().sum() / n
    return inmodal, crossmodal


def simclr_loss(
    z_a: torch.Tensor,
    z_b: torch.Tensor,
    temperature: float,
    *,
    all_z_a: torch.Tensor | None = None,
    all_z_b: torch.Tensor | None = None,
    row_offset: int = 0,
) -> torch.Tensor:
    """SLIP's SIMCLRLoss (Mu et al. 2021, arXiv 2112.12750; NT-Xent of SimCLR, Chen et al. 2020).

    q = normalize(z). For view a: l_i = -log exp(q_a_i.q_b_i / tau) /
    (sum_j exp(q_a_i.q_b_j / tau) + sum_{j != i} exp(q_a_i.q_a_j / tau)); symmetric in a, b;
    L = mean over rows of (l^a + l^b) / 2. Distributed form: local rows, gathered columns
    (``all_z_*``, unnormalised), ``row_offset`` = index of the first local row.
    """
    q_a, q_b = F.normalize(z_a, dim=-1), F.normalize(z_b, dim=-1)
    all_q_a = q_a if all_z_a is None else F.normalize(all_z_a, dim=-1)
    all_q_b = q_b if all_z_b is None else F.normalize(all_z_b, dim=-1)
    n = q_a.shape[0]
    targets = torch.arange(n, device=q_a.device) + row_offset
    self_mask = F.one_hot(targets, all_q_a.shape[0]).bool()
    logits_aa = (q_a @ all_q_a.T / temperature).masked_fill(self_mask, float("-inf"))
    logits_bb = (q_b @ all_q_b.T / temperature).masked_fill(self_mask, float("-inf"))
    logits_ab = q_a @ all_q_b.T / temperature
    logits_ba = q_b @ all_q_a.T / temperature
    loss_a = F.cross_entropy(torch.cat([logits_ab, logits_aa], dim=1), targets)
    loss_b = F.cross_entropy(torch.cat([logits_ba, logits_bb], dim=1), targets)
    return 0.5 * (loss_a + loss_b)


def gaussian_kernel(a: torch.Tensor, b: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """[Na, Nb]: sum over sigmas of exp(-||a_i - b_j||^2 / (2 sigma^2))."""
    sq_dist = (a.square().sum(1, keepdim=True) + b.square().sum(1) - 2 * a @ b.T).clamp_min(0)
    return torch.exp(-sq_dist[None] / (2 * sigmas.to(a.dtype).view(-1, 1, 1) ** 2)).sum(0)


def mmd2(
    x: torch.Tensor,
    y: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    all_x: torch.Tensor | None = None,
    all_y: torch.Tensor | None = None,
) -> torch.Tensor:
    """Biased squared maximum mean discrepancy (Gretton et al. 2012) between the sets x and y
    with k(a, b) = sum_sigma exp(-||a - b||^2 / (2 sigma^2)):

        MMD^2 = mean(Kxx) + mean(Kyy) - 2 mean(Kxy).

    Distributed form: the local x, y rows against all columns; averaging the ranks' values
    gives the global MMD^2 (the cross term is split as mean(Kxy) + mean(Kyx) over local rows).
    """
    all_x = x if all_x is None else all_x
    all_y = y if all_y is None else all_y
    n, big_n = x.shape[0], all_x.shape[0]
    scale = 1.0 / (n * big_n)
    kxx = gaussian_kernel(x, all_x, sigmas).sum()
    kyy = gaussian_kernel(y, all_y, sigmas).sum()
    kxy = gaussian_kernel(x, all_y, sigmas).sum() + gaussian_kernel(y, all_x, sigmas).sum()
    return scale * (kxx + kyy - kxy)


def median_bandwidths(x: torch.Tensor, y: torch.Tensor, multipliers: tuple[float, ...] = (0.5, 1.0, 2.0)) -> torch.Tensor:
    """Gaussian bandwidths from the median heuristic: the median Euclidean distance between
    distinct points of x and y pooled, times each multiplier (no gradient)."""
    with torch.no_grad():
        points = torch.cat([x, y])
        dist = torch.cdist(points, points)
        off_diagonal = dist[~torch.eye(points.shape[0], dtype=torch.bool, device=points.device)]
        median = off_diagonal.median().clamp_min(1e-6)
    return median * torch.tensor(multipliers, dtype=points.dtype, device=points.device)


class _GradReverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, lambd: float) -> torch.Tensor:  # type: ignore[override]
        ctx.lambd = lambd
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        return -ctx.lambd * grad, None


def grad_reverse(x: torch.Tensor, lambd: float = 1.0) -> torch.Tensor:
    """Gradient reversal layer (Ganin & Lempitsky 2015, arXiv 1409.7495): identity forward,
    -lambd * grad backward, so what minimises a loss downstream maximises it upstream."""
    return _GradReverse.apply(x, lambd)
