"""ShapesWorld's scenes: what exists (shapes, colors, sizes, a 3x3 grid of places) and how a
scene is sampled and drawn.

A scene is a pure function of (seed, stream, index): ``random.Random`` seeded with a string
draws the same numbers on every machine and in every worker, and PIL draws without
anti-aliasing, so every object is painted in exactly its color.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "diamond", "star", "cross", "ring", "semicircle")
COLORS = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (50, 90, 230),
    "yellow": (235, 215, 40),
    "purple": (150, 60, 200),
    "orange": (245, 140, 30),
    "cyan": (40, 210, 220),
    "white": (240, 240, 240),
}
SIZES = ("small", "big")
BACKGROUND = (0, 0, 0)
GRID = 3  # objects sit in distinct cells of a GRID x GRID layout, so they never overlap

# (color, shape) pairs that no training image or caption ever shows: one per color and one per
# shape, so compositional zero-shot tests every attribute once.
HELD_OUT = frozenset((color, SHAPES[(3 * i + 1) % len(SHAPES)]) for i, color in enumerate(COLORS))
SEEN = tuple((c, s) for c in COLORS for s in SHAPES if (c, s) not in HELD_OUT)
UNSEEN = tuple((c, s) for c in COLORS for s in SHAPES if (c, s) in HELD_OUT)

_RADIUS = {"small": 0.26, "big": 0.42}  # half-extent as a fraction of a cell


@dataclass(frozen=True)
class Thing:
    """One object: attributes, grid cell (row 0 = top, col 0 = left) and pixel geometry."""

    shape: str
    color: str
    size: str
    row: int
    col: int
    x: float
    y: float
    radius: float


@dataclass(frozen=True)
class Scene:
    objects: tuple[Thing, ...]


def scene_rng(seed: int, stream: str, index: int) -> random.Random:
    """The generator of sample ``index`` of ``stream`` (string seeds hash the same everywhere)."""
    return random.Random(f"shapesworld/{seed}/{stream}/{index}")


def sample_scene(
    rng: random.Random,
    image_size: int,
    n_objects: int,
    combos: tuple[tuple[str, str], ...] = SEEN,
) -> Scene:
    """``n_objects`` objects in distinct cells, each a (color, shape) drawn from ``combos``."""
    cell = image_size / GRID
    things = []
    for place in rng.sample(range(GRID * GRID), n_objects):
        row, col = divmod(place, GRID)
        color, shape = rng.choice(combos)
        size = rng.choice(SIZES)
        radius = _RADIUS[size] * cell
        slack = max(0.0, cell / 2 - radius - 1)
        x = (col + 0.5) * cell + rng.uniform(-slack, slack)
        y = (row + 0.5) * cell + rng.uniform(-slack, slack)
        things.append(Thing(shape, color, size, row, col, x, y, radius))
    return Scene(tuple(things))


def render(scene: Scene, image_size: int) -> torch.Tensor:
    """The scene as a uint8 tensor [3, H, W]."""
    image = Image.new("RGB", (image_size, image_size), BACKGROUND)
    draw = ImageDraw.Draw(image)
    for thing in scene.objects:
        _draw(draw, thing)
    return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)


def _polygon(x: float, y: float, radii: list[float], start_deg: float) -> list[tuple[float, float]]:
    step = 2 * math.pi / len(radii)
    start = math.radians(start_deg)
    return [(x + r * math.cos(start + k * step), y + r * math.sin(start + k * step)) for k, r in enumerate(radii)]


def _draw(draw: ImageDraw.ImageDraw, t: Thing) -> None:
    x, y, r, fill = t.x, t.y, t.radius, COLORS[t.color]
    box = (x - r, y - r, x + r, y + r)
    if t.shape == "circle":
        draw.ellipse(box, fill=fill)
    elif t.shape == "square":
        s = 0.85 * r
        draw.rectangle((x - s, y - s, x + s, y + s), fill=fill)
    elif t.shape == "triangle":
        draw.polygon(_polygon(x, y + 0.2 * r, [1.1 * r] * 3, -90), fill=fill)
    elif t.shape == "diamond":
        draw.polygon([(x, y - r), (x + 0.7 * r, y), (x, y + r), (x - 0.7 * r, y)], fill=fill)
    elif t.shape == "star":
        draw.polygon(_polygon(x, y, [r, 0.45 * r] * 5, -90), fill=fill)
    elif t.shape == "cross":
        w = 0.34 * r
        draw.rectangle((x - r, y - w, x + r, y + w), fill=fill)
        draw.rectangle((x - w, y - r, x + w, y + r), fill=fill)
    elif t.shape == "ring":
        draw.ellipse(box, outline=fill, width=max(2, round(0.4 * r)))
    elif t.shape == "semicircle":  # the upper half of a disk, flat side down
        draw.pieslice((x - r, y - 0.5 * r, x + r, y + 1.5 * r), 180, 360, fill=fill)
    else:
        raise ValueError(f"no drawing for shape {t.shape!r}")
