"""What towers produce and every consumer reads: :class:`TowerOutput` (one structure for every
tower), the :class:`TextEncoder` protocol (what a text tower must offer) and :class:`Encoded` (one
batch's record, read by the terms during training, the evaluators (``common.evaluation``) and the
analysis). They live in ``common`` so that code outside ``variants`` reads the same types;
``variants.towers`` re-exports them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Protocol

import torch


@dataclass(frozen=True)
class Encoded:
    """What the towers produced for one batch; terms read the fields they declared in ``needs``.

    image, text:   [B, D] L2-normalised global embeddings (always present in training; an
                   evaluation record may hold only one side).
    image_tokens:  [B, P, Cv] patch features without prefix tokens (ViT) or the flattened final
                   feature map (CNN); present when a term needs "image_tokens".
    text_tokens:   [B, L, Ct] per-position features after the final LayerNorm, and
    text_mask:     [B, L] bool, True at real tokens (start, words, end), False at padding;
                   present when a term needs "text_tokens".
    views:         [B, 2, Cv] the image trunk's pooled features of two augmented views of each
                   image (before the projection); present when a term needs "views".
    image_views:   [B, 2, D] the same two views through the whole tower, projected but NOT
                   normalised (SimSiam reads them there); present when a term needs
                   "image_views", and then ``image`` is the first view, normalised, and
                   ``image_tokens`` its tokens: DeCLIP trains on two augmented views and never
                   on the un-augmented image.
    text_view:     [B, D] L2-normalised embedding of a second text view of each caption (EDA,
                   from the data); present when a term needs "text_view".
    mlm_labels:    [B, L] int64, the original id at each masked position of the caption that
                   produced ``text`` / ``text_tokens``, -100 elsewhere (from the data's
                   text masking); present when a term needs "mlm_labels".
    """

    image: torch.Tensor | None = None
    text: torch.Tensor | None = None
    image_tokens: torch.Tensor | None = None
    text_tokens: torch.Tensor | None = None
    text_mask: torch.Tensor | None = None
    views: torch.Tensor | None = None
    image_views: torch.Tensor | None = None
    text_view: torch.Tensor | None = None
    mlm_labels: torch.Tensor | None = None


def present(encoded: Encoded, name: str) -> torch.Tensor:
    """``encoded.<name>`` where it must be there. The fields are optional in the record's type but
    present where they are read: ``image`` and ``text`` at every training step (and the side an
    evaluation record holds), an optional field whenever a term lists it in ``needs`` (the module
    computes what the terms need and checks ``needs`` against the towers and the data at
    construction). A None here is a broken contract, raised as one."""
    value = getattr(encoded, name)
    if value is None:
        raise RuntimeError(f"Encoded.{name} is None where it is read: the module computes it for whoever needs it")
    return value


class TowerOutput(NamedTuple):
    """What every tower returns, image or text.

    embedding: [B, D] L2-normalised global embedding in the joint space.
    tokens:    [B, T, C] per-token features (image patches or the flattened feature map; text
               positions) when asked for with ``return_tokens``, else None.
    mask:      [B, T] bool, True at real tokens: text towers always give it (padding is False);
               image towers give None (every patch is real).
    """

    embedding: torch.Tensor
    tokens: torch.Tensor | None
    mask: torch.Tensor | None = None


class TextEncoder(Protocol):
    """What ``ContrastiveModule`` and the terms ask of a text tower: ``forward`` below, and the
    attributes ``embed_dim`` (joint space), ``token_dim`` (width of the token features),
    ``vocab_size`` and ``context_length`` (linked from the data's tokenizer by the CLI) and
    ``proj`` (the projection to the joint space). ``variants.towers.TextTower`` and
    ``variants.hf_text.HFTextTower`` implement it; the CLI accepts any class that does
    (``class_path``), and the module checks the attributes when it is built."""

    def forward(self, token_ids: torch.Tensor, return_tokens: bool = False) -> TowerOutput: ...


#: The attributes a text tower must have besides ``forward`` (checked by the module).
TEXT_ENCODER_ATTRIBUTES = ("embed_dim", "token_dim", "vocab_size", "context_length", "proj")
