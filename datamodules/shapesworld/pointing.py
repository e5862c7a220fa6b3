"""The pointing game's data: multi-object scenes, a query naming one object, and where it is.

Each item is a scene of 2..``max_objects`` objects (seen colour-shape combinations) and a target
whose shape occurs once in the scene, so both queries name exactly one object:

    query        "a red circle"   (article, canonical colour word, canonical shape word)
    shape_query  "a circle"       (the shape word alone)

The target's extent is the bounding box of the pixels it paints, found by rendering it alone
(ShapesWorld draws without anti-aliasing on black, and objects never overlap).
"""

from __future__ import annotations

import random

import torch
from torch.utils.data import Dataset

from common.errors import UserError
from datamodules.shapesworld import captions as lang
from datamodules.shapesworld.world import Scene, Thing, render, sample_scene, scene_rng


def sample_pointing(rng: random.Random, image_size: int, max_objects: int) -> tuple[Scene, Thing]:
    """A scene of 2..max_objects objects and a target whose shape is unique in it."""
    while True:
        scene = sample_scene(rng, image_size, rng.randint(2, max_objects))
        shapes = [t.shape for t in scene.objects]
        unique = [t for t in scene.objects if shapes.count(t.shape) == 1]
        if unique:
            return scene, rng.choice(unique)


def extent(thing: Thing, image_size: int) -> tuple[int, int, int, int]:
    """(top, left, bottom, right), bottom/right exclusive: the box of the pixels ``thing`` paints."""
    painted = render(Scene((thing,)), image_size).amax(dim=0) > 0
    rows, cols = painted.any(dim=1).nonzero().flatten(), painted.any(dim=0).nonzero().flatten()
    return int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1


class PointingScenes(Dataset):
    """Pointing-game items: {"image": uint8 [3, H, W], "query": str, "shape_query": str,
    "words": {"color": str, "shape": str}, "box": int64 [4] (top, left, bottom, right), "index": int}.
    ``scene(index)`` returns the scene record and its target."""

    def __init__(self, seed: int = 0, length: int = 500, image_size: int = 64, max_objects: int = 3) -> None:
        if max_objects < 2:
            raise UserError(f"the pointing game needs scenes of 2 or more objects, got max_objects={max_objects}")
        self.seed, self.length, self.image_size, self.max_objects = seed, length, image_size, min(max_objects, 9)

    def __len__(self) -> int:
        return self.length

    def scene(self, index: int) -> tuple[Scene, Thing]:
        if not 0 <= index < self.length:
            raise IndexError(index)
        return sample_pointing(scene_rng(self.seed, "explain/pointing", index), self.image_size, self.max_objects)

    def __getitem__(self, index: int) -> dict:
        scene, target = self.scene(index)
        color, shape = lang.COLOR_WORDS[target.color][0], lang.SHAPE_WORDS[target.shape][0][0]
        return {
            "image": render(scene, self.image_size),
            "query": lang.article(f"{color} {shape}"),
            "shape_query": lang.article(shape),
            "words": {"color": color, "shape": shape},
            "box": torch.tensor(extent(target, self.image_size)),
            "index": index,
        }
