"""The real pictures scikit-image and scikit-learn ship, as analysis suites (the `real` extra)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("skimage")

from datamodules.suites.photos import PHOTOS, faces_suite, photos_suite


def test_faces_are_split_in_stratified_halves_of_real_crops() -> None:
    suite = faces_suite(seed=0)
    train, test = suite.train, suite.test
    assert len(train) == len(test) == 100
    for split in (train, test):
        labels = [split[i]["label"] for i in range(len(split))]
        assert labels.count(0) == labels.count(1) == 50  # faces and non-faces
    image = np.asarray(test[0]["image"])
    assert image.shape == (25, 25) and image.dtype == np.uint8 and image.std() > 5  # a real grey crop
    assert suite.class_prompts()[0][0] == "a photo of a face."


def test_photos_have_one_distinct_caption_each() -> None:
    suite = photos_suite()
    assert len(suite.images) == len(suite.captions) == len(PHOTOS) == 14
    assert len({c[0] for c in suite.captions}) == 14
    sizes = {suite.images[i]["image"].size for i in range(14)}
    assert all(min(size) >= 191 for size in sizes)  # photographs, not thumbnails
    assert all(suite.images[i]["image"].mode == "RGB" for i in range(14))
