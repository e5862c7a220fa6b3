"""Pure tensor functions for the objective terms: no Lightning, no torch.distributed.

Every function takes the rows this process owns and, optionally, the columns of the whole
global batch (gathered by the caller with gradient) plus the offset of its own rows in that
batch. Called with local tensors only, they are exactly the single-process paper formulas;
called with gathered columns and normalised by the local row count, DDP's gradient averaging
turns them into the gradient of the global-batch loss (docs/DESIGN.md, "The distributed rule").
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from common.errors import UserError


def logit_chunk(rows: int, columns: int, device: torch.device) -> int | None:
    """Rows per block for the chunked InfoNCE and sigmoid losses on a [rows, columns] logit
    matrix, or None for the dense formula, chosen by size and device.

    A block holds about 2**20 logits on a CPU (4 MiB in float32: blocks that stay in cache were
    the fastest; the chunked loss took 0.47-0.51x the dense one's time at N = 4096, D = 128, one
    thread of a 2-core Xeon: benchmarks/RESULTS.md) and 2**24 elsewhere (64 MiB: fewer, larger
    kernels; not measured). The threshold counts one process's logits, [local rows, all columns]:
    under DDP the dense formula stops earlier (about 724 local rows with 2 processes). A matrix that fits in one block keeps the dense formula: its few
    N x N matrices are small there (<= 24 MiB on a CPU, N <= 1024 in one process), and runs at
    those batches keep their bit-exact losses. At least 32 rows: each block's backward updates
    the whole [N, D] column gradient, which thinner blocks would pass over too often.
    """
    budget = 2**20 if device.type == "cpu" else 2**24
    if rows * columns <= budget:
        return None
    return max(32, budget // columns)


def _as_tensor(value: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor:
    """A scale or bias as a 0-dim tensor of ``like``'s dtype (a float gets no gradient)."""
    return torch.as_tensor(value, dtype=like.dtype, device=like.device)


def _accumulate(
    p: torch.Tensor,
    x: torch.Tensor,
    columns: torch.Tensor,
    start: int,
    grad_rows: torch.Tensor | None,
    grad_columns: torch.Tensor | None,
    grad_scale: torch.Tensor | None,
) -> None:
    """Add one block's share of the gradients, given P = dL/d(logits) for rows ``x`` against
    ``columns``, before the factor s: dX_b = P C, dC += P^T X_b, and for the scale
    <P, X_b C^T> = sum((P C) * X_b), which reuses P C instead of another pass over the block."""
    if grad_rows is not None or grad_scale is not None:
        pc = p @ columns
        if grad_rows is not None:
            grad_rows[start : start + x.shape[0]] = pc
        if grad_scale is not None:
            grad_scale += (pc * x).sum()
    if grad_columns is not None:
        grad_columns.addmm_(p.T, x)


