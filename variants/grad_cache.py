"""Gradient caching: the exact gradient of one large contrastive batch at the memory of a micro-batch.

GradCache (Gao et al. 2021, "Scaling Deep Contrastive Learning Batch Size under Memory Limited
Setup", arXiv 2101.06983; official code luyug/GradCache, ``GradCache.forward_no_grad``,
``build_cache`` and ``forward_backward``; open_clip's ``accum_freq`` is the same idea). A contrastive
loss L couples every row of the batch, but it reads the towers only through the representations
r = f(x; theta). So for a batch split into micro-batches x_1..x_k:

    dL/dtheta = sum_j (dr_j/dtheta)^T g_j,   with g = dL/dr computed once on all of r.

The step: (1) encode every micro-batch without autograd, keeping its random-number state; (2) the
terms run on the concatenated representations with autograd: their loss, their own layers'
gradients and g; (3) re-encode each micro-batch with autograd, replaying its random-number state,
and backpropagate its slice of g. Memory: one micro-batch's activations plus the cached
representations (and, for FILIP, the cached token features), whatever the contrastive batch.

Here step 3 lives in the backward of an autograd Function whose inputs are the towers' trainable
parameters and whose outputs are the cached representations. The backward sums each parameter's
gradient over the micro-batches (``torch.autograd.grad``, which fires no accumulation hook) and
returns the sum, so the autograd engine accumulates every parameter's gradient once per step, as
in a plain step: DDP's gradient hooks fire once, and Lightning's loss scaling, gradient clipping
and optimizer see an ordinary backward.

Exactness conditions (what makes step 3 differentiate what step 1 computed):
- Random draws inside the towers (dropout, drop path) are replayed: each micro-batch's CPU and
  accelerator generator states are saved before its first pass and restored before its second;
  afterwards the generators continue from where the first pass left them.
- Autocast (bf16-mixed) is re-entered as in the first pass (a backward runs outside autocast).
- BatchNorm inside a tower normalises each micro-batch with its own statistics, as it normalises
  each process's rows under DDP: that step is not the plain step's (ContrastiveModule warns once).
  Running statistics are updated by the first pass only (the replay restores the buffers).
- Terms' own layers (SimCLR's projector with its BatchNorm, a discriminator) run once on the whole
  cached batch, so they stay exact.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import fields
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import get_device_states, set_device_states

from variants.towers import Encoded

_FIELDS = tuple(f.name for f in fields(Encoded))


def micro_batches(batch: Mapping[str, Any], size: int) -> list[dict[str, Any]]:
    """Split every tensor with the batch's row count along dim 0 into chunks of ``size`` rows;
    anything else (a 0-dim count, a non-tensor) is handed to every chunk unchanged."""
    rows = batch["image"].shape[0]
    starts = range(0, rows, size)
    return [
        {
            k: v[s : s + size] if isinstance(v, torch.Tensor) and v.ndim and v.shape[0] == rows else v
            for k, v in batch.items()
        }
        for s in starts
    ]


def encode_in_micro_batches(
    encode: Callable[[Any], Encoded],
    batch: Mapping[str, Any],
    size: int,
    towers: nn.Module | Sequence[nn.Module],
) -> Encoded:
    """``encode(batch)``'s record, computed ``size`` rows at a time; its gradient reaches the
    towers' trainable parameters through the replay described in the module docstring.

    ``towers`` are the modules ``encode`` runs (their trainable parameters receive gradients, their
    buffers are restored after the replay). With one micro-batch this is plain ``encode(batch)``.
    """
    chunks = micro_batches(batch, size)
    if len(chunks) == 1:
        return encode(dict(batch))
    modules = [towers] if isinstance(towers, nn.Module) else list(towers)
    params = [p for m in modules for p in m.parameters() if p.requires_grad]
    replay = _Replay(encode, chunks, modules, params)
    outputs = _CachedEncoding.apply(replay, *params)
    return Encoded(**dict(zip(replay.names, outputs, strict=True)))


def concatenate(records: Sequence[Encoded]) -> Encoded:
    """One record of the rows of ``records`` in order (fields absent from the first are absent)."""
    return Encoded(
        **{
            name: torch.cat([getattr(r, name) for r in records])
            for name in _FIELDS
            if getattr(records[0], name) is not None
        }
    )


class _Replay:
    """What the second pass needs: the chunks, their generator states, the autocast state."""

    def __init__(
        self,
        encode: Callable[[Any], Encoded],
        chunks: list[dict[str, Any]],
        modules: list[nn.Module],
        params: list[nn.Parameter],
    ) -> None:
        self.encode, self.chunks, self.modules, self.params = encode, chunks, modules, params
        self.names: tuple[str, ...] = ()
        self.rng: list[tuple[torch.Tensor, tuple[list, list]]] = []
        tensors = self._chunk_tensors(chunks[0])
        self.device_type = tensors[0].device.type if tensors else "cpu"
        self.autocast = (
            torch.is_autocast_enabled(self.device_type),
            torch.get_autocast_dtype(self.device_type),
        )

    @staticmethod
    def _chunk_tensors(chunk: dict[str, Any]) -> list[torch.Tensor]:
        return [v for v in chunk.values() if isinstance(v, torch.Tensor)]

    def first_pass(self) -> tuple[torch.Tensor, ...]:
        records = []
        for chunk in self.chunks:
            self.rng.append((torch.get_rng_state(), get_device_states(*self._chunk_tensors(chunk))))
            records.append(self.encode(chunk))
        whole = concatenate(records)
        self.names = tuple(name for name in _FIELDS if getattr(whole, name) is not None)
        # Running statistics as the first pass left them; the replay must not update them again.
        self.buffers = [b.detach().clone() for m in self.modules for b in m.buffers()]
        return tuple(getattr(whole, name) for name in self.names)

    def backward(self, grads: Sequence[torch.Tensor | None]) -> list[torch.Tensor | None]:
        total: list[torch.Tensor | None] = [None] * len(self.params)
        before_replay = torch.get_rng_state()
        devices, device_states = get_device_states(*self._chunk_tensors(self.chunks[0]))
        start = 0
        enabled, dtype = self.autocast
        for chunk, (cpu_state, (chunk_devices, states)) in zip(self.chunks, self.rng, strict=True):
            torch.set_rng_state(cpu_state)
            set_device_states(chunk_devices, states)
            with torch.enable_grad(), torch.autocast(self.device_type, dtype=dtype, enabled=enabled):
                record = self.encode(chunk)
            side = record.image if record.image is not None else record.text
            assert side is not None, "every tower's record holds its global embedding: image or text"
            rows = side.shape[0]
            outputs, slices = [], []
            for name, grad in zip(self.names, grads, strict=True):
                value = getattr(record, name)
                if grad is not None and value.requires_grad:
                    outputs.append(value)
                    slices.append(grad[start : start + rows])
            start += rows
            if not outputs:
                continue
            parts = torch.autograd.grad(outputs, self.params, slices, allow_unused=True)
            # autograd.grad returns fresh tensors: the first one found is this step's sum to add into.
            total = [t if p is None else p if t is None else t.add_(p) for t, p in zip(total, parts, strict=True)]
        torch.set_rng_state(before_replay)
        set_device_states(devices, device_states)
        with torch.no_grad():
            for buffer, saved in zip((b for m in self.modules for b in m.buffers()), self.buffers, strict=True):
                buffer.copy_(saved)
        return total


class _CachedEncoding(torch.autograd.Function):
    @staticmethod
    def forward(ctx, replay: _Replay, *params: torch.Tensor) -> tuple[torch.Tensor, ...]:
        ctx.replay = replay
        ctx.set_materialize_grads(False)  # an output no term read gets None, not zeros
        outputs = replay.first_pass()  # autograd is off inside a Function's forward
        ctx.mark_non_differentiable(*(o for o in outputs if not o.is_floating_point()))
        return outputs

    @staticmethod
    def backward(ctx, *grads: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
        return (None, *ctx.replay.backward(grads))
