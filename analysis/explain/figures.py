"""Overlays: the image, each method's heat map over it, the target's box, and the caption's words
shaded by their leave-one-word-out importance."""

from __future__ import annotations

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

TITLES = {"gradcam": "Grad-CAM", "relevance": "relevance (Chefer)", "alignment": "word-patch alignment"}


def _show(
    ax, image: torch.Tensor, heat: torch.Tensor | None, box: tuple[int, int, int, int] | None, title: str
) -> None:
    ax.imshow(image.permute(1, 2, 0).numpy())
    if heat is not None:
        values = heat.float().numpy()
        span = float(values.max() - values.min())
        ax.imshow((values - values.min()) / span if span > 0 else np.zeros_like(values), cmap="jet", alpha=0.5,
                  vmin=0, vmax=1)  # fmt: skip
        if span > 0:  # a flat map has no maximum to mark
            peak = np.unravel_index(int(values.argmax()), values.shape)
            ax.plot(peak[1], peak[0], marker="x", color="white", markersize=8, mew=2)
    if box is not None:
        top, left, bottom, right = box
        ax.add_patch(
            Rectangle((left - 0.5, top - 0.5), right - left, bottom - top, fill=False, edgecolor="lime", lw=1.5)
        )
    ax.set_title(title, fontsize=8)
    ax.set_axis_off()


def _words(ax, importance: list[tuple[str, float]]) -> None:
    """Each word in a cell shaded by its importance (red: the logit falls without it, blue: rises)."""
    values = np.array([[value for _, value in importance]])
    bound = float(np.abs(values).max()) or 1.0
    ax.imshow(values, cmap="RdBu_r", vmin=-bound, vmax=bound, aspect="auto")
    for k, (word, value) in enumerate(importance):
        dark = abs(value) > 0.6 * bound
        ax.text(k, 0, f"{word}\n{value:+.2f}", ha="center", va="center", fontsize=8, color="white" if dark else "black")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title("leave-one-word-out: logit(caption) - logit(without the word)", fontsize=7)


def pair_figure(
    image: torch.Tensor,
    maps: dict[str, torch.Tensor],
    caption: str,
    importance: list[tuple[str, float]] | None = None,
    box: tuple[int, int, int, int] | None = None,
) -> Figure:
    """One image-caption pair: the image, one overlay per method (x: the map's maximum; green box:
    the named object), and the words shaded by importance beneath."""
    columns = 1 + len(maps)
    figure = Figure(figsize=(2.2 * columns, 3.2 if importance else 2.4))
    grid = figure.add_gridspec(2 if importance else 1, columns, height_ratios=[4, 1] if importance else [1])
    _show(figure.add_subplot(grid[0, 0]), image, None, box, "image")
    for k, (method, heat) in enumerate(maps.items()):
        _show(figure.add_subplot(grid[0, k + 1]), image, heat, box, TITLES.get(method, method))
    if importance:
        _words(figure.add_subplot(grid[1, :]), importance)
    figure.suptitle(repr(caption), fontsize=9)
    figure.tight_layout()
    return figure


def examples_figure(examples: list[dict], methods: list[str], title: str) -> Figure:
    """A grid: one row per pointing-game item (image with the named object's box, then each method's map)."""
    rows, columns = len(examples), 1 + len(methods)
    figure = Figure(figsize=(1.8 * columns, 1.9 * max(rows, 1)))
    for r, example in enumerate(examples):
        ax = figure.add_subplot(rows, columns, r * columns + 1)
        _show(ax, example["image"], None, example["box"], example["query"])
        for c, method in enumerate(methods):
            ax = figure.add_subplot(rows, columns, r * columns + c + 2)
            _show(
                ax,
                example["image"],
                example["maps"].get(method),
                example["box"],
                TITLES.get(method, method) if r == 0 else "",
            )
    figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    return figure
