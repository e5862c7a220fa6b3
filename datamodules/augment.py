"""Two augmented views of an image for self-supervised terms (SLIP's SimCLR branch)."""

from __future__ import annotations

import torch
from torchvision.transforms import v2


class SSLViews:
    """SLIP's SimCLR augmentation (Mu et al. 2021, appendix; SimCLR, Chen et al. 2020):
    RandomResizedCrop(scale 0.08-1), ColorJitter(0.4, 0.4, 0.4, 0.1) with p=0.8, grayscale
    p=0.2, Gaussian blur (sigma 0.1-2) p=0.5, horizontal flip p=0.5.

    Every part is configurable because some fight the captions: on ShapesWorld color jitter
    and grayscale change the color words' truth and a flip swaps "left of" and "right of".

    Views are a pure function of (image, seed), so they are the same in every worker.
    """

    def __init__(
        self,
        crop_scale: tuple[float, float] = (0.08, 1.0),
        color_jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1),
        color_jitter_p: float = 0.8,
        grayscale_p: float = 0.2,
        blur_p: float = 0.5,
        flip_p: float = 0.5,
    ) -> None:
        self.crop_scale, self.color_jitter = tuple(crop_scale), tuple(color_jitter)
        self.color_jitter_p, self.grayscale_p, self.blur_p, self.flip_p = color_jitter_p, grayscale_p, blur_p, flip_p
        self._pipelines: dict[int, v2.Compose] = {}

    def _pipeline(self, size: int) -> v2.Compose:
        if size not in self._pipelines:
            kernel = max(3, int(0.1 * size) // 2 * 2 + 1)  # ~10% of the side, odd (SimCLR)
            self._pipelines[size] = v2.Compose([
                v2.RandomResizedCrop(size, scale=self.crop_scale, antialias=True),
                v2.RandomApply([v2.ColorJitter(*self.color_jitter)], p=self.color_jitter_p),
                v2.RandomGrayscale(p=self.grayscale_p),
                v2.RandomApply([v2.GaussianBlur(kernel, sigma=(0.1, 2.0))], p=self.blur_p),
                v2.RandomHorizontalFlip(p=self.flip_p),
            ])  # fmt: skip
        return self._pipelines[size]

    def __call__(self, image: torch.Tensor, seed: int) -> torch.Tensor:
        """uint8 [3, H, W] -> two views, uint8 [2, 3, H, W]."""
        pipeline = self._pipeline(image.shape[-1])
        with torch.random.fork_rng(devices=[]):  # the CPU generator only; CUDA's is untouched
            torch.default_generator.manual_seed(seed)
            return torch.stack([pipeline(image), pipeline(image)])
