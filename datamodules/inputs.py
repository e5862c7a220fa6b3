"""ModelInputs: how to feed a model that was not trained here (an imported OpenAI/open_clip CLIP).

A datamodule without data: it records the tokenizer and the image preprocessing in a checkpoint
(``datamodule_hyper_parameters``), which is all the analysis needs to rebuild them.
"""

from __future__ import annotations

from collections.abc import Sequence

import lightning.pytorch as pl

from datamodules.tokenizer import TextTokenizer, TokenizerLinks
from datamodules.transforms import CLIP_MEAN, CLIP_STD, EvalImageTransform


class ModelInputs(TokenizerLinks, pl.LightningDataModule):
    """The tokenizer and evaluation image transform of a model, and nothing to train on.

    Args:
        tokenizer: e.g. ``datamodules.tokenizer.CLIPTokenizer`` for OpenAI's and open_clip's models.
        image_size: side of the square input (224 for ViT-B/32).
        mean, std: per-channel normalisation of pixels in [0, 1] (OpenAI CLIP's by default).
    """

    def __init__(
        self,
        tokenizer: TextTokenizer,
        image_size: int = 224,
        mean: Sequence[float] = CLIP_MEAN,
        std: Sequence[float] = CLIP_STD,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["tokenizer"])
        self.tokenizer = tokenizer
        self.image_transform = EvalImageTransform(image_size, mean, std)
