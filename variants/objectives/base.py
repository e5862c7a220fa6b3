"""The contract every objective term fulfils; a new objective is one subclass in one file."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import TypeVar

import torch
from torch import nn

from common.errors import UserError
from common.records import present  # re-exported: the terms read their fields with it
from variants.losses import logit_chunk
from variants.towers import OPTIONAL_FIELDS, Encoded


class Term(nn.Module):
    """One weighted term of the training objective.

    A subclass declares in ``needs`` which optional fields of :class:`Encoded` it reads
    ("image_tokens", "text_tokens", "views", "image_views", "text_view", "mlm_labels"; the last
    three come from data options, which the module checks), owns its parameters (temperature,
    projector, ...) and state (a queue: buffers, so checkpoints carry it), and returns from
    ``forward`` a dict with the differentiable "loss" and detached diagnostics;
    the module logs them as ``train/<term name>/<key>``.

    Distributed rule (docs/DESIGN.md): under DDP ``forward`` receives this rank's rows, scores them
    against columns gathered with gradient (``variants.distributed.gather_with_grad``) and
    normalises by the local row count, so DDP's gradient averaging gives exactly the gradient of
    the single-process loss on the global batch.

    Args:
        weight: the term's weight in the total loss (finite, >= 0).
    """

    needs: frozenset[str] = frozenset()
    #: the fields of ``needs`` the term reads without gradient (NNS's queue queries).
    detached: frozenset[str] = frozenset()
    #: whether the term reads the global embeddings (False for FILIP and SimCLR).
    needs_global: bool = True
    #: size of the embeddings the term's own layers expect; None if it accepts any size.
    embed_dim: int | None = None
    #: training progress in [0, 1], set by the module before every step (for schedules).
    progress: float = 0.0
    #: the fewest rows of the GLOBAL batch (processes x per-process batch) the term can train on,
    #: and why; the module refuses a smaller batch before training. Global, not per process:
    #: terms gather their columns across ranks and their BatchNorm is ``GlobalBatchNorm1d``, so
    #: two processes of one row each give two rows to normalise and to contrast.
    min_batch_size: int = 1
    min_batch_reason: str = ""

    def __init__(self, weight: float = 1.0) -> None:
        super().__init__()
        unknown = set(self.needs) - OPTIONAL_FIELDS
        if unknown:
            raise UserError(
                f"{type(self).__name__}.needs lists {', '.join(sorted(unknown))}, which Encoded does not have; "
                f"a term can need {', '.join(sorted(OPTIONAL_FIELDS))}"
            )
        if not (isinstance(weight, (int, float)) and math.isfinite(weight) and weight >= 0):
            raise UserError(f"{self.name}: weight must be a finite number >= 0, got {weight!r}")
        self.weight = float(weight)

    @property
    def name(self) -> str:
        return type(self).__name__.lower()

    def attach(self, vision_tower: nn.Module, text_tower: nn.Module) -> None:
        """Called once by the module with the towers, before any optimizer exists: build the
        layers whose sizes depend on them and raise UserError if the towers cannot serve."""

    def forward(self, encoded: Encoded) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def post_step(self) -> None:
        """Called after every optimizer step, e.g. to clamp a temperature."""

    #: True for a term whose ``score`` evaluation should use instead of the global cosine.
    scores_pairs: bool = False

    def score(self, images: Encoded, texts: Encoded) -> tuple[torch.Tensor, torch.Tensor]:
        """(image->text, text->image) scores, both [Ni, Nt], for zero-shot and retrieval.
        Only read for terms with ``scores_pairs``; the default is the global cosine."""
        cosine = present(images, "image") @ present(texts, "text").T
        return cosine, cosine


_Layer = TypeVar("_Layer", bound=nn.Module)


def attached(term: Term, layer: _Layer | None) -> _Layer:
    """A layer that ``term`` builds in ``attach``, which the module calls at construction, before
    any forward; None here means the term was used without its towers."""
    if layer is None:
        raise RuntimeError(f"{term.name}: its layers are built by attach(), which the module calls with the towers")
    return layer


#: what a contrastive term says when the batch is too small to hold a negative
NEEDS_NEGATIVES = "it contrasts each pair with the other rows of the batch; with one row there is no negative"


def positive(term: Term, **values: float) -> None:
    """Raise a UserError naming the first argument that is not a finite number > 0."""
    for name, value in values.items():
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise UserError(f"{term.name}: {name} must be a finite number > 0, got {value!r}")


def require_token_towers(term: Term, vision_tower: nn.Module, text_tower: nn.Module) -> tuple[int, int]:
    """The token widths of both towers, or a UserError naming the tower that has none."""
    dims = []
    for role, tower in (("vision", vision_tower), ("text", text_tower)):
        dim = getattr(tower, "token_dim", None)
        if not dim:
            raise UserError(
                f"{term.name} needs token embeddings but the {role} tower "
                f"{type(tower).__name__} provides none (it has no token_dim); use "
                "variants.towers.VisionTower / TextTower or a tower that returns tokens"
            )
        dims.append(int(dim))
    return dims[0], dims[1]


def check_chunk_size(term: Term, chunk_size: int | None) -> None:
    """Raise a UserError unless ``chunk_size`` is None or a whole number of rows >= 0."""
    if chunk_size is not None and not (
        isinstance(chunk_size, int) and not isinstance(chunk_size, bool) and chunk_size >= 0
    ):
        raise UserError(
            f"{term.name}: chunk_size must be a number of rows >= 0 (0: the dense formula at every size) "
            f"or null (chosen by the batch size), got {chunk_size!r}"
        )


def chunk_rows(chunk_size: int | None, rows: int, columns: int, device: torch.device) -> int | None:
    """The ``chunk`` argument of ``clip_loss``/``siglip_loss`` from a term's ``chunk_size``:
    None chooses by the size of the [rows, columns] logit matrix (``logit_chunk``), 0 is the dense
    formula, n is n rows per block."""
    if chunk_size is None:
        return logit_chunk(rows, columns, device)
    return chunk_size or None


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


class LearnedScale(nn.Module):
    """A learnable logit scale s = exp(t), clamped after every step so that s <= max_scale."""

    def __init__(self, init_scale: float, max_scale: float | None = 100.0, learn: bool = True) -> None:
        super().__init__()
        if not (math.isfinite(init_scale) and init_scale > 0) or (max_scale is not None and not max_scale > 0):
            raise UserError(
                f"logit scales must be positive: got initial scale {init_scale} (1/temperature) and "
                f"max_logit_scale {max_scale}; use a temperature > 0"
            )
        self.max_scale = max_scale
        self.log_scale = nn.Parameter(torch.tensor(math.log(init_scale)), requires_grad=learn)

    def forward(self) -> torch.Tensor:
        return self.log_scale.exp()

    @torch.no_grad()
    def clamp_(self) -> None:
        if self.max_scale is not None:
            self.log_scale.clamp_(max=math.log(self.max_scale))
