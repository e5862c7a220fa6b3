"""ShapesWorldDataModule: the embedded benchmark as a LightningDataModule."""

from __future__ import annotations

import warnings
from typing import Literal

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from common.errors import UserError, require_at_least
from datamodules.augment import SSLViews, TextViews, TokenMasking
from datamodules.collate import Collate
from datamodules.evaluation import EvalTask, TaskDatasets
from datamodules.sampling import ResumableSampler, contrastive_loader, training_position
from datamodules.shapesworld import captions_zh
from datamodules.shapesworld.captions import protected_words, synonyms, vocabulary
from datamodules.shapesworld.datasets import (
    CaptionedScenes,
    CrossLingualScenes,
    ZeroShotScenes,
    check_language,
    tasks_in,
)
from datamodules.tokenizer import BertTokenizer, TextTokenizer, TokenizerLinks, WordTokenizer
from datamodules.tokenizer.coverage import check_captions, check_prompts, sample_indices
from datamodules.transforms import EvalImageTransform

MEAN, STD = 0.5, 0.25  # per channel, for pixel values scaled to [0, 1]
# Default context lengths ([start]/[CLS] and [end]/[SEP] included). English: 32 holds every caption
# of up to 4 objects. Chinese is tokenized per character: the longest caption of n objects (a list
# "一张有一个很小的橙色正方形、...的图片") is 11 n + 7 tokens, 40 at the default 3 objects, so 64 holds
# up to 5 objects, every prompt and every probe (tests/test_shapesworld_zh.py measures them).
CONTEXT_LENGTH = {"en": 32, "zh": 64, "both": 64}
_COVERAGE_FIX = (
    "set data.init_args.vocab: cn_clip (Chinese-CLIP's vocabulary, which covers Chinese and English) or a "
    "vocab.txt that covers the captions' language, or leave vocab unset for ShapesWorld's own words"
)