def _scaled(scale: torch.Tensor, grad: torch.Tensor, *grads: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
    """(dX, dC, ds) times the incoming gradient, the embeddings' also times s: multiplying the
    [N, D] results once instead of every block."""
    grad_rows, grad_columns, grad_scale = grads
    factor = scale * grad
    return (
        None if grad_rows is None else grad_rows.mul_(factor),
        None if grad_columns is None else grad_columns.mul_(factor),
        None if grad_scale is None else grad_scale * grad,
    )


class _ChunkedInfoNCE(torch.autograd.Function):
    """Sum over rows i of CE(s X_i C^T, target i + offset), ``chunk`` rows at a time; with
    ``symmetric`` (C's rows are the same pairs as X's, offset 0) also the column direction
    CE(s C X^T) from the same blocks. Returns the SUM over rows (the caller divides).

    Forward: per block of rows, the logits s X_b C^T [c, N]; each row's log-sum-exp, and with
    ``symmetric`` each column's, accumulated over blocks with ``logaddexp`` (a running max in
    disguise: stable whatever the scale). Keeps only its inputs and the log-sum-exps [N].
    Backward: recomputes each block from the embeddings and the saved log-sum-exps,
        P = exp(s X_b C^T - lse_row) [+ exp(s X_b C^T - lse_col)] - (1 or 2) at the targets,
    which is dL/d(logits), and accumulates dX_b = s P C, dC += s P^T X_b, ds += <P, X_b C^T>.
    Memory beyond the inputs: two or three [chunk, N] blocks at a time. Computes in the inputs'
    dtype with autocast off in both passes (the terms hand in float32), so the backward
    recomputes exactly what the forward saw, even when called inside an autocast region.
    """

    @staticmethod
    def forward(ctx, rows, columns, scale, offset: int, chunk: int, symmetric: bool):
        with torch.autocast(rows.device.type, enabled=False):
            n = rows.shape[0]
            row_lse, positives = rows.new_empty(n), rows.new_empty(n)
            col_lse = rows.new_full((columns.shape[0],), float("-inf")) if symmetric else None
            for start in range(0, n, chunk):
                logits = (rows[start : start + chunk] @ columns.T).mul_(scale)
                row_lse[start : start + chunk] = logits.logsumexp(dim=1)
                # The target logits from the same GEMM as the log-sum-exps: their rounding cancels
                # in lse - positive (a separate dot product loses ~1e-5 at s = 100 in float32).
                positives[start : start + chunk] = logits.diagonal(offset + start)
                if col_lse is not None:  # symmetric
                    col_lse = torch.logaddexp(col_lse, logits.logsumexp(dim=0))
            # Each row's difference first: sums of log-sum-exps near s * N would swallow it.
            loss = (row_lse - positives).sum()
            if col_lse is not None:
                loss = loss + (col_lse - positives).sum()  # column j's target is row j
        ctx.save_for_backward(rows, columns, scale, row_lse, col_lse)
        ctx.offset, ctx.chunk, ctx.symmetric = offset, chunk, symmetric
        return loss

    @staticmethod
    def backward(ctx, grad):
        rows, columns, scale, row_lse, col_lse = ctx.saved_tensors
        needs_rows, needs_columns, needs_scale = ctx.needs_input_grad[:3]
        grad_rows = torch.empty_like(rows) if needs_rows else None
        grad_columns = torch.zeros_like(columns) if needs_columns else None
        grad_scale = torch.zeros_like(scale) if needs_scale else None
        targets = 2.0 if ctx.symmetric else 1.0  # each direction's softmax minus its one-hot
        with torch.autocast(rows.device.type, enabled=False):
            for start in range(0, rows.shape[0], ctx.chunk):
                x = rows[start : start + ctx.chunk]
                logits = (x @ columns.T).mul_(scale)
                p = (logits - row_lse[start : start + ctx.chunk, None]).exp_()
                if ctx.symmetric:
                    p += logits.sub_(col_lse).exp_()
                del logits
                p.diagonal(ctx.offset + start).sub_(targets)  # row i's target is column offset + start + i
                _accumulate(p, x, columns, start, grad_rows, grad_columns, grad_scale)
        return _scaled(scale, grad, grad_rows, grad_columns, grad_scale) + (None, None, None)


class _ChunkedSigmoid(torch.autograd.Function):
    """Sum over rows i and columns j of -log sigmoid(z_ij (s X_i.C_j + b)), z = 1 at the targets
    (column i + offset), else -1; ``chunk`` rows at a time. Returns the SUM (the caller divides).

    Forward: per block, z * logit (the logits negated, the targets' sign flipped back) and the
    sum of its -logsigmoid (exact for any logit; softplus's linear cut-off at 20 would not be).
    Backward: recomputes the block; dL/d(logit) = sigmoid(logit) - [target] =: P, so
    dX_b = s P C, dC += s P^T X_b, ds += <P, X_b C^T>, db += sum(P). Keeps only its inputs;
    one [chunk, N] block at a time. Autocast off in both passes, as in :class:`_ChunkedInfoNCE`.
    """

    @staticmethod
    def forward(ctx, rows, columns, scale, bias, offset: int, chunk: int):
        with torch.autocast(rows.device.type, enabled=False):
            loss = rows.new_zeros(())
            for start in range(0, rows.shape[0], chunk):
                signed = (rows[start : start + chunk] @ columns.T).mul_(-scale).sub_(bias)  # z * logit, z = -1 ...
                signed.diagonal(offset + start).neg_()  # ... but +1 at the targets
                loss -= F.logsigmoid(signed).sum()
        ctx.save_for_backward(rows, columns, scale, bias)
        ctx.offset, ctx.chunk = offset, chunk
        return loss

    @staticmethod
    def backward(ctx, grad):
        rows, columns, scale, bias = ctx.saved_tensors
        needs_rows, needs_columns, needs_scale, needs_bias = ctx.needs_input_grad[:4]
        grad_rows = torch.empty_like(rows) if needs_rows else None
        grad_columns = torch.zeros_like(columns) if needs_columns else None
        grad_scale = torch.zeros_like(scale) if needs_scale else None
        grad_bias = torch.zeros_like(bias) if needs_bias else None
        with torch.autocast(rows.device.type, enabled=False):
            for start in range(0, rows.shape[0], ctx.chunk):
                x = rows[start : start + ctx.chunk]
                p = (x @ columns.T).mul_(scale).add_(bias).sigmoid_()
                p.diagonal(ctx.offset + start).sub_(1.0)
                _accumulate(p, x, columns, start, grad_rows, grad_columns, grad_scale)
                if grad_bias is not None:
                    grad_bias += p.sum()
        grad_bias = None if grad_bias is None else grad_bias * grad
        return _scaled(scale, grad, grad_rows, grad_columns, grad_scale) + (grad_bias, None, None)


def clip_loss(
    image: torch.Tensor,
    text: torch.Tensor,
    logit_scale: torch.Tensor | float,
    *,
    all_image: torch.Tensor | None = None,
    all_text: torch.Tensor | None = None,
    row_offset: int = 0,
    chunk: int | None = None,
) -> torch.Tensor:
    """CLIP's symmetric InfoNCE (Radford et al. 2021, arXiv 2103.00020).

    L = 1/2 [CE(s I T^T) + CE(s T I^T)] with targets arange(N), for L2-normalised
    ``image``, ``text`` [N, D] and an already exponentiated scale ``s``.

    Under DDP pass this rank's rows as ``image``/``text``, the gathered global batch as
    ``all_image``/``all_text`` and ``row_offset = rank * local_batch``: the result is the
    mean over the local rows of the same per-row losses as the global formula.

    ``chunk`` (rows per block) computes the same loss blockwise with a recomputing backward
    (:class:`_ChunkedInfoNCE`, memory O(N x chunk)); None, the dense formula (O(N^2)). With one
    process both directions come from the blocks of s I T^T (row and column log-sum-exps); under
    DDP they are two passes, this rank's images against all texts and its texts against all
    images, as in the dense form.
    """
    all_image = image if all_image is None else all_image
    all_text = text if all_text is None else all_text
    n = image.shape[0]
    if chunk is not None:
        scale = _as_tensor(logit_scale, image)
        if all_image is image and all_text is text and row_offset == 0:
            return _ChunkedInfoNCE.apply(image, text, scale, 0, chunk, True) / (2 * n)
        i2t = _ChunkedInfoNCE.apply(image, all_text, scale, row_offset, chunk, False)
        t2i = _ChunkedInfoNCE.apply(text, all_image, scale, row_offset, chunk, False)
        return (i2t + t2i) / (2 * n)
    targets = torch.arange(n, device=image.device) + row_offset
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
    chunk: int | None = None,
) -> torch.Tensor:
    """SigLIP's pairwise sigmoid loss (Zhai et al. 2023, arXiv 2303.15343, Algorithm 1).

    L = -(1/N) sum_ij log sigmoid(z_ij (s <I_i, T_j> + b)),  z_ij = +1 if i == j else -1.

    Rows are this rank's images, columns all texts (``all_text``); dividing by the local row
    count keeps the per-row sums of the global formula. ``chunk`` (rows per block) computes it
    blockwise with a recomputing backward (:class:`_ChunkedSigmoid`, memory O(N x chunk));
    None, the dense formula.
    """
    all_text = text if all_text is None else all_text
    if chunk is not None:
        scale, bias = _as_tensor(logit_scale, image), _as_tensor(logit_bias, image)
        return _ChunkedSigmoid.apply(image, all_text, scale, bias, row_offset, chunk) / image.shape[0]
    logits = logit_scale * image @ all_text.T + logit_bias
    signs = -torch.ones_like(logits)
    rows = torch.arange(image.shape[0], device=image.device)
    signs[rows, rows + row_offset] = 1.0
    return -F.logsigmoid(signs * logits).sum() / image.shape[0]


