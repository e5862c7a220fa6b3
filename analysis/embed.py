"""Batched embedding extraction: images through a DataLoader, texts in tokenizer batches.

The per-sample work is only what the data needs (decoding, resizing); uint8 tensors already at
the model's size (ShapesWorld renders) are stacked raw and normalised once per batch, so
extraction runs at the towers' forward speed (``benchmarks/embed_throughput.py`` measures it).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence, Sized
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from analysis.checkpoint import LoadedCheckpoint
from common.errors import UserError
from datamodules.transforms import EvalImageTransform
from variants.objectives.base import present
from variants.towers import Encoded

PRECISIONS = ("32", "bf16")


@dataclass(frozen=True)
class EmbedOptions:
    """How one command computes embeddings, passed unchanged through every analysis.

    batch_size: images per forward pass; text_batch_size: texts per forward pass;
    num_workers: image-loading worker processes; precision: "32" or "bf16" (CPU autocast).
    """

    batch_size: int = 256
    text_batch_size: int = 1024
    num_workers: int = 0
    precision: str = "32"

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise UserError(f"unknown precision {self.precision!r}; use one of {', '.join(PRECISIONS)}")


DEFAULT_OPTIONS = EmbedOptions()


def dataset_length(dataset: Dataset) -> int:
    """``len(dataset)``: the analysis reads map-style datasets, whose length torch's ``Dataset`` type
    does not declare."""
    if not isinstance(dataset, Sized):
        raise TypeError(f"{type(dataset).__name__} has no length: the analysis reads map-style datasets")
    return len(dataset)


@dataclass
class ImageEmbeddings:
    encoded: Encoded  # float32 on CPU: image [N, D] and, if asked, image_tokens [N, P, d]
    labels: torch.Tensor | None  # [N] when the items carry a "label"

    @property
    def image(self) -> torch.Tensor:
        """[N, D] the global embeddings (always computed)."""
        return present(self.encoded, "image")


class _Collate:
    """Raw items -> one float batch (and labels). Runs in the loader's workers."""

    def __init__(self, transform) -> None:
        self.transform = transform

    def __call__(self, items: list[dict]) -> dict[str, torch.Tensor]:
        images = [item["image"] for item in items]
        size = getattr(self.transform, "image_size", None)
        if isinstance(self.transform, EvalImageTransform) and all(_at_size(image, size) for image in images):
            batch = self.transform.normalize(torch.stack(images))  # one vectorised op per batch
        else:
            batch = torch.stack([self.transform(image) for image in images])
        out = {"image": batch}
        if "label" in items[0]:
            out["label"] = torch.tensor([item["label"] for item in items])
        return out


def _at_size(image, size: int | None) -> bool:
    return isinstance(image, torch.Tensor) and image.dtype == torch.uint8 and tuple(image.shape) == (3, size, size)


def autocast(precision: str):
    if precision not in PRECISIONS:
        raise UserError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
    if precision == "bf16":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.inference_mode()
def embed_images(
    loaded: LoadedCheckpoint,
    dataset: Dataset,
    tokens: bool = False,
    options: EmbedOptions = DEFAULT_OPTIONS,
    desc: str = "images",
    trunk: bool = False,
) -> ImageEmbeddings:
    """Global (and, with ``tokens``, patch) embeddings of every image of ``dataset``; with
    ``trunk``, the vision backbone's pooled features instead (before the projection, unnormalised:
    what SLIP and MoCo-style linear probes read)."""
    if dataset_length(dataset) == 0:
        raise UserError(f"{desc}: the suite has no images")
    loader = DataLoader(
        dataset,
        batch_size=options.batch_size,
        num_workers=options.num_workers,
        collate_fn=_Collate(loaded.image_transform),
    )
    images, patch_tokens, labels = [], [], []
    device = loaded.model.device  # the CPU in the analysis; a run's accelerator when an evaluator embeds
    with autocast(options.precision):
        for batch in tqdm(loader, desc=f"embed {desc}", unit="batch", leave=False, disable=None):
            pixels = batch["image"].to(device)
            if trunk:
                record = Encoded(image=loaded.model.vision_tower.pooled(pixels))
            else:
                record = loaded.model.image_record(pixels, tokens=tokens)
            images.append(present(record, "image").float())
            if tokens:
                patch_tokens.append(present(record, "image_tokens").float())
            if "label" in batch:
                labels.append(batch["label"].to(device))
    encoded = Encoded(image=torch.cat(images), image_tokens=torch.cat(patch_tokens) if tokens else None)
    return ImageEmbeddings(encoded, torch.cat(labels) if labels else None)


@torch.inference_mode()
def embed_texts(
    loaded: LoadedCheckpoint,
    texts: Sequence[str],
    tokens: bool = False,
    options: EmbedOptions = DEFAULT_OPTIONS,
    desc: str = "texts",
) -> Encoded:
    """Global (and, with ``tokens``, word-token) embeddings of ``texts``, in order."""
    if len(texts) == 0:
        raise UserError(f"{desc}: no texts to embed")
    out: dict[str, list[torch.Tensor]] = {"text": [], "text_tokens": [], "text_mask": []}
    batch_size = options.text_batch_size
    starts = range(0, len(texts), batch_size)
    with autocast(options.precision):
        for start in tqdm(starts, desc=f"embed {desc}", unit="batch", leave=False, disable=None):
            # Padded to the batch's longest text, not the context: the causal tower's outputs up
            # to the end-of-text token do not depend on the padding after it, and prompts are
            # short (5x less work for ShapesWorld's prompts).
            ids = loaded.tokenizer(list(texts[start : start + batch_size]), pad_to_context=False)
            record = loaded.model.text_record(ids.to(loaded.model.device), tokens=tokens)
            out["text"].append(present(record, "text").float())
            if tokens:
                out["text_tokens"].append(present(record, "text_tokens").float())
                out["text_mask"].append(present(record, "text_mask"))
    if not tokens:
        return Encoded(text=torch.cat(out["text"]))
    length = max(t.shape[1] for t in out["text_tokens"])  # batches differ in length: pad (masked out)
    return Encoded(
        text=torch.cat(out["text"]),
        text_tokens=torch.cat([F.pad(t, (0, 0, 0, length - t.shape[1])) for t in out["text_tokens"]]),
        text_mask=torch.cat([F.pad(m, (0, length - m.shape[1]), value=False) for m in out["text_mask"]]),
    )
