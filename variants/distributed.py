"""Gathering embeddings across processes so that gradients stay exact.

docs/DESIGN.md's rule: every term scores its own rows against the columns of the whole global
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
    def forward(ctx, local: torch.Tensor) -> torch.Tensor:
        rank, size = world()
        ctx.rank, ctx.rows = rank, local.shape[0]
        shards = [torch.empty_like(local) for _ in range(size)]
        dist.all_gather(shards, local.contiguous())
        return torch.cat(shards)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
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


def gather(local: torch.Tensor) -> torch.Tensor:
    """Concatenate ``local`` from all ranks without gradient (any dtype, bool included)."""
    _, size = world()
    if size == 1:
        return local
    as_int = local.to(torch.uint8) if local.dtype == torch.bool else local
    shards = [torch.empty_like(as_int) for _ in range(size)]
    dist.all_gather(shards, as_int.contiguous())
    return torch.cat(shards).to(local.dtype)


def global_sum(local: torch.Tensor) -> torch.Tensor:
    """The sum of ``local`` over all ranks, without gradient (e.g. a count of masked tokens)."""
    _, size = world()
    if size == 1:
        return local
    total = local.detach().clone()
    dist.all_reduce(total)
    return total


def pad_to_common_length(local: torch.Tensor, dim: int = 1, value: float = 0) -> torch.Tensor:
    """Pad ``local`` along ``dim`` to the largest size any rank has (batches padded to their
    own longest caption differ in length across ranks; gathers need one shape)."""
    _, size = world()
    if size == 1:
        return local
    length = torch.tensor(local.shape[dim], device=local.device)
    dist.all_reduce(length, op=dist.ReduceOp.MAX)
    missing = int(length) - local.shape[dim]
    if missing == 0:
        return local
    pad = [0, 0] * (local.ndim - dim - 1) + [0, missing]
    return torch.nn.functional.pad(local, pad, value=value)


class _AllReduceSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx, local: torch.Tensor) -> torch.Tensor:
        total = local.clone()
        dist.all_reduce(total)
        return total

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)  # every rank's output depends on every rank's input
        return grad


class GlobalBatchNorm1d(torch.nn.BatchNorm1d):
    """BatchNorm1d whose training statistics are those of the global batch across all ranks,
    with their gradient: under DDP it computes exactly what one process computes on the
    global batch. Unlike ``nn.SyncBatchNorm`` it also works on CPU (gloo); with one process it
    is ``nn.BatchNorm1d``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, size = world()
        if size == 1 or not self.training:
            return super().forward(x)
        # Statistics in float32 (bf16 autocast hands in bf16), variance in two passes.
        x32 = x.to(torch.promote_types(x.dtype, torch.float32))
        n = x.shape[0] * size  # every rank holds the same number of rows
        mean = _AllReduceSum.apply(x32.sum(0)) / n
        var = _AllReduceSum.apply((x32 - mean).square().sum(0)) / n  # biased, as BN normalises
        if self.track_running_stats:
            # BatchNorm registers these buffers whenever it tracks running statistics
            assert self.running_mean is not None and self.running_var is not None
            assert self.num_batches_tracked is not None
            with torch.no_grad():
                self.num_batches_tracked += 1
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.lerp_(mean.to(self.running_mean.dtype), m)
                self.running_var.lerp_((var * n / (n - 1)).to(self.running_var.dtype), m)
        y = (x32 - mean) / torch.sqrt(var + self.eps)
        if self.affine:
            y = y * self.weight + self.bias
        return y.to(x.dtype)
