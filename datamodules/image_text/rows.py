"""Dataset items from the tables of ``sources``: decode, transform, and never die on one bad row.

A map-style training batch must stay full (DDP gathers need equal local batches), so an image
that fails to decode is replaced by a deterministic other row and counted in the item's
"skipped"; a stream simply moves on to its next row. The counts travel in the batches to the
main process, where the datamodule logs them (DataLoader workers cannot log).
"""

from __future__ import annotations

import bisect
import io
import itertools
import random
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
from datasets.distributed import split_dataset_by_node
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from common.errors import UserError
from datamodules.augment import SSLViews, TextViews, epoch_seed
from datamodules.image_text.sources import Segment, row_name
from datamodules.sampling import index_and_epoch
from datamodules.transforms import EvalImageTransform

MAX_REPLACEMENTS = 16  # unreadable rows in a row before we stop believing in the data


def open_image(value: Any, base: Path) -> Image.Image:
    """A row's image, fully decoded (pixels in memory, file closed).

    ``value`` is what a table holds: HF's ``{"bytes", "path"}`` record, raw encoded bytes, or a
    path relative to ``base``. Unlike ``suites.files.ImageFiles`` (paths only) rows may carry
    bytes; ``load()`` is inside the ``with`` so a truncated file fails here, not in a transform.
    """
    data, path = (value.get("bytes"), value.get("path")) if isinstance(value, dict) else (None, value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        data, path = value, None
    if data is not None:
        source: io.BytesIO | Path = io.BytesIO(data)
    elif path:
        source = base / path
    else:
        raise ValueError("the row has no image")
    try:
        with Image.open(source) as image:
            image.load()
    except UnidentifiedImageError:
        if data is None:
            raise
        raise UnidentifiedImageError(
            f"cannot identify the image in {len(data)} bytes"
        ) from None  # not "<BytesIO at 0x..>"
    return image


def _warn_once(seen: set, key: str, message: str) -> None:
    if key not in seen:  # each process warns once per bad row, not once per epoch
        seen.add(key)
        warnings.warn(message, stacklevel=3)


@dataclass(frozen=True)
class PairAugment:
    """The training augmentations of one pair, drawn afresh each epoch: two image views (of the
    image resized and center-cropped like evaluation input, then normalised like it), a text view,
    the seed its caption's tokens are masked with. A pure function of (seed, key, epoch), ``key``
    being the row's index (or a stream's position), whatever worker computes it."""

    seed: int
    at_size: EvalImageTransform
    views: SSLViews | None = None
    text_views: TextViews | None = None
    mask_seeds: bool = False

    def __call__(self, image: Image.Image, caption: str, key: object, epoch: int) -> dict[str, Any]:
        base = random.Random(f"{self.seed}:{key}").getrandbits(63)
        item: dict[str, Any] = {}
        if self.views is not None:
            views = self.views(self.at_size.pixels(image), seed=epoch_seed(base, epoch, "views"))
            item["views"] = self.at_size.normalize(views)
        if self.text_views is not None:
            item["text_view"] = self.text_views(caption, seed=epoch_seed(base, epoch, "text_view"))
        if self.mask_seeds:
            item["mask_seed"] = epoch_seed(base, epoch, "mask")
        return item


class ImageTextRows(Dataset):
    """The captioned rows of some segments as one map-style dataset of
    ``{"image": float [3, S, S], "caption": str, "index": int, "skipped": int}``, plus what
    ``augment`` adds (training); with it the dataset ``takes_epoch`` (keys ``(index, epoch)``).

    Args:
        segments: tables whose ``keep`` lists the rows to serve, in order.
        image_column, caption_column: the two columns of every segment.
        transform: PIL image -> normalised float tensor (train or eval transform).
        source: how messages name the data.
    """

    def __init__(
        self, segments: list[Segment], image_column: str, caption_column: str,
        transform: Callable[[Image.Image], torch.Tensor], source: str,
    ) -> None:  # fmt: skip
        self.segments, self.image_column, self.caption_column = segments, image_column, caption_column
        self.transform, self.source = transform, source
        self.augment: PairAugment | None = None  # set by the datamodule for training
        self.labels: np.ndarray | None = None  # each item's class, set by the datamodule for evaluation
        self._index()
        self._warned: set[str] = set()

    @property
    def takes_epoch(self) -> bool:
        return self.augment is not None

    def _index(self) -> None:
        self.starts = [0]
        for segment in self.segments:
            self.starts.append(self.starts[-1] + len(segment.keep))

    def __len__(self) -> int:
        return self.starts[-1]

    def locate(self, index: int) -> tuple[Segment, int]:
        """(segment, row number in its table) of item ``index``."""
        s = bisect.bisect_right(self.starts, index) - 1
        return self.segments[s], int(self.segments[s].keep[index - self.starts[s]])

    def caption(self, index: int) -> str:
        """The caption of item ``index``, without reading its image."""
        segment, row = self.locate(index)
        return segment.rows[row][self.caption_column].strip()

    def _read(self, index: int) -> tuple[Image.Image, str]:
        segment, row = self.locate(index)
        record = segment.rows[row]
        return open_image(record[self.image_column], segment.base), record[self.caption_column].strip()

    def drop_unreadable(self) -> list[str]:
        """Decode every row once and drop those that fail; returns their names. For evaluation
        sets, where a replaced row would count one pair twice in the retrieval metrics; it costs
        one extra pass over the images, so keep evaluation sets to a few thousand."""
        bad = []
        for index in range(len(self)):
            try:
                self._read(index)
            except Exception:  # noqa: BLE001 - missing, truncated, not an image: a bad row
                bad.append(index)
        names = [row_name(*self.locate(i), self.image_column) for i in bad]
        keep = np.ones(len(self), dtype=bool)
        keep[bad] = False
        for segment, start in zip(self.segments, self.starts[:-1], strict=True):  # starts ends with the total
            segment.keep = segment.keep[keep[start : start + len(segment.keep)]]
        self._index()
        return names

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        index, epoch = index_and_epoch(key)
        position = index
        for tries in range(MAX_REPLACEMENTS + 1):
            try:
                image, caption = self._read(position)
                item = {"image": self.transform(image), "caption": caption, "index": index, "skipped": tries}
                if self.labels is not None:
                    item["label"] = int(self.labels[position])
                if self.augment is not None:
                    item |= self.augment(image, caption, index, epoch)
                return item
            except Exception as error:  # noqa: BLE001 - one bad row must not end the run
                name = row_name(*self.locate(position), self.image_column)
                # Deterministic (same replacement on every rank and resume), spread over the data
                # (not the neighbour, which a shuffled batch may already hold).
                position = random.Random(f"{index}:{tries}").randrange(len(self))
                why = f"{type(error).__name__}: {error}"
                message = f"{self.source}: unreadable image {name} ({why}); a replacement row is used"
                _warn_once(self._warned, name, message + " and counted in data/skipped_rows")
        raise UserError(
            f"{self.source}: {MAX_REPLACEMENTS + 1} unreadable images in a row for item {index}; "
            "check the image paths (csv paths start at the csv's folder) and the image column"
        )


class StreamingImageText(IterableDataset):
    """Training rows streamed from HF's webdataset builder; rows with an empty caption or an
    unreadable image are skipped, counted in the next item's "skipped".

    The stream never ends (``trainer.max_steps`` ends the run): every rank and worker keeps
    drawing rows, so no rank runs out of data and leaves the others waiting in a gather.

    - ``resampled=False``: passes over the data; each pass shuffles the shard order and a
      ``shuffle_buffer`` of rows (seed + pass), split across ranks with
      ``datasets.distributed.split_dataset_by_node`` and across DataLoader workers by HF.
    - ``resampled=True`` (open_clip's ``--dataset-resampled``): every rank and worker draws whole
      shards with replacement from its own seeded generator; no split is needed, and a number of
      shards that does not divide evenly across ranks x workers does not matter.

    There is no exact resume (the map-style formats have it): a resumed run starts a fresh stream
    seeded by ``seed`` and the step it resumes at, so it does not replay the rows it began with.
    """

    def __init__(
        self, stream: datasets.IterableDataset, image_column: str, caption_column: str,
        transform: Callable[[Image.Image], torch.Tensor], seed: int, rank: int, world_size: int,
        resampled: bool, shuffle_buffer: int, source: str, augment: PairAugment | None = None,
    ) -> None:  # fmt: skip
        self.stream, self.image_column, self.caption_column = stream, image_column, caption_column
        self.transform, self.seed, self.rank, self.world_size = transform, seed, rank, world_size
        self.resampled, self.shuffle_buffer, self.source = resampled, shuffle_buffer, source
        self.augment = augment

    def __iter__(self) -> Iterator[dict[str, Any]]:
        skipped, warned = 0, set[str]()
        worker = get_worker_info()
        stream_key, served = f"{self.rank}:{worker.id if worker is not None else 0}", 0
        for records in self._passes():
            good = 0
            for record in records:
                caption = (record[self.caption_column] or "").strip()
                try:
                    if not caption:
                        raise ValueError("empty caption")
                    pil = open_image(record[self.image_column], Path("."))
                    image = self.transform(pil)
                except Exception as error:  # noqa: BLE001 - skip, count, go on
                    skipped += 1
                    value = record[self.image_column]
                    name = value.get("path") if isinstance(value, dict) else None
                    why = "image is unreadable" if caption else "caption is empty"
                    message = f"{self.source}: skipping rows whose {why} (counted in data/skipped_rows), e.g. {name}"
                    _warn_once(warned, why, f"{message} ({error})")
                    continue
                item = {"image": image, "caption": caption, "skipped": skipped}
                if self.augment is not None:  # keyed by this worker's position in its stream
                    item |= self.augment(pil, caption, f"{stream_key}:{served}", 0)
                good, served = good + 1, served + 1
                yield item
                skipped = 0
            records.good = good

    def _passes(self) -> Iterator["_Counted"]:
        """Endless row iterators: passes over this rank's share, or shards drawn with replacement."""
        worker = get_worker_info()
        worker_id = worker.id if worker is not None else 0
        if self.resampled:
            shards = self.stream.num_shards
            rng = random.Random(f"{self.seed}:{self.rank}:{worker_id}")
            barren = 0  # draws in a row without one usable row
            while barren < 20 * shards + 20:
                shard = self.stream.shard(num_shards=shards, index=rng.randrange(shards))
                shard = shard.shuffle(seed=rng.randrange(2**32), buffer_size=self.shuffle_buffer)
                # .iter() does not split the shard again between workers (iterating it would)
                records = _Counted(row for batch in shard.iter(batch_size=64) for row in _unbatch(batch))
                yield records
                barren = 0 if records.good else barren + 1
            raise UserError(
                f"{self.source}: {barren} shards drawn in a row held no row with a caption and a readable image"
            )
        stream = self.stream.shuffle(seed=self.seed, buffer_size=self.shuffle_buffer)
        stream = split_dataset_by_node(stream, rank=self.rank, world_size=self.world_size)
        for epoch in itertools.count():
            stream.set_epoch(epoch)
            records = _Counted(iter(stream))
            yield records
            if records.seen == 0 and worker_id > 0:
                return  # fewer shards than workers: HF gave this worker none; the others go on
            if records.good == 0:
                raise UserError(
                    f"{self.source}: rank {self.rank} found no row with a caption and a readable image in its "
                    f"share ({records.seen} rows read); check image_column / caption_column and the shards"
                )


class _Counted:
    """An iterator that counts what it hands out; ``good`` is set by the consumer."""

    def __init__(self, rows: Iterator[dict]) -> None:
        self.rows, self.seen, self.good = rows, 0, 0

    def __iter__(self) -> Iterator[dict]:
        for row in self.rows:
            self.seen += 1
            yield row


def _unbatch(batch: dict[str, list]) -> Iterator[dict]:
    keys = list(batch)
    for values in zip(*(batch[k] for k in keys), strict=True):
        yield dict(zip(keys, values, strict=True))
