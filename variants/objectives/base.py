"""The contract every objective term fulfils; a new objective is one subclass in one file."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from variants.towers import Encoded


class Term(nn.Module):
    """One weighted term of the training objective.

    A subclass declares in ``needs`` which optional fields of :class:`Encoded` it reads
    ("image_tokens", "text_tokens"), owns its parameters (temperature, projector, ...), and
    returns from ``forward`` a dict with the differentiable "loss" and any detached
    diagnostics worth logging; the module logs them as ``train/<term name>/<key>``.

    Distributed rule (DESIGN.md): under DDP ``forward`` receives this rank's rows, scores them
    against columns gathered with gradient (``variants.distributed.gather_with_grad``) and
    normalises by the local row count, so DDP's gradient averaging gives exactly the gradient of
    the single-process loss on the global batch.

    Args:
        weight: the term's weight in the total loss.
    """

    needs: frozenset[str] = frozenset()
    #: size of the embeddings a term's own layers expect; None if it accepts any size.
    embed_dim: int | None = None

    def __init__(self, weight: float = 1.0) -> None:
        super().__init__()
        self.weight = weight

    @property
    def name(self) -> str:
        return type(self).__name__.lower()

    def forward(self, encoded: Encoded) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def post_step(self) -> None:
        """Called after every optimizer step, e.g. to clamp a temperature."""


@contextlib.contextmanager
def full_precision(device: torch.device) -> Iterator[None]:
    """Compute logits in float32 (or wider) even under bf16/fp16 autocast; use with
    :func:`at_least_float32` on the inputs.

    At a logit scale of 100 a bf16 cosine (8-bit mantissa) is off by up to ~0.4 in the logit;
    the similarity matrices are small next to the towers, so exactness costs little.
    """
    with torch.autocast(device_type=device.type, enabled=False):
        yield


def at_least_float32(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """bf16/fp16 -> float32; float32 and float64 unchanged."""
    return tuple(t.to(torch.promote_types(t.dtype, torch.float32)) for t in tensors)
