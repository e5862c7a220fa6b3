"""Evaluation image transform: any raw image -> the float tensor a vision tower expects."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from PIL import Image
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF


class EvalImageTransform:
    """Resize the shorter side to ``image_size`` (bicubic, antialiased), center-crop a square,
    scale to [0, 1] and normalise per channel.

    Accepts a PIL image of any mode (L, RGBA, P, CMYK, ... are converted to RGB) or a uint8
    [3, H, W] tensor; a tensor already at the size is only normalised, so ShapesWorld renders
    reach the model exactly as in training.
    """

    def __init__(self, image_size: int, mean: Sequence[float], std: Sequence[float]) -> None:
        self.image_size, self.mean, self.std = image_size, list(mean), list(std)

    def __call__(self, image: Image.Image | torch.Tensor) -> torch.Tensor:
        if isinstance(image, Image.Image):
            image = TF.pil_to_tensor(image.convert("RGB"))
        if image.dtype != torch.uint8 or image.ndim != 3 or image.shape[0] != 3:
            raise TypeError(f"expected a PIL image or a uint8 [3, H, W] tensor, got {image.dtype} {tuple(image.shape)}")
        if tuple(image.shape[1:]) != (self.image_size, self.image_size):
            image = TF.resize(image, self.image_size, interpolation=v2.InterpolationMode.BICUBIC, antialias=True)
            image = TF.center_crop(image, self.image_size)
        return self.normalize(image)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 [..., 3, H, W] at the right size -> normalised float32 (batches in one op)."""
        return TF.normalize(images.float() / 255.0, self.mean, self.std)

    def __repr__(self) -> str:
        return f"EvalImageTransform(image_size={self.image_size}, mean={self.mean}, std={self.std})"
