"""Image transforms: any raw image -> the float tensor a vision tower expects.

:class:`EvalImageTransform` (resize the shorter side + center crop) is what evaluation and the
analysis apply; :class:`TrainImageTransform` (random resized crop) is open_clip's training
transform. Both first bring every PIL mode to RGB with :func:`to_rgb`, so one grayscale, palette
or CMYK file in a folder of JPEGs neither crashes a worker nor reaches the model as 1 or 4 channels.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from common.errors import UserError

# OpenAI CLIP's normalisation (open_clip's OPENAI_DATASET_MEAN / _STD), for pixels scaled to [0, 1].
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode -> an RGB image.

    ``convert("RGB")`` alone gets two kinds wrong: 16-bit grayscale ("I;16", 16-bit PNGs; "I" when
    its values pass 255) is clipped at 255, which turns most of the picture white, so it is
    rescaled from 0..65535 first; and a palette image with a transparent colour warns on every call, so it goes through
    RGBA. Alpha is dropped (as open_clip's ``_convert_to_rgb`` does), not composited.
    """
    if image.mode == "RGB":
        return image
    if image.mode.startswith("I"):  # I;16, I;16B, I;16L, I;16N (16-bit) and I (32-bit)
        pixels = np.asarray(image, dtype=np.float64)
        if image.mode != "I" or pixels.max(initial=0) > 255:  # "I" may also hold 8-bit values
            pixels = pixels / 257.0
        image = Image.fromarray(np.clip(np.round(pixels), 0, 255).astype(np.uint8))  # 2-D uint8: mode L
    elif image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    return image.convert("RGB")


def normalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 [..., 3, H, W] -> float32 scaled to [0, 1] and normalised per channel."""
    return TF.normalize(images.float() / 255.0, list(mean), list(std))


def _as_uint8_tensor(image: Image.Image | torch.Tensor) -> torch.Tensor:
    tensor = TF.pil_to_tensor(to_rgb(image)) if isinstance(image, Image.Image) else image
    if tensor.dtype != torch.uint8 or tensor.ndim != 3 or tensor.shape[0] != 3:
        raise TypeError(f"expected a PIL image or a uint8 [3, H, W] tensor, got {tensor.dtype} {tuple(tensor.shape)}")
    return tensor


class EvalImageTransform:
    """Resize the shorter side to ``image_size`` (bicubic, antialiased), center-crop a square,
    scale to [0, 1] and normalise per channel.

    Accepts a PIL image of any mode (converted with :func:`to_rgb`) or a uint8 [3, H, W] tensor;
    a tensor already at the size is only normalised, so ShapesWorld renders reach the model
    exactly as in training.
    """

    def __init__(self, image_size: int, mean: Sequence[float], std: Sequence[float]) -> None:
        self.image_size, self.mean, self.std = image_size, list(mean), list(std)

    def __call__(self, image: Image.Image | torch.Tensor) -> torch.Tensor:
        return self.normalize(self.pixels(image))

    def pixels(self, image: Image.Image | torch.Tensor) -> torch.Tensor:
        """The image resized and center-cropped, still uint8 [3, S, S] (what view augmentations take)."""
        pixels = _as_uint8_tensor(image)
        if tuple(pixels.shape[1:]) != (self.image_size, self.image_size):
            pixels = TF.resize(pixels, self.image_size, interpolation=v2.InterpolationMode.BICUBIC, antialias=True)
            pixels = TF.center_crop(pixels, self.image_size)
        return pixels

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 [..., 3, H, W] at the right size -> normalised float32 (batches in one op)."""
        return normalize(images, self.mean, self.std)

    def __repr__(self) -> str:
        return f"EvalImageTransform(image_size={self.image_size}, mean={self.mean}, std={self.std})"


def check_crop_scale(scale: object, name: str) -> tuple[float, float]:
    """A RandomResizedCrop area range (low, high) with 0 < low <= high <= 1, or a one-line UserError
    naming ``name`` (the config key), the allowed range and the value."""
    values = tuple(scale) if isinstance(scale, (list, tuple)) else (scale,)
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    if len(values) != 2 or not numbers or not 0 < values[0] <= values[1] <= 1:
        raise UserError(f"{name} must be two area fractions [low, high] with 0 < low <= high <= 1, got {scale!r}")
    return float(values[0]), float(values[1])


class TrainImageTransform:
    """open_clip's training transform (``image_transform(is_train=True)`` without extra
    augmentation): a random crop of ``scale`` of the area and aspect ratio 3/4..4/3, resized to
    ``image_size`` (bicubic, antialiased), then scaled and normalised like the eval transform.

    The default scale (0.9, 1.0) keeps nearly the whole image: captions describe the whole picture,
    and a small crop would cut out what they mention. The crop draws from torch's global generator,
    which Lightning seeds per DataLoader worker.

    Not a subclass of :class:`EvalImageTransform`: code that shortcuts at-size tensors of an eval
    transform (``analysis.embed``) must not skip this one's crop.
    """

    def __init__(
        self, image_size: int, mean: Sequence[float], std: Sequence[float], scale: Sequence[float] = (0.9, 1.0)
    ) -> None:
        self.image_size, self.mean, self.std, self.scale = image_size, list(mean), list(std), tuple(scale)
        self.crop = v2.RandomResizedCrop(
            image_size, scale=self.scale, interpolation=v2.InterpolationMode.BICUBIC, antialias=True
        )

    def __call__(self, image: Image.Image | torch.Tensor) -> torch.Tensor:
        if isinstance(image, Image.Image):  # crop the PIL image: fewer pixels to convert
            image = to_rgb(image)
        return normalize(_as_uint8_tensor(self.crop(image)), self.mean, self.std)

    def __repr__(self) -> str:
        return (
            f"TrainImageTransform(image_size={self.image_size}, mean={self.mean}, std={self.std}, scale={self.scale})"
        )
