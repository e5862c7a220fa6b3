"""Gathering embeddings across processes so that gradients stay exact.

DESIGN.md's rule: every term scores its own rows against the columns of the whole global
batch, gathered WITH gradient. The backward of the gather sums, over all ranks, the gradient
each rank's loss sends to a shard, and hands every rank the part for its own shard.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def world() -> tuple[int, int]:
    """(rank, world_size) of the default process group, (0, 1) outside one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class _GatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, local: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        rank, size = world()
        ctx.rank, ctx.rows = rank, local.shape[0]
        shards = [torch.empty_like(local) for _ in range(size)]
        dist.all_gather(shards, local.contiguous())
        return torch.cat(shards)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        grad = grad.contiguous()
        dist.all_reduce(grad)  # sum of what every rank's loss sends to every shard
        return grad[ctx.rank * ctx.rows : (ctx.rank + 1) * ctx.rows]


def gather_with_grad(local: torch.Tensor) -> torch.Tensor:
    """Concatenate ``local`` [n, ...] from all ranks in rank order, differentiably.

    Every rank must hold the same number of rows (training loaders drop the last batch).
    Returns ``local`` itself outside a process group or with a single process.
    """
    _, size = world()
    if size == 1:
        return local
    return _GatherWithGrad.apply(local)


def row_offset(local_rows: int) -> int:
    """Index of this rank's first row in the gathered global batch."""
    rank, _ = world()
    return rank * local_rows
