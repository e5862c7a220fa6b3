"""FILIP's token-wise contrastive objective (Yao et al. 2021, "FILIP: Fine-grained Interactive
Language-Image Pre-Training", arXiv 2111.07783, section 3.1).

Tokens are projected to a small dimension (256 by default) and L2-normalised; the image's
prefix ([CLS]) tokens and the text's padding are excluded. With x_ip the patches of image i and
y_jk the valid tokens of text j:

    i2t[i, j] = mean_p  max_k <x_ip, y_jk>     (each patch finds its best word)
    t2i[i, j] = mean_k  max_p <x_ip, y_jk>     (each word finds its best patch)
    L = 1/2 [CE(s * i2t) + CE(s * t2i^T)],  with its own learnable temperature.

The max is over ONE axis and the mean over the other; taking the max over both (as a seed
tutorial does) is not FILIP. Zero-shot and retrieval score pairs with i2t / t2i as well.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from common.errors import UserError
from variants.distributed import gather, gather_with_grad, pad_to_common_length, row_offset, world
from variants.losses import filip_loss, filip_similarity
from variants.objectives.base import (
    NEEDS_NEGATIVES,
    LearnedScale,
    Term,
    at_least_float32,
    attached,
    full_precision,
    positive,
    present,
    require_token_towers,
)
from variants.towers import Encoded


class TokenwiseInfoNCE(Term):
    """FILIP's late-interaction InfoNCE over projected patch and word tokens.

    Args:
        weight: weight in the total loss.
        token_dim: size the tokens are projected to before the similarity (256 in FILIP).
        init_temperature: initial 1/s of this term's own temperature.
        max_logit_scale: upper bound of s.
        chunk_size: images per similarity block (None: sized to keep a block <= 2**24 elements).
        similarity_dtype: dtype of the training loss's token-similarity GEMMs. "float32" (the
            default): exact, like every term's logits. "auto": the autocast dtype when the run
            is in bf16/fp16-mixed precision (GEMMs accumulate in float32, but each cosine is
            rounded to bf16, ~0.002; the scores average P or L of them and the loss is in
            float32), faster FILIP steps on a CPU; filip.yaml turns it on. Evaluation
            (``score``: zero-shot, retrieval, analysis) always computes in float32.
    """

    min_batch_size = 2
    min_batch_reason = NEEDS_NEGATIVES

    needs = frozenset({"image_tokens", "text_tokens"})
    needs_global = False
    scores_pairs = True

    def __init__(
        self,
        weight: float = 1.0,
        token_dim: int = 256,
        init_temperature: float = 0.07,
        max_logit_scale: float = 100.0,
        chunk_size: int | None = None,
        similarity_dtype: Literal["auto", "float32"] = "float32",
    ) -> None:
        super().__init__(weight)
        if similarity_dtype not in ("auto", "float32"):
            raise UserError(f"unknown similarity_dtype '{similarity_dtype}' for FILIP; use 'auto' or 'float32'")
        positive(self, token_dim=token_dim, init_temperature=init_temperature, chunk_size=chunk_size or 1)
        self.token_dim, self.chunk_size, self.similarity_dtype = token_dim, chunk_size, similarity_dtype
        self.logit_scale = LearnedScale(1.0 / init_temperature, max_logit_scale)
        self.image_proj: nn.Module | None = None
        self.text_proj: nn.Module | None = None

    def attach(self, vision_tower: nn.Module, text_tower: nn.Module) -> None:
        image_width, text_width = require_token_towers(self, vision_tower, text_tower)
        self.image_proj = nn.Linear(image_width, self.token_dim, bias=False)
        self.text_proj = nn.Linear(text_width, self.token_dim, bias=False)

    def _project(self, encoded: Encoded, side: str) -> torch.Tensor:
        proj = attached(self, self.image_proj if side == "image" else self.text_proj)
        (projected,) = at_least_float32(proj(present(encoded, f"{side}_tokens")))
        return F.normalize(projected, dim=-1)

    def _gemm_dtype(self, tokens: torch.Tensor) -> torch.dtype:
        """The training similarity GEMMs' dtype; asked before autocast is switched off."""
        device = tokens.device.type
        if self.similarity_dtype == "auto" and torch.is_autocast_enabled(device):
            return torch.get_autocast_dtype(device)
        return tokens.dtype

    def forward(self, encoded: Encoded) -> dict[str, torch.Tensor]:
        image, text = self._project(encoded, "image"), self._project(encoded, "text")
        dtype = self._gemm_dtype(image)
        with full_precision(image.device):
            scale = self.logit_scale()
            mask = present(encoded, "text_mask")
            if world()[1] == 1:
                loss = filip_loss(image.to(dtype), text.to(dtype), mask, scale, chunk=self.chunk_size)
            else:  # own rows against every rank's tokens, in the reduced dimension; gathered in float32
                text, mask = pad_to_common_length(text), pad_to_common_length(mask)
                all_image, all_text = gather_with_grad(image), gather_with_grad(text)
                loss = filip_loss(
                    image.to(dtype), text.to(dtype), mask, scale,
                    all_image_tokens=all_image.to(dtype),
                    all_text_tokens=all_text.to(dtype),
                    all_text_mask=gather(mask),
                    row_offset=row_offset(image.shape[0]),
                    chunk=self.chunk_size,
                )  # fmt: skip
        return {"loss": loss, "logit_scale": scale.detach()}

    def score(self, images: Encoded, texts: Encoded) -> tuple[torch.Tensor, torch.Tensor]:
        image, text = self._project(images, "image"), self._project(texts, "text")
        with full_precision(image.device):
            return filip_similarity(image, text, present(texts, "text_mask"), self.chunk_size)

    def token_similarities(self, images: Encoded, texts: Encoded) -> torch.Tensor:
        """[B, L, P] cosines of text b's tokens to image b's patches, in the projected token space
        (row b with row b): FILIP's word-patch alignment, whose max over P each word's t2i term
        takes. Padding rows are left in (mask them with ``texts.text_mask``)."""
        image, text = self._project(images, "image"), self._project(texts, "text")
        with full_precision(image.device):
            return text @ image.transpose(1, 2)

    def post_step(self) -> None:
        self.logit_scale.clamp_()
