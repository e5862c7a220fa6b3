"""ImageTextDataModule: train and evaluate on the user's own image-caption data, on local disk."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import datasets
import lightning.pytorch as pl
import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler, Subset

from common.errors import UserError, require_at_least
from datamodules.augment import SSLViews, TextViews, TokenMasking
from datamodules.collate import Collate
from datamodules.evaluation import EvalTask, TaskDatasets
from datamodules.image_text.classes import distinct_images, evenly_spaced, prompt_sets, read_labels
from datamodules.image_text.rows import ImageTextRows, PairAugment, StreamingImageText
from datamodules.image_text.sources import (
    DEFAULT_COLUMNS,
    FORMATS,
    FileBuilder,
    RowNames,
    captioned,
    load_segments,
    load_stream,
    resolve_files,
)
from datamodules.sampling import ResumableSampler, contrastive_loader, training_position
from datamodules.suites.files import warn_skipped
from datamodules.tokenizer import TextTokenizer, TokenizerLinks
from datamodules.tokenizer.coverage import CAPTION_SAMPLE, check_captions, check_prompts, sample_indices
from datamodules.transforms import CLIP_MEAN, CLIP_STD, EvalImageTransform, TrainImageTransform, check_crop_scale

SKIPPED_METRIC = "data/skipped_rows"


class ImageTextDataModule(TokenizerLinks, pl.LightningDataModule):
    """Image-caption pairs from local files through HF ``datasets``' local builders.

    Formats (``format``), with the default ``image_column`` / ``caption_column``:

    - ``imagefolder``: a folder of images with ``metadata.jsonl`` (or .csv) giving ``file_name``
      and the caption (``image`` / ``text``); ``train_files`` names the folder.
    - ``csv`` / ``tsv``: image paths, relative to the csv's folder, and captions (open_clip's
      ``filepath`` / ``title``).
    - ``parquet``: encoded image bytes, as an HF ``Image`` column or raw binary (``image`` / ``text``).
    - ``webdataset``: tar shards, ``000001.jpg`` + ``000001.txt`` per sample (``jpg`` / ``txt``),
      streamed for training (data larger than memory or disk cache; no exact resume, see
      ``StreamingImageText``); evaluation shards are read into the cache.

    Empty captions are dropped up front and counted; an image that fails to decode is replaced
    in training by another row (batches stay full for DDP) and dropped from evaluation sets; counts
    are warned per split and logged as ``data/skipped_rows``. The datasets load in ``setup``, not
    here, so that the analysis can rebuild the tokenizer and transforms from a checkpoint on a
    machine without the data.

    Args:
        tokenizer: captions -> ids (e.g. ``datamodules.tokenizer.CLIPTokenizer``); the CLI links
            its ``vocab_size`` and ``context_length`` to the text tower.
        format: one of imagefolder, csv, tsv, parquet, webdataset.
        train_files: a path, a glob (``**`` recursive), a folder, or a list of them.
        val_files: evaluated every ``trainer.val_check_interval`` steps as the retrieval task
            ``retrieval/<name>_val`` (i2t/t2i R@1); None: no validation.
        test_files: the same, as ``retrieval/<name>_test``, after fit and by ``test``.
        image_column, caption_column: column names; None takes the format's default above.
        name: the data's name in metric names.
        image_size: side of the square images the vision tower sees.
        mean, std: per-channel normalisation of pixels in [0, 1] (CLIP's by default; a pretrained
            tower needs the statistics it was trained with).
        crop_scale: area range of the training RandomResizedCrop (open_clip: 0.9-1.0).
        batch_size: training batch per process (incomplete batches are dropped).
        eval_batch_size: evaluation batch per process.
        num_workers: DataLoader worker processes decoding images.
        seed: training order (a run's ``seed_everything`` takes precedence, as for ShapesWorld).
        cache_dir: where HF ``datasets`` writes its Arrow copies of csv/parquet/imagefolder
            tables (None: HF's default, ``$HF_HOME/datasets``).
        resampled: webdataset only: draw shards with replacement, forever (open_clip's
            ``--dataset-resampled``), instead of passes over this rank's shards.
        shuffle_buffer: webdataset only: rows held to shuffle the stream.
        views: two augmented views per training image for self-supervised terms (SLIP, DeCLIP),
            e.g. ``datamodules.augment.SSLViews``, drawn from the image resized and center-cropped
            to ``image_size`` and normalised with ``mean``/``std``; None (default): no views.
        text_views: a second, EDA-augmented view of each training caption (DeCLIP), e.g.
            ``datamodules.augment.TextViews``, from the caption's own words: synonym replacement
            needs the TextViews' own ``synonyms`` table (else set its weight ``synonym: 0``).
        text_masking: mask the training captions' tokens for masked language modelling (DeCLIP),
            e.g. ``datamodules.augment.TokenMasking``; the tokenizer gets <mask> as its last id
            (``vocab_size`` grows by one) and training batches "mlm_labels".
        label_column: an integer class per row (0 .. classes - 1) in the validation and test files
            (and the training files, for the linear probe); None: captions only.
        zeroshot: zero-shot tasks on the evaluation images, ``{task: {"classnames": [...],
            "templates": ["a photo of a {}", ...]}}`` (one per language or prompt set), logged as
            ``zeroshot/<name>_<split>/<task>/top1``; needs ``label_column``.
        retrieval_positives: which captions count as right for an image in the retrieval task:
            "caption" (its own caption, or an identical one) or "label" (any caption of its class:
            class-level captions such as "a handwritten seven").
        probe_train_rows: fit a linear probe (``variants.probe``) on this many training images (the
            first row of each distinct image path, evenly spaced; evaluation transform) and score it
            on the evaluation images as ``linear_probe/<name>_<split>/top1``; 0: no probe.
        build: writes the files before they are read (``prepare_data``, once per machine), e.g.
            ``datamodules.captioned.DigitsFiles``; None: the files must exist.

    Views, text views and masks are a pure function of (seed, row, epoch) for the map-style
    formats (drawn afresh each epoch; exact resume), of (seed, rank, worker, position) for a
    stream; ``provides_views``, ``provides_text_view`` and ``provides_mlm`` tell the model which
    training batches carry them.
    """

    def __init__(
        self,
        tokenizer: TextTokenizer,
        train_files: str | list[str],
        format: Literal["imagefolder", "csv", "tsv", "parquet", "webdataset"] = "csv",
        val_files: str | list[str] | None = None,
        test_files: str | list[str] | None = None,
        image_column: str | None = None,
        caption_column: str | None = None,
        name: str = "image_text",
        image_size: int = 224,
        mean: tuple[float, float, float] = CLIP_MEAN,
        std: tuple[float, float, float] = CLIP_STD,
        crop_scale: tuple[float, float] = (0.9, 1.0),
        batch_size: int = 256,
        eval_batch_size: int = 256,
        num_workers: int = 4,
        seed: int = 0,
        cache_dir: str | None = None,
        resampled: bool = False,
        shuffle_buffer: int = 1000,
        views: SSLViews | None = None,
        text_views: TextViews | None = None,
        text_masking: TokenMasking | None = None,
        label_column: str | None = None,
        zeroshot: dict[str, dict[str, list[str]]] | None = None,
        retrieval_positives: Literal["caption", "label"] = "caption",
        probe_train_rows: int = 0,
        build: FileBuilder | None = None,
    ) -> None:
        super().__init__()
        counts = {"batch_size": batch_size, "eval_batch_size": eval_batch_size, "image_size": image_size,
                  "shuffle_buffer": shuffle_buffer}  # fmt: skip
        require_at_least(
            "data.init_args",
            {k: (v, 1) for k, v in counts.items()}
            | {"num_workers": (num_workers, 0), "probe_train_rows": (probe_train_rows, 0)},
        )
        self.save_hyperparameters(ignore=["views", "text_views", "build"])  # objects; the CLI saves their configs
        # Under LightningCLI the tokenizer and text_masking (which adds a token) are saved as their
        # class_path configs, which the analysis rebuilds; objects (a datamodule built in Python)
        # cannot be saved that way.
        self.remove_ignored_hparams(
            [k for k in ("tokenizer", "text_masking") if not isinstance(self.hparams[k], (dict, type(None)))]
        )
        if format not in FORMATS:
            raise UserError(f"unknown format {format!r}; use one of {', '.join(FORMATS)}")
        if text_views is not None:
            text_views.require_synonyms("image-text data")
        self.prompt_sets = prompt_sets(zeroshot, label_column)
        for option, used in (("retrieval_positives: label", retrieval_positives == "label"),
                             ("probe_train_rows", probe_train_rows > 0)):  # fmt: skip
            if used and label_column is None:
                raise UserError(f"data.init_args.{option} needs each row's class: set data.init_args.label_column")
        if retrieval_positives not in ("caption", "label"):
            raise UserError(
                f"data.init_args.retrieval_positives must be 'caption' or 'label', got {retrieval_positives!r}"
            )
        if probe_train_rows and format == "webdataset":
            raise UserError("data.init_args.probe_train_rows needs map-style training files; webdataset streams them")
        self.build = build
        self.tokenizer = tokenizer
        if text_masking is not None:
            tokenizer.add_mask_token()
        self.views, self.text_views, self.text_masking = views, text_views, text_masking
        self.provides_views = views is not None
        self.provides_text_view = text_views is not None
        self.provides_mlm = text_masking is not None
        self.image_column = image_column or DEFAULT_COLUMNS[format][0]
        self.caption_column = caption_column or DEFAULT_COLUMNS[format][1]
        # What the analysis applies to outside images (any size or mode) to match evaluation input.
        self.image_transform = EvalImageTransform(image_size, mean, std)
        self.train_transform = TrainImageTransform(
            image_size, mean, std, scale=check_crop_scale(crop_scale, "data.init_args.crop_scale")
        )
        self.train_set: ImageTextRows | None = None  # map-style formats
        self._stream: datasets.IterableDataset | None = None  # webdataset: HF's streaming dataset of every shard
        self._eval_sets: dict[str, ImageTextRows] = {}
        self._probe_set: Dataset | None = None  # the training images the linear probe fits on
        self._prompts: dict[str, torch.Tensor] = {}  # zero-shot task -> token ids [classes, templates, L]
        # Rows skipped per split and reason, e.g. {"val": {"empty captions": 1}}; training adds
        # "unreadable images" (replacements on this process) and "streamed rows" as batches arrive.
        self.skipped: dict[str, dict[str, int]] = {}
        self._train_upfront = 0

    # ---- loading ------------------------------------------------------------------------
    def _source(self, split: str) -> str:
        return f"{self.hparams['name']} {split} ({self.hparams['format']})"

    def _files(self, split: str) -> list[Path]:
        return resolve_files(self.hparams[f"{split}_files"], self.hparams["format"], f"data {split}_files")

    def prepare_data(self) -> None:
        if self.build is not None:
            self.build()

    def _rows(
        self, split: str, transform: Callable[[Image.Image], torch.Tensor], verify: bool, labels: bool = False,
        counted_as: str | None = None,
    ) -> ImageTextRows:  # fmt: skip
        """The captioned rows of a split; skipped rows are counted under ``counted_as`` (default: the split)."""
        h, source = self.hparams, self._source(split)
        label_column = h["label_column"] if labels else None
        segments = load_segments(
            self._files(split), h["format"], self.image_column, self.caption_column, h["cache_dir"], label_column
        )
        empty = RowNames(self.image_column)
        for segment in segments:
            segment.keep = captioned(segment, self.caption_column)
            empty.add(segment, np.setdiff1d(np.arange(len(segment.rows)), segment.keep))
        total = sum(len(segment.rows) for segment in segments)
        dataset = ImageTextRows(segments, self.image_column, self.caption_column, transform, source)
        unreadable = dataset.drop_unreadable() if verify else []
        self.skipped[counted_as or split] = {"empty captions": len(empty), "unreadable images": len(unreadable)}
        if self._rank_zero() and counted_as is None:
            warn_skipped(source, [("empty captions", empty, total), ("unreadable images", unreadable, total)])
        if len(dataset) == 0:
            raise UserError(
                f"{source}: no row with a caption{' and a readable image' if verify else ''} in {h[f'{split}_files']}"
            )
        if label_column is not None:  # after drop_unreadable: one label per kept row
            classes = len(self.prompt_sets[0].classnames) if self.prompt_sets else None
            dataset.labels = np.concatenate([read_labels(s, label_column, classes, source) for s in segments])
        return dataset

    def _probe_rows(self) -> Dataset:
        """The training images the linear probe fits on: ``probe_train_rows`` of the first rows of
        each distinct image, evenly spaced, read with the evaluation transform."""
        rows = self._rows("train", self.image_transform, verify=False, labels=True, counted_as="probe")
        images = distinct_images(rows.segments, self.image_column)
        return Subset(rows, evenly_spaced(images, self.hparams["probe_train_rows"]))

    def setup(self, stage: str) -> None:
        h = self.hparams
        if stage == "fit" and self.train_set is None and self._stream is None:
            if h["format"] == "webdataset":
                self._stream = load_stream(self._files("train"), self.image_column, self.caption_column, h["cache_dir"])
                self.skipped["train"] = {"streamed rows": 0}  # the rank's stream is built in train_dataloader
            else:
                self.train_set = self._rows("train", self.train_transform, verify=False)
                self._train_upfront = sum(self.skipped["train"].values())
            self._check_vocabulary()
        for split in ("val", "test"):
            wanted = stage in ("fit", "validate") if split == "val" else stage == "test"
            if wanted and h[f"{split}_files"] is not None and split not in self._eval_sets:
                labels = h["label_column"] is not None
                self._eval_sets[split] = self._rows(split, self.image_transform, verify=True, labels=labels)
                if h["probe_train_rows"] and self._probe_set is None:
                    self._probe_set = self._probe_rows()

    def _check_vocabulary(self) -> None:
        """Stop the run when the tokenizer maps the training captions mostly to its unknown token
        (``datamodules.tokenizer.coverage``): a sample spread over the rows, or a stream's first rows."""
        if self.train_set is not None:
            captions = [self.train_set.caption(i) for i in sample_indices(len(self.train_set))]
        else:
            assert self._stream is not None, "setup('fit') builds the rows or the stream before this check"
            rows = self._stream.select_columns([self.caption_column]).take(4 * CAPTION_SAMPLE)
            captions = [c.strip() for row in rows if (c := row[self.caption_column] or "").strip()][:CAPTION_SAMPLE]
        fix = (
            "choose a tokenizer whose vocabulary covers the captions' language (data.init_args.tokenizer), e.g. "
            "BertTokenizer with vocab: cn_clip for Chinese, or CLIPTokenizer (byte-level: nothing is unknown)"
        )
        check_captions(self.tokenizer, captions, self._source("train"), fix)
        prompts = [
            (f"task {s.name}, class {name}", prompt)
            for s in self.prompt_sets
            for name, class_prompts in zip(s.classnames, s.prompts(), strict=True)
            for prompt in class_prompts
        ]
        check_prompts(self.tokenizer, prompts, "data.init_args.zeroshot", fix.replace("captions'", "prompts'"))

    def eval_tasks(self, stage: str) -> list[EvalTask]:
        """Retrieval on the split's rows; with classes, a zero-shot task per prompt set and a linear
        probe (its fitting rows are a task of their own, "probe_train", which logs nothing)."""
        return [task for task, _ in self._tasks("test" if stage == "test" else "val")]

    def _tasks(self, split: str) -> list[tuple[EvalTask, str]]:
        """(task, the rows it reads: "eval" or "probe") of a split, in the loader's order."""
        h = self.hparams
        if h[f"{split}_files"] is None:
            return []
        prefix = f"{h['name']}_{split}"
        tasks = [(EvalTask(f"retrieval/{prefix}", "retrieval", positives=h["retrieval_positives"]), "eval")]
        for prompt_set in self.prompt_sets:
            if prompt_set.name not in self._prompts:
                self._prompts[prompt_set.name] = torch.stack([self.tokenizer(p) for p in prompt_set.prompts()])
            prompts = self._prompts[prompt_set.name]
            tasks.append((EvalTask(f"zeroshot/{prefix}/{prompt_set.name}", "zeroshot", prompts=prompts), "eval"))
        if h["probe_train_rows"]:
            tasks.append((EvalTask(f"probe_train/{h['name']}_train", "probe_train"), "probe"))
            tasks.append((EvalTask(f"linear_probe/{prefix}", "linear_probe", fit_task=len(tasks) - 1), "eval"))
        return tasks

    # ---- loaders ------------------------------------------------------------------------
    def _loader(self, dataset: Dataset, batch_size: int, train: bool, sampler: Sampler | None = None) -> DataLoader:
        masking = self.text_masking if train else None  # evaluation captions are never masked
        collate = Collate(self.tokenizer, pad_to_context=not train, masking=masking)
        return contrastive_loader(dataset, batch_size, train, self.hparams["num_workers"], collate, sampler)

    def _augment(self, seed: int) -> PairAugment | None:
        if not (self.provides_views or self.provides_text_view or self.provides_mlm):
            return None
        return PairAugment(seed, self.image_transform, self.views, self.text_views, self.provides_mlm)

    def train_dataloader(self) -> DataLoader:
        if self.train_set is None and self._stream is None:
            self.setup("fit")
        h = self.hparams
        at = training_position(self.trainer, h["seed"])
        if h["format"] == "webdataset":
            dataset = StreamingImageText(
                self._stream, self.image_column, self.caption_column, self.train_transform,
                seed=(at.seed * 1_000_003 + at.step) % 2**32, rank=at.rank, world_size=at.world, resampled=h["resampled"],
                shuffle_buffer=h["shuffle_buffer"], source=self._source("train"), augment=self._augment(at.seed),
            )  # fmt: skip
            return self._loader(dataset, h["batch_size"], train=True)
        train_set = self.train_set
        assert train_set is not None, "setup('fit') reads every format but webdataset into rows"
        if len(train_set) < h["batch_size"] * at.world:
            raise UserError(
                f"{self._source('train')}: {len(train_set)} usable rows, fewer than one batch "
                f"(data.batch_size {h['batch_size']} x {at.world} processes)"
            )
        # Exact resume as for ShapesWorld: the order is a pure function of (seed, epoch), and a
        # resumed run starts at the batch its checkpoint stopped at.
        train_set.augment = self._augment(at.seed)  # before the sampler reads takes_epoch
        sampler = ResumableSampler(train_set, at.world, at.rank, at.seed, h["batch_size"], at.done_batches)
        sampler.set_epoch(at.epoch)
        return self._loader(train_set, h["batch_size"], train=True, sampler=sampler)

    def _eval_loader(self, split: str) -> DataLoader | list:
        if split not in self._eval_sets:
            return []  # no evaluation data: Lightning runs no evaluation loop
        rows: dict[str, Dataset] = {"eval": self._eval_sets[split]}
        if self._probe_set is not None:  # built with the split's rows when there is a probe task
            rows["probe"] = self._probe_set
        datasets = [rows[which] for _, which in self._tasks(split)]
        return self._loader(TaskDatasets(datasets), self.hparams["eval_batch_size"], train=False)

    def val_dataloader(self) -> DataLoader | list:
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader | list:
        return self._eval_loader("test")

    # ---- skipped-row accounting -----------------------------------------------------------
    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Takes the batch's "skipped" count out (the model has no use for it) and, in training,
        adds it up and logs the total every ``log_every_n_steps`` steps."""
        skipped = batch.pop("skipped", None) if isinstance(batch, dict) else None
        trainer = self.trainer
        if skipped is None or trainer is None or not trainer.training:
            return batch
        reason = "streamed rows" if self.hparams["format"] == "webdataset" else "unreadable images"
        counts = self.skipped.setdefault("train", {})
        counts[reason] = counts.get(reason, 0) + int(skipped)
        every = trainer.log_every_n_steps  # type: ignore[attr-defined]  # Lightning sets it at run time
        if trainer.global_step % max(1, every) == 0:  # the same step on every rank
            self._log_skipped(trainer, counts[reason])
        return batch

    def _log_skipped(self, trainer: pl.Trainer, local: int) -> None:
        # Summed over ranks (a collective: every rank is at this step); the up-front count of
        # empty captions is the same on every rank, so it is added once.
        total = trainer.strategy.reduce(
            torch.tensor(float(local), device=trainer.strategy.root_device), reduce_op="sum"
        )
        value = float(total) + self._train_upfront
        for logger in trainer.loggers:
            logger.log_metrics({SKIPPED_METRIC: value}, step=trainer.global_step)
        # callback_metrics is the trainer's live dict (not a copy): the FinalMetrics callback then
        # writes the count to metrics.json with the metrics the module logged.
        trainer.callback_metrics[SKIPPED_METRIC] = torch.tensor(value)

    def teardown(self, stage: str) -> None:
        counts = self.skipped.get("train", {})
        replaced = counts.get("unreadable images", 0) if self.hparams["format"] != "webdataset" else 0
        streamed = counts.get("streamed rows", 0)
        if stage == "fit" and (replaced or streamed):
            what = f"replaced {replaced} unreadable images" if replaced else f"skipped {streamed} streamed rows"
            warnings.warn(
                f"{self._source('train')}: this process {what} while training (see {SKIPPED_METRIC})", stacklevel=2
            )

    def _rank_zero(self) -> bool:
        return self.trainer is None or self.trainer.global_rank == 0

    # ---- checkpoint -----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The tokenizer's state (a trained BPE's vocabulary), so a checkpoint rebuilds it when the
        files it came from are gone; restoring it is the analysis' job."""
        state = getattr(self.tokenizer, "state_dict", None)
        return {"tokenizer": state() if callable(state) else {}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """On resume: the data is re-read from ``train_files``; the tokenizer, built from the config
        before the checkpoint is read, must be the one the run started with (a tokenizer file
        retrained since would silently change every id the model learned)."""
        saved = state_dict.get("tokenizer") or {}
        if saved and saved != self.state_dict()["tokenizer"]:
            raise UserError(
                f"the tokenizer is not the one this checkpoint was trained with ({type(self.tokenizer).__name__} "
                "from the config differs from the state saved in the checkpoint): restore its file, or "
                "start a new run"
            )
