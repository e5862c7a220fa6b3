"""Local image-text data (imagefolder, csv/tsv, parquet, webdataset) as a LightningDataModule."""

from datamodules.image_text.datamodule import Collate, ImageTextDataModule
from datamodules.image_text.rows import ImageTextRows, StreamingImageText, open_image
from datamodules.image_text.sources import DEFAULT_COLUMNS, FORMATS

__all__ = [
    "DEFAULT_COLUMNS",
    "FORMATS",
    "Collate",
    "ImageTextDataModule",
    "ImageTextRows",
    "StreamingImageText",
    "open_image",
]
