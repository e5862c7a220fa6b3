"""Word-patch alignment: each caption token's cosine to each image patch, in the space the model
scores tokens in.

FILIP (Yao et al. 2021, arXiv 2111.07783, section 3.1; its word-patch visualisation, section 4.5):
the token-wise term's own projections, where word k's t2i term takes max_p <x_p, y_k>, so the patch
a word picks is the argmax of its row. A model without token-wise scoring (CLIP) gets the same
reading of its towers' tokens through their global projections (patch tokens through the image
projection, word tokens through the text projection): the post-hoc word-patch similarity often
drawn for CLIP, which nothing in its training asks to be meaningful, and so the baseline FILIP's
claim of finer alignment is measured against. A phrase's map is the mean of its words' rows.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F

from analysis.explain.target import patch_grid
from common.errors import UserError
from variants.module import ContrastiveModule
from variants.objectives.base import present
from variants.towers import Encoded


@runtime_checkable
class TokenAligned(Protocol):
    """A scoring term with its own word-patch similarities (FILIP's ``TokenwiseInfoNCE``)."""

    def token_similarities(self, images: Encoded, texts: Encoded) -> torch.Tensor: ...


_NO_SPACE = (
    "alignment needs token outputs in a shared space: a token-wise term (FILIP) or towers with a linear "
    "`proj` (the suite's VisionTower and TextTower); use --method gradcam"
)


def _projections(model: ContrastiveModule) -> tuple[torch.nn.Linear, torch.nn.Linear] | None:
    """The towers' linear projections to the joint space (image, text), or None when one has none."""
    image, text = getattr(model.vision_tower, "proj", None), getattr(model.text_tower, "proj", None)
    return (image, text) if isinstance(image, torch.nn.Linear) and isinstance(text, torch.nn.Linear) else None


def alignment_space(model: ContrastiveModule) -> str:
    """ "token-wise term" (FILIP) or "global projections"; a UserError when the towers have neither."""
    if isinstance(model.scorer, TokenAligned):
        return "token-wise term"
    if _projections(model) is not None:
        return "global projections"
    raise UserError(_NO_SPACE)


def token_similarities(model: ContrastiveModule, images: Encoded, texts: Encoded) -> torch.Tensor:
    """[B, L, P] cosines of text b's tokens to image b's patches (row b with row b)."""
    scorer, projections = model.scorer, _projections(model)
    if isinstance(scorer, TokenAligned):
        return scorer.token_similarities(images, texts)
    if projections is None:
        raise UserError(_NO_SPACE)
    image_proj, text_proj = projections
    patches = F.normalize(image_proj(present(images, "image_tokens")).float(), dim=-1)
    words = F.normalize(text_proj(present(texts, "text_tokens")).float(), dim=-1)
    return words @ patches.transpose(1, 2)


@torch.no_grad()
def word_patch_similarities(model: ContrastiveModule, images: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
    """[B, L, h, w]: each token of text b against each patch of image b."""
    image_record = model.image_record(images.float(), tokens=True)
    text_record = model.text_record(token_ids, tokens=True)
    similarities = token_similarities(model, image_record, text_record)  # [B, L, P]
    batch, length, patches = similarities.shape
    grid = patch_grid(similarities.reshape(batch * length, patches), "alignment")
    return grid.reshape(batch, length, *grid.shape[1:])


def span_maps(similarities: torch.Tensor, spans: list[tuple[int, int]]) -> torch.Tensor:
    """[B, h, w]: for each row b, the mean of its token maps over positions spans[b] = (start, stop)."""
    return torch.stack([similarities[b, start:stop].mean(dim=0) for b, (start, stop) in enumerate(spans)])
