"""Handwritten digits bundled with scikit-learn (``load_digits``: 1797 8x8 images, values 0..16),
a classification suite that needs no download:

    digits_suite(seed=0) -> ClassificationSuite("digits", ["zero", ..., "nine"], train + test)

Images are kept 8x8 as uint8 grey PIL images (value * 255 / 16, rounded); the checkpoint's
transform resizes them.
"""

from __future__ import annotations

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from common.errors import UserError
from datamodules.suites.base import ClassificationSuite
from datamodules.suites.files import LabelledImages

DIGIT_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
DIGIT_TEMPLATES = [
    "a photo of the number {}.",
    "a drawing of the number {}.",
    "the number {}.",
    "a photo of the digit {}.",
]


def digits_suite(seed: int = 0, test_fraction: float = 0.5) -> ClassificationSuite:
    """Stratified train/test split of scikit-learn's digits; ``seed`` fixes the split."""
    if not 0.0 < test_fraction < 1.0:
        raise UserError(f"digits: test_fraction must be between 0 and 1 (exclusive), got {test_fraction}")
    digits = load_digits()
    pixels = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)
    images = [Image.fromarray(p) for p in pixels]
    labels = digits.target.astype(int)
    train_idx, test_idx = train_test_split(
        np.arange(len(labels)), test_size=test_fraction, stratify=labels, random_state=seed
    )

    def split(indices: np.ndarray) -> LabelledImages:
        return LabelledImages([images[i] for i in indices], labels[indices].tolist())

    return ClassificationSuite(
        name="digits",
        classnames=list(DIGIT_NAMES),
        templates=list(DIGIT_TEMPLATES),
        language="en",
        test=split(test_idx),
        train=split(train_idx),
    )
