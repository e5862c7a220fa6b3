"""A small ContrastiveModule, a tiny ShapesWorld datamodule and a quiet CPU trainer: what the tests
that fit a few steps in-process build on."""

from __future__ import annotations

import lightning.pytorch as pl

from datamodules.shapesworld import ShapesWorldDataModule
from variants.module import ContrastiveModule
from variants.objectives import InfoNCE, Term
from variants.towers import TextTower, VisionTower


def small_module(
    vision: str = "resnet10t", terms: list[Term] | None = None, vocab_size: int = 40, **kwargs
) -> ContrastiveModule:
    model_kwargs = {"img_size": 32, "patch_size": 8} if vision.startswith("vit") else {}
    return ContrastiveModule(
        VisionTower(vision, embed_dim=16, model_kwargs=model_kwargs),
        TextTower(vocab_size=vocab_size, context_length=8, width=32, depth=2, heads=2, embed_dim=16),
        terms if terms is not None else [InfoNCE()],
        **kwargs,
    )


def tiny_data() -> ShapesWorldDataModule:
    return ShapesWorldDataModule(image_size=32, batch_size=4, train_samples=16, context_length=8, num_workers=0)


def quiet_trainer(tmp_path, **kwargs) -> pl.Trainer:
    """A CPU trainer that writes no logs or checkpoints and shows no progress bar."""
    return pl.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      default_root_dir=tmp_path, **kwargs)  # fmt: skip
