"""Local image-text data through HF ``datasets``' local builders, checked before any training step.

Every format ends as :class:`Segment` tables of two columns (image, caption) plus the row
numbers that have a caption. Images are not decoded here: a row's image stays a path, raw bytes
or HF's ``{"bytes", "path"}`` record until a DataLoader worker opens it (``rows.open_image``).
Mistakes the user must fix (no such file, an empty glob, a wrong column name, a caption column
that is not text) end with one :class:`~common.errors.UserError` naming the cause.
"""

from __future__ import annotations

import csv
import glob
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeAlias

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from common.errors import UserError

FORMATS = ("imagefolder", "csv", "tsv", "parquet", "webdataset")
# (image column, caption column) when not given: each ecosystem's own convention.
DEFAULT_COLUMNS = {
    "imagefolder": ("image", "text"),  # HF names the image column "image"; metadata.jsonl's caption
    "csv": ("filepath", "title"),  # open_clip's --csv-img-key / --csv-caption-key defaults
    "tsv": ("filepath", "title"),
    "parquet": ("image", "text"),
    "webdataset": ("jpg", "txt"),  # a sample's fields are its file extensions in the tar
}
EXTENSIONS = {"csv": (".csv",), "tsv": (".tsv",), "parquet": (".parquet",), "webdataset": (".tar", ".tar.gz", ".tgz")}
METADATA_FILES = ("metadata.jsonl", "metadata.csv", "metadata.parquet")
AnyDataset: TypeAlias = "datasets.Dataset | datasets.IterableDataset"


@dataclass
class Segment:
    """Rows read from one data file (csv/tsv/parquet) or one builder call (imagefolder, webdataset).

    ``base`` is where relative image paths start (a csv's folder); ``keep`` the row numbers whose
    caption is not empty, kept as a numpy array so a million-row table costs 8 MB, not a list.
    """

    rows: datasets.Dataset  # columns: image, caption
    base: Path
    keep: np.ndarray
    name: str  # the data file (or folder) in messages


def resolve_files(spec: str | list[str], format: str, what: str) -> list[Path]:
    """The data files (imagefolder: folders) that ``spec`` names: paths, globs (``**`` recursive)
    or folders (all files of the format's extensions inside). Missing paths and empty globs are
    errors naming them: a typo must not train on nothing or on half the data."""
    patterns = [spec] if isinstance(spec, (str, os.PathLike)) else list(spec)
    if not patterns:
        raise UserError(f"{what} is an empty list: give a path, a glob or a list of them")
    found: list[Path] = []
    for pattern in (os.path.expanduser(str(p)) for p in patterns):
        if any(c in pattern for c in "*?["):
            paths = [Path(p) for p in sorted(glob.glob(pattern, recursive=True))]
            if not paths:
                raise UserError(f"{what}: no files match {pattern}")
        elif not Path(pattern).exists():
            raise UserError(f"{what}: {pattern} does not exist")
        else:
            paths = [Path(pattern)]
        for path in paths:
            if format == "imagefolder":
                found.append(_metadata_folder(path if path.is_dir() else path.parent, what))
            elif path.is_dir():
                inside = sorted(
                    p for p in path.rglob("*") if p.is_file() and p.name.lower().endswith(EXTENSIONS[format])
                )
                if not inside:
                    raise UserError(f"{what}: no {'/'.join(EXTENSIONS[format])} files in folder {path}")
                found += inside
            elif path.is_file():
                found.append(path)
    if not found:
        raise UserError(f"{what}: {patterns} names no files")
    return list(dict.fromkeys(found))


def _metadata_folder(folder: Path, what: str) -> Path:
    if not any((folder / name).is_file() for name in METADATA_FILES):
        raise UserError(
            f"{what}: {folder} has no {' / '.join(METADATA_FILES)}; the imagefolder format needs one, "
            "with a file_name column (image paths relative to the folder) and a caption column"
        )
    return folder


def _check_columns(
    columns: list[str], image_column: str, caption_column: str, source: str, label_column: str | None = None
) -> None:
    roles = [("image_column", image_column), ("caption_column", caption_column), ("label_column", label_column)]
    for role, name in roles:
        if name is not None and name not in columns:
            raise UserError(
                f"{source}: no column {name!r} ({role}); columns found: {', '.join(columns)}. Set data.init_args.{role}"
            )


def _csv_header(path: Path, sep: str) -> list[str]:
    with path.open(newline="", encoding="utf-8", errors="replace") as f:
        return next(csv.reader(f, delimiter=sep), [])


