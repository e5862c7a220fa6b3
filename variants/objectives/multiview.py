"""DeCLIP's multi-view supervision, MVS (Li et al. 2022, "Supervision Exists Everywhere: A Data
Efficient Contrastive Language-Image Pre-training Paradigm", arXiv 2110.05208; official code
Sense-GVT/DeCLIP @ 5d99a85, prototype/model/declip.py L271-279, prototype/solver/declip_solver.py
L442-450).

Two augmented views I_1, I_2 of every image and two views of every caption (the caption T_1 and
an EDA-augmented copy T_2, from the data) give four image-text pairs; each is CLIP's symmetric
InfoNCE, and MVS is their mean:

    L_MVS = 1/4 [c(I_1, T_1) + c(I_2, T_1) + c(I_1, T_2) + c(I_2, T_2)],
    c(I, T) = 1/2 [CE(s I T^T) + CE(s T I^T)]

(the code's ``clip_loss = (clip_loss_1 + clip_loss_2 + clip_loss_1_aug + clip_loss_2_aug) / 4``,
weighted 0.4 in the total loss; no image-image or text-text pair). With text masking in the data
(``MaskedLanguageModel``), T_1 is the MASKED caption, as in the official code (declip.py L214-216:
there is no forward of the unmasked caption). One logit scale s = exp(t), t initialised to
log(1/0.07), clamped so that s <= 100 (declip.py L260-261). The official yfcc15m configs also
clamp t to [3, 6] (``grad_clip: logit_scale_param_value``); not reproduced here: every term of the
suite clamps only from above, as CLIP does. The official code shares this scale with NNS; here
each term owns its temperature (terms stay independent), see ``NearestNeighbourInfoNCE``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from variants.distributed import gather_with_grad, row_offset
from variants.losses import multi_view_clip_loss
from variants.objectives.base import at_least_float32, chunk_rows, full_precision, present
from variants.objectives.infonce import InfoNCE
from variants.towers import Encoded


class MultiViewInfoNCE(InfoNCE):
    """InfoNCE averaged over 2 image views x 2 text views (needs the data's ``views`` and
    ``text_views``); the arguments and the learned, clamped logit scale are InfoNCE's.

    Args:
        weight: weight in the total loss (0.4 in DeCLIP).
        init_temperature: initial 1/s (0.07).
        max_logit_scale: upper bound of s (100).
        learn_temperature: learn t (True) or keep s fixed.
        chunk_size: rows per block of each pair's chunked InfoNCE (None: chosen by size; 0: dense).
    """

    needs = frozenset({"image_views", "text_view"})

    def forward(self, encoded: Encoded) -> dict[str, torch.Tensor]:
        views = present(encoded, "image_views")
        with full_precision(views.device):
            (views, text, text_view) = at_least_float32(views, present(encoded, "text"), present(encoded, "text_view"))
            images = [F.normalize(views[:, v], dim=-1) for v in range(views.shape[1])]
            texts = [text, text_view]
            scale = self.logit_scale()
            all_texts = [gather_with_grad(t) for t in texts]
            loss = multi_view_clip_loss(
                images,
                texts,
                scale,
                all_images=[gather_with_grad(image) for image in images],
                all_texts=all_texts,
                row_offset=row_offset(text.shape[0]),
                chunk=chunk_rows(self.chunk_size, text.shape[0], all_texts[0].shape[0], text.device),
            )
        return {"loss": loss, "logit_scale": scale.detach()}
