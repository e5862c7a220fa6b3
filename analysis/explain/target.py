"""What the explanations explain: the logit of each (image b, text b) pair, as the model scores it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol, runtime_checkable

import torch

from common.errors import UserError
from variants.module import ContrastiveModule
from variants.objectives.base import present
from variants.towers import Encoded


def pair_logits(model: ContrastiveModule, images: Encoded, texts: Encoded) -> torch.Tensor:
    """[B] the score zero-shot ranks with (the scoring term's, e.g. FILIP's token-wise i2t, else the
    cosine of the global embeddings) of image b with text b, times the learned logit scale of the
    term that defines it: the logit Chefer et al.'s CLIP code backpropagates (``logits_per_image``).
    The scale changes no Grad-CAM argmax; it sets the weight of relevance's higher-order terms."""
    if model.scorer is not None:
        i2t, _ = model.scorer.score(images, texts)
        return i2t.diagonal() * _scale(model.scorer)
    scores = (present(images, "image").float() * present(texts, "text").float()).sum(dim=-1)
    term = next((t for t in model.terms.values() if hasattr(t, "logit_scale")), None)
    return scores * (_scale(term) if term is not None else 1.0)


def _scale(term: torch.nn.Module) -> torch.Tensor | float:
    scale = getattr(term, "logit_scale", None)
    if scale is None:
        return 1.0
    return (scale() if callable(scale) else scale).detach().float()


def text_record(model: ContrastiveModule, token_ids: torch.Tensor) -> Encoded:
    """The texts' side of the score, without gradients (the maps explain the image side)."""
    with torch.no_grad():
        return model.text_record(token_ids, tokens="text_tokens" in model.scoring_needs)


def patch_grid(values: torch.Tensor, what: str) -> torch.Tensor:
    """[B, P] per-patch values -> [B, h, w] for a square grid of P patches."""
    side = round(values.shape[1] ** 0.5)
    if side * side != values.shape[1]:
        raise UserError(
            f"{what}: {values.shape[1]} patch tokens do not form a square grid; explain square images "
            "(the image transform's size) with a tower whose patches tile them"
        )
    return values.reshape(values.shape[0], side, side)


@runtime_checkable
class _Checkpointing(Protocol):
    """A timm model: its gradient checkpointing is switched with a method."""

    def set_grad_checkpointing(self, enable: bool = True) -> None: ...


@contextmanager
def without_checkpointing(model: ContrastiveModule) -> Iterator[None]:
    """The vision backbone without timm's gradient checkpointing for one explained pass: the
    recomputation in the backward would call the capturing hooks a second time."""
    backbone = model.vision_tower.backbone
    if not (isinstance(backbone, _Checkpointing) and getattr(backbone, "grad_checkpointing", False)):
        yield
        return
    backbone.set_grad_checkpointing(False)
    try:
        yield
    finally:
        backbone.set_grad_checkpointing(True)