def tokenizer_for(language: str, vocab: str | None, context_length: int) -> TextTokenizer:
    """ShapesWorld's tokenizer: English with no vocabulary file keeps the word-level tokenizer of
    its closed vocabulary (every earlier run's ids); otherwise BERT's WordPiece, over ``vocab`` (a
    vocab.txt or "cn_clip") or over the words the run's captions, prompts and probes can use."""
    if language == "en" and vocab is None:
        return WordTokenizer(vocabulary(), context_length)
    if vocab is not None:
        return BertTokenizer(vocab=vocab, context_length=context_length)
    words = captions_zh.vocabulary() + (vocabulary() if language == "both" else [])
    return BertTokenizer(words=words, context_length=context_length)


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
        context_length: token length of every caption (start and end included); None (default):
            32 for English, 64 for "zh" and "both" (each Chinese character is a token).
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
            grows by one) and "mlm_labels" to training batches. With a BERT tokenizer (below) the
            vocabulary's own [MASK] is used and ``vocab_size`` stays.
        language: the captions' language: "en" (default), "zh" (Chinese, ``captions_zh``) or "both"
            (each caption in one of the two, chosen per sample from (seed, index)). The scenes, and
            so the held-out combinations, are the same in every language. Zero-shot tasks: the
            English ones ("zeroshot/shapesworld_val/shape") for "en", the Chinese prompts
            ("zeroshot/shapesworld_val/shape_zh") for "zh", both sets for "both"; retrieval captions
            are in the run's language; "both" adds cross-lingual retrieval
            ("crosslingual/shapesworld_val": English caption -> Chinese caption of the same scene).
        vocab: a BERT vocab.txt path (or a folder holding one), or "cn_clip" for Chinese-CLIP's
            (``BertTokenizer``); a vocabulary that maps the captions or a prompt mostly to [UNK] stops
            the fit (``datamodules.tokenizer.coverage``). None
            (default): English keeps its word-level vocabulary; "zh" and "both" get a WordPiece
            vocabulary of ShapesWorld's own words and characters.

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
        context_length: int | None = None,
        num_workers: int = 1,
        views: SSLViews | None = None,
        text_views: TextViews | None = None,
        text_masking: TokenMasking | None = None,
        language: Literal["en", "zh", "both"] = "en",
        vocab: str | None = None,
    ) -> None:
        super().__init__()
        check_language(language)
        counts = {"batch_size": batch_size, "eval_batch_size": eval_batch_size, "train_samples": train_samples,
                  "val_samples": val_samples, "test_samples": test_samples, "image_size": image_size}  # fmt: skip
        require_at_least("data.init_args", {k: (v, 1) for k, v in counts.items()} | {"num_workers": (num_workers, 0)})
        # Objects; the CLI saves their configs. text_masking changes the vocabulary, so its config
        # stays in the hparams the analysis rebuilds the datamodule from (objects cannot).
        self.save_hyperparameters(ignore=["views", "text_views"])
        if not isinstance(self.hparams["text_masking"], (dict, type(None))):
            self.remove_ignored_hparams(["text_masking"])
        self.tokenizer = tokenizer_for(language, vocab, context_length or CONTEXT_LENGTH[language])
        if text_masking is not None:
            self.tokenizer.add_mask_token()
        if text_views is not None and language != "en":
            # The synonym table and protected words that keep a view true are English grammar.
            raise UserError(
                f"text_views are English-only: ShapesWorld has no Chinese synonym table, so with language "
                f"{language!r} set data.init_args.text_views: null (or language: en)"
            )
        if text_views is not None:
            text_views = text_views.with_defaults(synonyms(), protected_words())
            if text_views.weights["swap"] or text_views.weights["insert"]:
                warnings.warn(
                    "ShapesWorld text_views with swap or insert > 0 can make captions false of their scene "
                    "(a swap can exchange two objects' colours); set swap: 0 and insert: 0",
                    stacklevel=2,
                )
        self.text_masking = text_masking
        # What the analysis applies to outside images (any size or mode) to match training input,
        # and what the model normalises the loaders' uint8 batches with (ContrastiveModule.pixels).
        self.image_transform = EvalImageTransform(image_size, [MEAN] * 3, [STD] * 3)
        self.train_set = CaptionedScenes(
            seed, "train", train_samples, image_size, min_objects, max_objects, views, text_views,
            mask_seeds=text_masking is not None, language=language,
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
        language = h["language"]
        for suffix, task in tasks_in(language):
            prompts = torch.stack([self.tokenizer(p) for p in task.prompts()])
            dataset = ZeroShotScenes(task.name, h["seed"], stage, samples, h["image_size"])
            name = f"zeroshot/shapesworld_{stage}/{task.name}{suffix}"
            sets.append((EvalTask(name, "zeroshot", language="zh" if suffix else "en", prompts=prompts), dataset))
        retrieval = CaptionedScenes(
            h["seed"], f"{stage}/retrieval", samples, h["image_size"], 1, h["max_objects"], language=language
        )
        sets.append((EvalTask(f"retrieval/shapesworld_{stage}", "retrieval", language=language), retrieval))
        if language == "both":
            pairs = CrossLingualScenes(
                h["seed"], f"{stage}/crosslingual", samples, h["image_size"], 1, h["max_objects"]
            )
            sets.append(
                (
                    EvalTask(f"crosslingual/shapesworld_{stage}", "crosslingual", language="en", target_language="zh"),
                    pairs,
                )
            )
        return sets

    def setup(self, stage: str) -> None:
        if stage == "fit":
            self.check_vocabulary()

    def check_vocabulary(self) -> None:
        """Stop a run whose tokenizer maps its captions or a class prompt mostly to the unknown
        token (``datamodules.tokenizer.coverage``): a sample of the training captions, and every
        prompt of every zero-shot task. Once per fit, before training; the analysis, which rebuilds
        the datamodule from a checkpoint, never sets it up for fit."""
        captions = [self.train_set.caption(i) for i in sample_indices(len(self.train_set))]
        check_captions(self.tokenizer, captions, "ShapesWorld", _COVERAGE_FIX)
        prompts = [
            (f"task {task.name}{suffix}, class {task.classes[c]}", prompt)
            for suffix, task in tasks_in(self.hparams["language"])
            for c, class_prompts in enumerate(task.prompts())
            for prompt in class_prompts
        ]
        check_prompts(self.tokenizer, prompts, "ShapesWorld", _COVERAGE_FIX)

    def eval_tasks(self, stage: str) -> list[EvalTask]:
        return [task for task, _ in self._eval_sets["test" if stage == "test" else "val"]]

    def _loader(self, dataset: Dataset, batch_size: int, train: bool, sampler: Sampler | None = None) -> DataLoader:
        masking = self.text_masking if train else None  # evaluation captions are never masked
        # Images stay uint8 in the batch (a quarter of float32's bytes through the loader worker
        # and to the device); the model normalises each micro-batch with image_transform.normalize
        # as it enters the tower (ContrastiveModule.pixels), so a 65,536 batch is 0.8 GB, not 3.2.
        collate = Collate(self.tokenizer, pad_to_context=not train, masking=masking)
        return contrastive_loader(dataset, batch_size, train, self.hparams["num_workers"], collate, sampler)

    def train_dataloader(self) -> DataLoader:
        # The order is a pure function of (seed, epoch) and a resumed run starts at the batch its
        # checkpoint stopped at (Lightning restores the loop's progress before asking for data).
        at = training_position(self.trainer, self.hparams["seed"])
        sampler = ResumableSampler(
            self.train_set, at.world, at.rank, at.seed, self.hparams["batch_size"], at.done_batches
        )
        sampler.set_epoch(at.epoch)
        return self._loader(self.train_set, self.hparams["batch_size"], train=True, sampler=sampler)

    def _eval_loader(self, stage: str) -> DataLoader:
        datasets = TaskDatasets([dataset for _, dataset in self._eval_sets[stage]])
        return self._loader(datasets, self.hparams["eval_batch_size"], train=False)

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")
