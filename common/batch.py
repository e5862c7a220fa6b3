"""The batch contract between the data and the model: what every datamodule's loader yields
(``datamodules.collate.Collate`` builds it) and ``ContrastiveModule`` reads. A new field (a second
text view, a mask) is added here once, and to ``Collate`` when it comes from the dataset items.
"""

from __future__ import annotations

from typing import TypedDict

import torch


class Batch(TypedDict, total=False):
    """One batch (every field a tensor; which are present depends on the data and the stage).

    image:   [B, 3, H, W] float, normalised as the vision tower expects.
    text:    [B, L] int64 token ids (training: padded to the longest caption; evaluation: to the
             tokenizer's context, so rows of different batches compare). With text masking the
             training captions are the MASKED ones (DeCLIP: the masked caption is also the one
             the contrastive terms see).
    index:   [B] int64 position of each sample in its dataset (evaluation: unique across all
             tasks, so samples a DDP sampler repeated are dropped).
    views:   [B, 2, 3, H, W] float, two augmented views of each image (self-supervised terms).
    text_view: [B, L2] int64 a second view of each caption (EDA-augmented, never masked), tokenised
             like "text" (training: padded to its own longest row).
    mlm_labels: [B, L] int64 with text masking: the original id at each masked position of
             "text", -100 everywhere else.
    task:    [B] int64 evaluation only: the position of the sample's task in ``eval_tasks``.
    label:   [B] int64 evaluation only: the class label, -1 where the task has none (retrieval);
             a cross-lingual task's scene, which pairs its two captions.
    target:  [B] bool evaluation only: the caption is in the task's target language (a cross-lingual
             task's items; False elsewhere).
    skipped: [] int64 rows skipped or replaced to fill this batch (counted by the datamodule,
             which takes it out before the model sees the batch).
    """

    image: torch.Tensor
    text: torch.Tensor
    index: torch.Tensor
    views: torch.Tensor
    text_view: torch.Tensor
    mlm_labels: torch.Tensor
    task: torch.Tensor
    label: torch.Tensor
    target: torch.Tensor
    skipped: torch.Tensor
