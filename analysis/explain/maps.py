"""One entry point over the methods: which apply to a checkpoint, and each query's heat map."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from analysis.explain.alignment import alignment_space, span_maps, word_patch_similarities
from analysis.explain.gradcam import gradcam, gradcam_layer
from analysis.explain.relevance import attention_layers, relevance
from analysis.explain.target import text_record
from common.errors import UserError
from variants.module import ContrastiveModule

METHODS = ("gradcam", "relevance", "alignment")
_CHECKS = {"gradcam": gradcam_layer, "relevance": attention_layers, "alignment": alignment_space}


def available_methods(model: ContrastiveModule, asked: Sequence[str] | None = None) -> list[str]:
    """The methods that apply to ``model`` (all of ``asked``, which must apply, when given)."""
    if asked:
        for method in asked:
            if method not in METHODS:
                raise UserError(f"unknown explanation method {method!r}; known: {', '.join(METHODS)}")
            _CHECKS[method](model)  # a UserError naming why it does not apply
        return list(dict.fromkeys(asked))
    found = []
    for method in METHODS:
        try:
            _CHECKS[method](model)
        except UserError:
            continue
        found.append(method)
    return found


def query_maps(
    model: ContrastiveModule,
    method: str,
    images: torch.Tensor,
    token_ids: torch.Tensor,
    spans: Sequence[dict[str, tuple[int, int]]],
) -> dict[str, torch.Tensor]:
    """Heat maps [B, h, w] of each normalised image with its query (``token_ids`` row b).

    ``spans[b]`` maps word roles to token positions (start, stop) in row b; "query" (all the
    query's words) is required. Returns {"query": map} and, for alignment, one map per other
    role ({"color": ..., "shape": ...}): the words' own alignment rows.
    """
    if method == "alignment":
        similarities = word_patch_similarities(model, images, token_ids)
        return {role: span_maps(similarities, [s[role] for s in spans]) for role in spans[0]}
    texts = text_record(model, token_ids)
    if method == "gradcam":
        return {"query": gradcam(model, images, texts)}
    if method == "relevance":
        return {"query": relevance(model, images, texts)}
    raise UserError(f"unknown explanation method {method!r}; known: {', '.join(METHODS)}")
