"""Real pictures that ship inside wheels, as evaluation suites that need no download:

- ``faces_suite``: scikit-image's ``lfw_subset.npy`` (200 real 25x25 grey crops from Labeled Faces in
  the Wild: the first 100 faces, the other 100 not), a stratified half for the linear probe's
  training, half to score (and zero-shot prompts "a photo of a face" / "... of something else");
- ``photos_suite``: fourteen real photographs (scikit-image's astronaut, cat, coffee, rocket, ...,
  scikit-learn's ``china.jpg`` and ``flower.jpg``), each with one caption written here and checked
  by eye against the picture: an image-text retrieval sanity set.

The files are read from the installed packages' folders (found without importing scikit-image);
scikit-image is the ``real`` extra: ``pip install -e '.[real]'``.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
from PIL import Image

from common.errors import UserError
from datamodules.suites.base import ClassificationSuite, RetrievalSuite
from datamodules.suites.files import LabelledImages

# file -> caption (scikit-image's skimage/data unless marked sklearn:). Pictures left out: drawings,
# renders and textures (logo, color, brick, grass, gravel), blurred or microscope images.
PHOTOS = {
    "astronaut.png": "an astronaut in an orange spacesuit in front of an american flag",
    "chelsea.png": "a close-up of a tabby cat's face with green eyes",
    "coffee.png": "a cup of coffee on a red saucer with a spoon on a wooden table",
    "rocket.jpg": "a rocket on its launch pad at night between lit towers",
    "horse.png": "the black silhouette of a horse on a white background",
    "coins.png": "rows of old coins on a dark background in black and white",
    "camera.png": "a man in a dark coat looking through a camera on a tripod in black and white",
    "hubble_deep_field.jpg": "many small distant galaxies in a black sky",
    "motorcycle_left.png": "a red motorcycle parked in a garage",
    "retina.jpg": "the retina of an eye with red blood vessels",
    "page.png": "a page of printed text about image segmentation",
    "moon.png": "the grey surface of the moon with craters",
    "sklearn:china.jpg": "a chinese pagoda on a hill above a lake",
    "sklearn:flower.jpg": "an orange dahlia flower in front of green leaves",
}
FACE_CLASSES = ["face", "something else"]
FACE_TEMPLATES = ["a photo of a {}.", "a black and white photo of a {}.", "a small photo of a {}."]


def _data_folder(package: str, sub: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        extra = "real" if package == "skimage" else "the base install"
        raise UserError(f"this suite reads pictures that {package} ships: pip install -e '.[{extra}]'")
    return Path(next(iter(spec.submodule_search_locations))) / sub


def faces_suite(seed: int = 0) -> ClassificationSuite:
    """Faces against non-faces (``lfw_subset.npy``), split in two stratified halves by ``seed``."""
    from sklearn.model_selection import train_test_split

    pixels = np.load(_data_folder("skimage", "data") / "lfw_subset.npy")
    images = [Image.fromarray(np.rint(p * 255).astype(np.uint8)) for p in pixels]
    labels = np.array([0] * 100 + [1] * 100)
    train, test = train_test_split(np.arange(200), test_size=0.5, stratify=labels, random_state=seed)

    def split(indices: np.ndarray) -> LabelledImages:
        return LabelledImages([images[i] for i in indices], labels[indices].tolist())

    return ClassificationSuite(
        "faces", list(FACE_CLASSES), list(FACE_TEMPLATES), test=split(test), train=split(train), language="en"
    )


def photos_suite() -> RetrievalSuite:
    """The fourteen captioned photographs (RGB; grey and RGBA ones converted)."""
    skimage, sklearn = _data_folder("skimage", "data"), _data_folder("sklearn", "datasets/images")
    images, captions = [], []
    for name, caption in PHOTOS.items():
        path = sklearn / name.removeprefix("sklearn:") if name.startswith("sklearn:") else skimage / name
        with Image.open(path) as image:
            images.append(image.convert("RGB"))
        captions.append([caption])
    return RetrievalSuite("photos", LabelledImages(images, [0] * len(images)), captions, language="en")
