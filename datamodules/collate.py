"""Dataset items -> one :class:`~common.batch.Batch`, for every datamodule's loaders."""

from __future__ import annotations

import torch

from common.batch import Batch
from datamodules.augment import TokenMasking
from datamodules.tokenizer.base import TextTokenizer


class Collate:
    """Dataset items (dicts with "image", and "caption", "index", "views", "text_view",
    "mask_seed", "task", "label", "skipped" where the data has them) -> one :class:`~common.batch.Batch`.

    Images (and views) are stacked as the items hold them: uint8 from ShapesWorld, which the model
    normalises per micro-batch (``ContrastiveModule.pixels``), or float tensors an image-text
    dataset already normalised; captions are tokenised in one call, text views
    in another (each padded to its own longest row in training). An evaluation item without a
    caption (a zero-shot image) gets the empty caption. With ``masking`` and items carrying a
    "mask_seed", "text" is masked row by row from each item's seed and "mlm_labels" added.
    """

    def __init__(
        self,
        tokenizer: TextTokenizer,
        pad_to_context: bool,
        masking: TokenMasking | None = None,
    ) -> None:
        self.tokenizer, self.pad_to_context, self.masking = tokenizer, pad_to_context, masking

    def __call__(self, items: list[dict]) -> Batch:
        first = items[0]
        batch: Batch = {"image": torch.stack([item["image"] for item in items])}
        if "caption" in first or "task" in first:
            text = self.tokenizer([item.get("caption", "") for item in items], pad_to_context=self.pad_to_context)
            if self.masking is not None and "mask_seed" in first:
                text, batch["mlm_labels"] = self.masking(text, [item["mask_seed"] for item in items], self.tokenizer)
            batch["text"] = text
        if "text_view" in first:
            batch["text_view"] = self.tokenizer(
                [item["text_view"] for item in items], pad_to_context=self.pad_to_context
            )
        if "index" in first:
            batch["index"] = torch.tensor([item["index"] for item in items])
        if "views" in first:
            batch["views"] = torch.stack([item["views"] for item in items])
        if "task" in first:
            batch["task"] = torch.tensor([item["task"] for item in items])
            batch["label"] = torch.tensor([item.get("label", -1) for item in items])
            batch["target"] = torch.tensor([bool(item.get("target", False)) for item in items])
        if "skipped" in first:
            batch["skipped"] = torch.tensor(sum(item["skipped"] for item in items))
        return batch
