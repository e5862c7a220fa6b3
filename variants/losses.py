"""Pure tensor functions for the objective terms: no Lightning, no torch.distributed.

Every function takes the rows this process owns and, optionally, the columns of the whole
global batch (gathered by the caller with gradient) plus the offset of its own rows in that
batch. Called with local tensors only, they are exactly the single-process paper formulas;
called with gathered columns and normalised by the local row count, DDP's gradient averaging
turns them into the gradient of the global-batch loss (DESIGN.md, "Distributed rule").
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def clip_loss(
    image: torch.Tensor,
    text: torch.Tensor,
    logit_scale: torch.Tensor | float,
    *,
    all_image: torch.Tensor | None = None,
    all_text: torch.Tensor | None = None,
    row_offset: int = 0,
) -> torch.Tensor:
    """CLIP's symmetric InfoNCE (Radford et al. 2021, arXiv 2103.00020).

    L = 1/2 [CE(s I T^T) + CE(s T I^T)] with targets arange(N), for L2-normalised
    ``image``, ``text`` [N, D] and an already exponentiated scale ``s``.

    Under DDP pass this rank's rows as ``image``/``text``, the gathered global batch as
    ``all_image``/``all_text`` and ``row_offset = rank * local_batch``: the result is the
    mean over the local rows of the same per-row losses as the global formula.
    """
    all_image = image if all_image is None else all_image
    all_text = text if all_text is None else all_text
    targets = torch.arange(image.shape[0], device=image.device) + row_offset
    logits_i2t = logit_scale * image @ all_text.T
    logits_t2i = logit_scale * text @ all_image.T
    return 0.5 * (F.cross_entropy(logits_i2t, targets) + F.cross_entropy(logits_t2i, targets))
