"""ShapesWorldDataModule: the embedded benchmark as a LightningDataModule."""

from __future__ import annotations

import warnings

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from common.errors import require_at_least
from datamodules.augment import SSLViews, TextViews, TokenMasking
from datamodules.collate import Collate
from datamodules.evaluation import EvalTask, TaskDatasets
from datamodules.sampling import ResumableSampler, contrastive_loader, training_position
from datamodules.shapesworld.captions import protected_words, synonyms, vocabulary
from datamodules.shapesworld.datasets import TASKS, CaptionedScenes, ZeroShotScenes
from datamodules.tokenizer import TokenizerLinks, WordTokenizer
from datamodules.transforms import EvalImageTransform

MEAN, STD = 0.5, 0.25  # per channel, for pixel values scaled to [0, 1]


def normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8 [B, 3, H, W] -> float32 in about [-2, 2] (mean 0.5, std 0.25 per channel)."""
    return (images.float() / 255.0 - MEAN) / STD


class ShapesWorldDataModule(TokenizerLinks, pl.LightningDataModule):
    """Procedural image-caption scenes rendered on the fly, identical on every machine.

    Training scenes hold ``min_objects``..``max_objects`` objects and never a held-out
    (color, shape) combination. Validation and test each have the zero-shot tasks shape,
    color, color_shape_seen, color_shape_heldout, count and a caption retrieval set, drawn
    from their own streams (never the training one).

    Args:
        seed: the world's seed; same seed, same pixels and captions.
        image_size: side of the square images in pixels.
        min_objects, max_objects: objects per training scene (1..9).
        train_samples: size of the training set (an epoch).
        val_samples, test_samples: images per evaluation task.
        batch_size: training batch per process.
        eval_batch_size: evaluation batch per process.
        context_length: token length of every caption (start and end included).
        num_workers: dataloader worker processes (0 renders in the main process).
        views: two augmented views per training image for self-supervised terms (SimCLR), e.g.
            ``datamodules.augment.SSLViews``; None (default) renders no views.
        text_views: a second, EDA-augmented view of each training caption (DeCLIP), e.g.
            ``datamodules.augment.TextViews``; without a synonym table or protected words of its
            own it gets ShapesWorld's (``captions.synonyms()``, ``captions.protected_words()``),
            with which synonym replacement and deletion keep captions true. Swap and insertion
            can make them false (a swap can exchange two objects' colours): give them weight 0.
        text_masking: mask the training captions' tokens for masked language modelling (DeCLIP),
            e.g. ``datamodules.augment.TokenMasking``; adds <mask> as the last id (``vocab_size``
            grows by one) and "mlm_labels" to training batches.

    Views, text views and masks are drawn afresh each epoch, as a pure function of (seed, index,
    epoch); ``provides_views``, ``provides_text_view`` and ``provides_mlm`` tell the model which
    training batches carry them.
    """

    def __init__(
        self,
        seed: int = 0,
        image_size: int = 64,
        min_objects: int = 1,
        max_objects: int = 3,
        train_samples: int = 100_000,
        val_samples: int = 500,
        test_samples: int = 1000,
        batch_size: int = 256,
        eval_batch_size: int = 500,
        context_length: int = 32,
        num_workers: int = 1,
        views: SSLViews | None = None,
        text_views: TextViews | None = None,
        text_masking: TokenMasking | None = None,
    ) -> None:
        super().__init__()
        counts = {"batch_size": batch_size, "eval_batch_size": eval_batch_size, "train_samples": train_samples,
                  "val_samples": val_samples, "test_samples": test_samples, "image_size": image_size}  # fmt: skip
        require_at_least("data.init_args", {k: (v, 1) for k, v in counts.items()} | {"num_workers": (num_workers, 0)})
        # Objects; the CLI saves their configs. text_masking changes the vocabulary, so its config
        # stays in the hparams the analysis rebuilds the datamodule from (objects cannot).
        self.save_hyperparameters(ignore=["views", "text_views"])
        if not isinstance(self.hparams["text_masking"], (dict, type(None))):
            self.remove_ignored_hparams(["text_masking"])
        self.tokenizer = WordTokenizer(vocabulary(), context_length)
        if text_masking is not None:
            self.tokenizer.add_mask_token()
        if text_views is not None:
            text_views = text_views.with_defaults(synonyms(), protected_words())
            if text_views.weights["swap"] or text_views.weights["insert"]:
                warnings.warn(
                    "ShapesWorld text_views with swap or insert > 0 can make captions false of their scene "
                    "(a swap can exchange two objects' colours); set swap: 0 and insert: 0",
                    stacklevel=2,
                )
        self.text_masking = text_masking
        # What the analysis applies to outside images (any size or mode) to match training input.
        self.image_transform = EvalImageTransform(image_size, [MEAN] * 3, [STD] * 3)
        self.train_set = CaptionedScenes(
            seed, "train", train_samples, image_size, min_objects, max_objects, views, text_views,
            mask_seeds=text_masking is not None,
        )  # fmt: skip
        self.provides_views = views is not None
        self.provides_text_view = text_views is not None
        self.provides_mlm = text_masking is not None
        self._eval_sets = {
            stage: self._eval_datasets(stage, samples)
            for stage, samples in (("val", val_samples), ("test", test_samples))
        }

    def _eval_datasets(self, stage: str, samples: int) -> list[tuple[EvalTask, Dataset]]:
        h = self.hparams
        sets: list[tuple[EvalTask, Dataset]] = []
        for name, task in TASKS.items():
            prompts = torch.stack([self.tokenizer(p) for p in task.prompts()])
            dataset = ZeroShotScenes(name, h.seed, stage, samples, h.image_size)
            sets.append((EvalTask(f"zeroshot/shapesworld_{stage}/{name}", "zeroshot", prompts), dataset))
        retrieval = CaptionedScenes(h.seed, f"{stage}/retrieval", samples, h.image_size, 1, h.max_objects)
        sets.append((EvalTask(f"retrieval/shapesworld_{stage}", "retrieval"), retrieval))
        return sets

    def eval_tasks(self, stage: str) -> list[EvalTask]:
        return [task for task, _ in self._eval_sets["test" if stage == "test" else "val"]]

    def _loader(self, dataset: Dataset, batch_size: int, train: bool, sampler: Sampler | None = None) -> DataLoader:
        masking = self.text_masking if train else None  # evaluation captions are never masked
        collate = Collate(self.tokenizer, pad_to_context=not train, normalize=normalize, masking=masking)
        return contrastive_loader(dataset, batch_size, train, self.hparams.num_workers, collate, sampler)

    def train_dataloader(self) -> DataLoader:
        # The order is a pure function of (seed, epoch) and a resumed run starts at the batch its
        # checkpoint stopped at (Lightning restores the loop's progress before asking for data).
        at = training_position(self.trainer, self.hparams.seed)
        sampler = ResumableSampler(self.train_set, at.world, at.rank, at.seed, self.hparams.batch_size, at.done_batches)
        sampler.set_epoch(at.epoch)
        return self._loader(self.train_set, self.hparams.batch_size, train=True, sampler=sampler)

    def _eval_loader(self, stage: str) -> DataLoader:
        datasets = TaskDatasets([dataset for _, dataset in self._eval_sets[stage]])
        return self._loader(datasets, self.hparams.eval_batch_size, train=False)

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")