def load_segments(
    files: list[Path], format: str, image_column: str, caption_column: str, cache_dir: str | None,
    label_column: str | None = None,
) -> list[Segment]:  # fmt: skip
    """Map-style tables of (image, caption), empty captions not yet dropped (see :func:`captioned`),
    and the ``label_column`` when one is given (evaluation sets with classes).

    csv/tsv/parquet files are loaded one by one so each keeps its folder (relative image paths
    start there, as in open_clip's csv loader); columns are checked from the header or schema
    before anything is loaded. webdataset shards are loaded map-style here (evaluation sets);
    training streams them (:func:`load_stream`).
    """
    load = {"cache_dir": cache_dir, "split": "train"}
    labels = [label_column] if label_column is not None else []
    if format in ("csv", "tsv"):
        sep = "\t" if format == "tsv" else ","
        segments = []
        for path in files:
            _check_columns(_csv_header(path, sep), image_column, caption_column, f"{format} {path}", label_column)
            # Everything as text, and only "" as missing: a caption "NA" or "123" stays a caption.
            columns = [image_column, caption_column, *labels]
            features = datasets.Features({column: datasets.Value("string") for column in columns})
            rows = datasets.load_dataset(
                "csv", data_files=[str(path)], sep=sep, usecols=columns, features=features,
                keep_default_na=False, **load,
            )  # fmt: skip
            segments.append(Segment(rows, path.parent, np.arange(0), str(path)))
    elif format == "parquet":
        segments = []
        for path in files:
            _check_columns(pq.read_schema(path).names, image_column, caption_column, f"parquet {path}", label_column)
            rows = datasets.load_dataset(
                "parquet", data_files=[str(path)], columns=[image_column, caption_column, *labels], **load
            )
            segments.append(Segment(rows, path.parent, np.arange(0), str(path)))
    elif format in ("imagefolder", "webdataset"):
        patterns = [f"{f}/**" for f in files] if format == "imagefolder" else [str(f) for f in files]
        rows = datasets.load_dataset(format, data_files={"train": patterns}, **load)
        source = f"{format} {', '.join(map(str, files))}"
        _check_columns(rows.column_names, image_column, caption_column, source, label_column)
        table = rows.select_columns([image_column, caption_column, *labels])
        segments = [Segment(table, Path("."), np.arange(0), source)]
    else:
        raise UserError(f"unknown format {format!r}; use one of {', '.join(FORMATS)}")
    for segment in segments:
        segment.rows = _undecoded(segment.rows, image_column, segment.name)
        _check_caption_type(segment.rows.features[caption_column], caption_column, segment.name)
    return segments


def load_stream(
    files: list[Path], image_column: str, caption_column: str, cache_dir: str | None
) -> datasets.IterableDataset:
    """webdataset shards as an HF streaming dataset of (image, caption); nothing is copied to the
    cache, so data larger than the disk's free space trains. Fields are inferred from the first
    samples of the first shard, which is also all that is read here."""
    stream = datasets.load_dataset(
        "webdataset", data_files={"train": [str(f) for f in files]}, split="train", streaming=True, cache_dir=cache_dir
    )
    source = f"webdataset {files[0]}" + (f" (and {len(files) - 1} more shards)" if len(files) > 1 else "")
    _check_columns(list(stream.column_names or []), image_column, caption_column, source)
    stream = stream.select_columns([image_column, caption_column])
    _check_caption_type(stream.features[caption_column], caption_column, source)
    return _undecoded(stream, image_column, source)


def _undecoded(rows: AnyDataset, image_column: str, source: str) -> AnyDataset:
    """The image column as HF's undecoded ``{"bytes", "path"}`` records (or raw bytes, or path
    strings), so that a corrupt image is our worker's exception to count, not HF's to raise."""
    feature = rows.features[image_column]
    if isinstance(feature, datasets.Image):
        return rows.cast_column(image_column, datasets.Image(decode=False))
    dtype = getattr(feature, "dtype", None)
    if dtype not in ("string", "large_string", "binary", "large_binary"):
        raise UserError(
            f"{source}: image column {image_column!r} holds {feature}; it must hold images (HF Image), "
            "encoded image bytes, or image paths"
        )
    return rows


def _check_caption_type(feature: object, caption_column: str, source: str) -> None:
    if getattr(feature, "dtype", None) not in ("string", "large_string"):
        raise UserError(f"{source}: caption column {caption_column!r} holds {feature}, not text (one caption per row)")


def captioned(segment: Segment, caption_column: str) -> np.ndarray:
    """Row numbers whose caption has a non-space character, computed by pyarrow over the whole
    column at once (a Python loop would cost minutes on millions of rows)."""
    column = segment.rows.data.column(caption_column)
    if not isinstance(column, pa.ChunkedArray):
        column = pa.chunked_array([column])
    present = pc.fill_null(pc.greater(pc.utf8_length(pc.utf8_trim_whitespace(column)), 0), False)
    return np.flatnonzero(present.to_numpy(zero_copy_only=False))


class RowNames(Sequence[str]):
    """Names of skipped rows (see :func:`row_name`), made only when read: a warning shows the first
    five and counts the rest, and a table with a million empty captions should not build a
    million strings for that."""

    def __init__(self, image_column: str) -> None:
        self.image_column, self.total = image_column, 0
        self.parts: list[tuple[Segment, np.ndarray]] = []

    def add(self, segment: Segment, rows: np.ndarray) -> None:
        if len(rows):
            self.parts.append((segment, rows))
            self.total += len(rows)

    def __len__(self) -> int:
        return self.total

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(self.total))]
        for segment, rows in self.parts:
            if index < len(rows):
                return row_name(segment, int(rows[index]), self.image_column)
            index -= len(rows)
        raise IndexError(index)


def row_name(segment: Segment, row: int, image_column: str) -> str:
    """How a warning names a row: its image path when it has one, else file and row number."""
    value = segment.rows[int(row)][image_column]
    path = value.get("path") if isinstance(value, dict) else value if isinstance(value, str) else None
    return str(path) if path else f"{Path(segment.name).name} row {row}"


class FileBuilder:
    """Writes data files before they are read: an ``ImageTextDataModule``'s ``build``, called by its
    ``prepare_data`` (once per machine, before ``setup`` reads the files), e.g.
    :class:`datamodules.captioned.DigitsFiles`. A build that is already complete must be kept."""

    def __call__(self) -> object:
        raise NotImplementedError