def filip_chunk(n_images: int, n_texts: int, patches: int, tokens: int, budget: int = 2**24) -> int:
    """Images per chunk so that one [chunk, P, L, Nt] similarity block holds at most ``budget``
    elements (64 MiB in float32, 32 MiB in bf16; the backward holds about three such blocks)."""
    return max(1, min(n_images, budget // max(1, n_texts * patches * tokens)))


def _filip_block(image_tokens: torch.Tensor, text_by_position: torch.Tensor) -> torch.Tensor:
    """One chunk's similarity block [c, P, L, Nt] from image tokens [c, P, D] and position-major
    text tokens [L, Nt, D]: both maxima then reduce over a strided dimension, which ``amax``
    vectorises across the texts (the contiguous reduction over 32 positions does not, in bf16)."""
    c, p, d = image_tokens.shape
    length, n = text_by_position.shape[:2]
    return (image_tokens.reshape(c * p, d) @ text_by_position.reshape(length * n, d).T).view(c, p, length, n)


class _FilipScores(torch.autograd.Function):
    """FILIP's (i2t, t2i) chunked over images, from tokens whose padding repeats a real token.

    Forward keeps only its inputs. Backward recomputes a chunk's block and its maxima and sends
    each score's gradient to the (patch, token) pairs that reach the max, split evenly among
    ties as ``amax`` does: the gradient block G is zero elsewhere, so dX = G Y and dY = G^T X
    are two GEMMs. Extra memory: a few [chunk, P, L, Nt] blocks, whatever the batch. The block
    is in the tokens' dtype (bf16 GEMMs accumulate in float32); scores, their means and dY's sum
    over chunks are in float32 at least.
    """

    @staticmethod
    def forward(ctx, image_tokens, text_tokens, token_weights, chunk: int):
        # token_weights [Nt, L]: 1/length at real tokens, 0 at padding (the t2i mean).
        ctx.save_for_backward(image_tokens, text_tokens, token_weights)
        ctx.chunk = chunk
        ctx.set_materialize_grads(False)  # an unused side (the distributed halves) gets None
        by_position = text_tokens.transpose(0, 1).contiguous()  # [L, Nt, D]
        weights = token_weights.T  # [L, Nt]
        parts_i2t, parts_t2i = [], []
        for start in range(0, image_tokens.shape[0], chunk):
            block = _filip_block(image_tokens[start : start + chunk], by_position)
            best_tokens = block.amax(dim=2)  # [c, P, Nt]: each patch's best position (copies repeat a real token)
            parts_i2t.append(best_tokens.to(weights.dtype).mean(dim=1))
            best_patches = block.amax(dim=1)  # [c, L, Nt]: each position's best patch
            parts_t2i.append((best_patches.to(weights.dtype) * weights).sum(dim=1))  # mean over the real tokens
        return torch.cat(parts_i2t), torch.cat(parts_t2i)

    @staticmethod
    def backward(ctx, grad_i2t, grad_t2i):
        if grad_i2t is None and grad_t2i is None:
            return None, None, None, None
        image_tokens, text_tokens, token_weights = ctx.saved_tensors
        patches, dtype = image_tokens.shape[1], image_tokens.dtype
        n, length, d = text_tokens.shape
        by_position = text_tokens.transpose(0, 1).contiguous()  # [L, Nt, D]
        weights = token_weights.T  # [L, Nt]
        real = weights > 0  # [L, Nt]
        grad_image = torch.empty_like(image_tokens)
        grad_by_position = torch.zeros(length * n, d, dtype=token_weights.dtype, device=text_tokens.device)
        chunk = ctx.chunk
        for start in range(0, image_tokens.shape[0], chunk):
            x = image_tokens[start : start + chunk]
            c = x.shape[0]
            block = _filip_block(x, by_position)
            # Ties share the gradient. Counting in uint8 is far faster than a bool sum (int64),
            # and cannot overflow below 256 patches or positions.
            best_patch = best_token = None
            if grad_t2i is not None:
                best_patch = block == block.amax(dim=1, keepdim=True)  # [c, P, L, Nt]
            if grad_i2t is not None:
                # Padding copies are masked here: a GEMM may round a copy 1 ulp above the token it
                # copies, and the gradient must reach a real token.
                block.masked_fill_(~real, float("-inf"))
                best_token = block == block.amax(dim=2, keepdim=True)
            del block
            g = None
            if best_patch is not None:
                ties = (
                    best_patch.view(torch.uint8).sum(dim=1, dtype=torch.uint8)
                    if patches < 256
                    else best_patch.sum(dim=1)
                )
                to_patch = (grad_t2i[start : start + c, None, :] * weights / ties).to(dtype)  # [c, L, Nt]
                g = torch.where(best_patch, to_patch.unsqueeze(1), 0)
            if best_token is not None:
                ties = (
                    best_token.view(torch.uint8).sum(dim=2, dtype=torch.uint8)
                    if length < 256
                    else best_token.sum(dim=2)
                )
                to_token = (grad_i2t[start : start + c, None, :] / patches / ties).to(dtype)  # [c, P, Nt]
                to_tokens = torch.where(best_token, to_token.unsqueeze(2), 0)
                g = to_tokens if g is None else g.add_(to_tokens)
            assert g is not None, "at least one gradient is set: both None returned above"
            g = g.view(c * patches, length * n)
            grad_image[start : start + c] = (g @ by_position.view(length * n, d)).view(c, patches, d)
            grad_by_position += g.T @ x.reshape(c * patches, d)
        grad_text = grad_by_position.view(length, n, d).transpose(0, 1).to(dtype)
        return grad_image, grad_text, None, None


def _filip_scores(
    image_tokens: torch.Tensor,
    text_tokens: torch.Tensor,
    text_mask: torch.Tensor,
    chunk: int | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(i2t, t2i) [Ni, Nt], chunked over images; padding never contributes.

    Positions after every text's last real token are dropped. A padding position inside the
    kept length takes a copy of its text's first real token (a gather): the forward's max over
    a text's positions is then the max over its real tokens without masking the block; the
    backward masks the copies, so their gradient is zero.
    """
    precise = torch.promote_types(image_tokens.dtype, torch.float32)
    if not bool(text_mask.any(dim=1).all()):
        raise UserError("a text has no real token (its text_mask row is all False); FILIP needs at least one")
    positions = torch.arange(text_mask.shape[1], device=text_mask.device)
    length = int(torch.where(text_mask, positions + 1, 0).max())  # the longest text
    text_mask = text_mask[:, :length]
    first_real = torch.where(text_mask, positions[:length], length).amin(dim=1, keepdim=True)  # [Nt, 1]
    source = torch.where(text_mask, positions[:length], first_real)
    text_tokens = text_tokens[:, :length].gather(1, source.unsqueeze(-1).expand(-1, -1, text_tokens.shape[-1]))
    valid = text_mask.to(precise)
    token_weights = valid / valid.sum(dim=1, keepdim=True)
    n_images, patches = image_tokens.shape[:2]
    chunk = chunk or filip_chunk(n_images, text_tokens.shape[0], patches, length)
    return _FilipScores.apply(image_tokens, text_tokens, token_weights, chunk)


def filip_similarity(
    image_tokens: torch.Tensor, text_tokens: torch.Tensor, text_mask: torch.Tensor, chunk: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """FILIP's token-wise late-interaction similarities (Yao et al. 2021, arXiv 2111.07783, eq. 4-5).

    image_tokens [Ni, P, D], text_tokens [Nt, L, D] (L2-normalised), text_mask [Nt, L] bool
    (True = real token). Returns (i2t, t2i), both [Ni, Nt]:
        i2t[i, j] = mean over patches p of max over valid tokens k of <x_ip, y_jk>,
        t2i[i, j] = mean over valid tokens k of max over patches p of <x_ip, y_jk>.
    Padding never contributes. Memory beyond the inputs and scores: a few blocks of ``chunk``
    images (``filip_chunk``), whatever the batch. The GEMMs run in the tokens' dtype.
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
        if all_image_tokens is None or all_text_tokens is None or all_text_mask is None:
            raise ValueError("filip_loss: all_image_tokens, all_text_tokens and all_text_mask go together")
        i2t, _ = _filip_scores(image_tokens, all_text_tokens, all_text_mask, chunk)
        _, t2i = _filip_scores(all_image_tokens, text_tokens, text_mask, chunk)
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


def multi_view_clip_loss(
    images: Sequence[torch.Tensor],
    texts: Sequence[torch.Tensor],
    logit_scale: torch.Tensor | float,
    *,
    all_images: Sequence[torch.Tensor] | None = None,
    all_texts: Sequence[torch.Tensor] | None = None,
    row_offset: int = 0,
    chunk: int | None = None,
) -> torch.Tensor:
    """DeCLIP's multi-view supervision (Li et al. 2022, arXiv 2110.05208; official code
    prototype/solver/declip_solver.py L442-450): the mean of CLIP's symmetric InfoNCE
    (:func:`clip_loss`) over every (image view, text view) pair,

        L_MVS = 1/(V_i V_t) sum_{v, w} clip_loss(I_v, T_w, s),

    2 x 2 = 4 pairs in DeCLIP. Distributed form and ``chunk`` as :func:`clip_loss`, view by view.
    """
    all_images = images if all_images is None else all_images
    all_texts = texts if all_texts is None else all_texts
    losses = [
        clip_loss(image, text, logit_scale, all_image=all_image, all_text=all_text, row_offset=row_offset, chunk=chunk)
        for image, all_image in zip(images, all_images, strict=True)
        for text, all_text in zip(texts, all_texts, strict=True)
    ]
    return torch.stack(losses).mean()


def simsiam_loss(p_a: torch.Tensor, z_a: torch.Tensor, p_b: torch.Tensor, z_b: torch.Tensor) -> torch.Tensor:
    """SimSiam's symmetric negative cosine with stop-gradient (Chen and He 2021, arXiv
    2011.10566, Algorithm 1; DeCLIP's SimsiamLoss, prototype/loss_functions/loss.py L49-81):

        L = -1/2 [cos(p_a, sg(z_b)) + cos(p_b, sg(z_a))],  mean over rows,

    with projections z and predictions p of two views. Rows are independent, so the mean over
    this rank's rows is the distributed form (DDP's averaging makes it the global mean).
    """
    cos_ab = F.cosine_similarity(p_a, z_b.detach(), dim=-1)
    cos_ba = F.cosine_similarity(p_b, z_a.detach(), dim=-1)
    return -0.5 * (cos_ab.mean() + cos_ba.mean())


def masked_token_loss(logits: torch.Tensor, targets: torch.Tensor, total: int | torch.Tensor) -> torch.Tensor:
    """Masked language modelling's cross-entropy (Devlin et al. 2019, BERT, section 3.1; DeCLIP's
    text self-supervision, prototype/model/declip.py L330-334): the predictions ``logits`` [M, V]
    of the M masked tokens here against their original ids, summed and divided by ``total``,
    the number of masked tokens in the whole (global) batch; with total = M it is the mean.
    Zero (with a gradient path) when no token is masked anywhere."""
    return F.cross_entropy(logits, targets, reduction="sum") / max(int(total), 1)


@torch.no_grad()
def nearest_neighbours(queries: torch.Tensor, bank: torch.Tensor, chunk: int) -> torch.Tensor:
    """For each row of ``queries`` [N, D], the index of its most cosine-similar row of ``bank``
    [Q, D], searched ``chunk`` bank rows at a time (memory O(N x chunk), not O(N x Q)); among equal
    similarities the first row wins."""
    q = F.normalize(queries, dim=-1)
    best = torch.full((q.shape[0],), float("-inf"), device=q.device, dtype=q.dtype)
    index = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)
    for start in range(0, bank.shape[0], chunk):
        value, position = (q @ F.normalize(bank[start : start + chunk], dim=-1).T).max(dim=1)
        better = value > best
        best = torch.where(better, value, best)
        index = torch.where(better, position + start, index)
    return index


def nearest_neighbour_loss(
    images: Sequence[torch.Tensor],
    neighbours: Sequence[torch.Tensor],
    logit_scale: torch.Tensor | float,
    *,
    row_offset: int = 0,
) -> torch.Tensor:
    """DeCLIP's nearest-neighbour supervision (Li et al. 2022; official code declip.py L290-300,
    declip_solver.py L474-479): image -> text InfoNCE whose positives are the queue neighbours
    NN(T_w) of the batch's text views, averaged over image views v and text views w,

        L_NNS = 1/(V_i V_t) sum_{v, w} CE(s I_v NN(T_w)^T, arange),

    one direction only (the neighbours are constants: no gradient reaches the text side).
    ``neighbours`` hold the global batch's neighbours (gathered), ``images`` this rank's rows.
    """
    targets = torch.arange(images[0].shape[0], device=images[0].device) + row_offset
    losses = [
        F.cross_entropy(logit_scale * image @ neighbour.T, targets) for image in images for neighbour in neighbours
    ]
    return torch.stack(losses).mean()


def gaussian_kernel(a: torch.Tensor, b: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """[Na, Nb]: sum over sigmas of exp(-||a_i - b_j||^2 / (2 sigma^2))."""
    sq_dist = (a.square().sum(1, keepdim=True) + b.square().sum(1) - 2 * a @ b.T).clamp_min(0)
    return torch.exp(-sq_dist[None] / (2 * sigmas.to(a.dtype).view(-1, 1, 1) ** 2)).sum(0)


def mmd2(
    x: torch.Tensor,
    y: torch.Tensor,
    sigmas: torch.Tensor | Sequence[float],
    *,
    all_x: torch.Tensor | None = None,
    all_y: torch.Tensor | None = None,
) -> torch.Tensor:
    """Biased squared maximum mean discrepancy (Gretton et al. 2012) between the sets x [Nx, D]
    and y [Ny, D] (any sizes) with k(a, b) = sum_sigma exp(-||a - b||^2 / (2 sigma^2)):

        MMD^2 = mean(Kxx) + mean(Kyy) - 2 mean(Kxy).

    ``sigmas`` is a tensor or a list of bandwidths. Distributed form: this rank's nx, ny rows
    against all Nx, Ny columns (each set split evenly over the W ranks, Nx = W nx, Ny = W ny);
    every sum is divided by (local rows x all columns) and the cross term split as the x rows'
    K(x, all_y) plus the y rows' K(y, all_x), so the average over ranks is the global MMD^2.
    """
    all_x = x if all_x is None else all_x
    all_y = y if all_y is None else all_y
    nx, ny, big_nx, big_ny = x.shape[0], y.shape[0], all_x.shape[0], all_y.shape[0]
    if big_nx * ny != big_ny * nx:
        raise UserError(f"mmd2: the shards must be even: {nx} of {big_nx} x rows against {ny} of {big_ny} y rows")
    sigmas = torch.as_tensor(sigmas, dtype=x.dtype, device=x.device)
    kxx = gaussian_kernel(x, all_x, sigmas).sum() / (nx * big_nx)
    kyy = gaussian_kernel(y, all_y, sigmas).sum() / (ny * big_ny)
    kxy = gaussian_kernel(x, all_y, sigmas).sum() / (nx * big_ny) + gaussian_kernel(y, all_x, sigmas).sum() / (
        ny * big_nx
    )
    return kxx + kyy - kxy


def median_bandwidths(
    x: torch.Tensor, y: torch.Tensor, multipliers: tuple[float, ...] = (0.5, 1.0, 2.0)
) -> torch.Tensor:
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
    def forward(ctx, x: torch.Tensor, lambd: float) -> torch.Tensor:
        ctx.lambd = lambd
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return -ctx.lambd * grad, None


def grad_reverse(x: torch.Tensor, lambd: float = 1.0) -> torch.Tensor:
    """Gradient reversal layer (Ganin & Lempitsky 2015, arXiv 1409.7495): identity forward,
    -lambd * grad backward, so what minimises a loss downstream maximises it upstream."""
    return _GradReverse.apply(x, lambd)
