"""Grounded probe suites: an image, one true caption and false captions that differ from it in
one controlled way, for the analysis's image-caption selection probes.

    attribute_binding  "a red circle and a blue square" vs "a blue circle and a red square"
    relation_order     "a red circle left of a blue square" vs "a blue square left of a red circle"
    negation           "there is no star" (absent) vs "there is no circle" (present)
    counting           "two objects" vs "one object", "three objects"

Captions use canonical words; scenes use seen combinations, from their own seed stream.
"""

from __future__ import annotations

import random

from torch.utils.data import Dataset

from datamodules.shapesworld import captions as lang
from datamodules.shapesworld.world import SEEN, SHAPES, Scene, render, sample_scene, scene_rng
from variants.errors import UserError

PROBES = ("attribute_binding", "relation_order", "negation", "counting")


def _distinct_pair(rng: random.Random, image_size: int) -> Scene:
    """Two objects differing in color and in shape (so both swaps change the meaning)."""
    while True:
        scene = sample_scene(rng, image_size, 2)
        a, b = scene.objects
        if a.color != b.color and a.shape != b.shape:
            return scene


def sample_probe(kind: str, rng: random.Random, image_size: int) -> tuple[Scene, str, list[str]]:
    """(scene, true caption, false captions) of one probe item."""
    if kind == "attribute_binding":
        scene = _distinct_pair(rng, image_size)
        a, b = scene.objects
        return scene, f"a {a.color} {a.shape} and a {b.color} {b.shape}", [f"a {b.color} {a.shape} and a {a.color} {b.shape}"]
    if kind == "relation_order":
        scene = _distinct_pair(rng, image_size)
        a, b = scene.objects
        rel = rng.choice(lang.relation(a, b))  # distinct cells: some relation always holds
        phrase = lang.RELATIONS[rel][0]
        first, second = lang.article(f"{a.color} {a.shape}"), lang.article(f"{b.color} {b.shape}")
        return scene, f"{first} {phrase} {second}", [f"{second} {phrase} {first}"]
    if kind == "negation":
        scene = sample_scene(rng, image_size, rng.randint(1, 2))
        present = sorted({t.shape for t in scene.objects})
        absent = rng.choice([s for s in SHAPES if s not in present])
        return scene, f"there is no {absent}", [f"there is no {rng.choice(present)}"]
    if kind == "counting":
        n = rng.randint(1, 3)
        scene = sample_scene(rng, image_size, n, SEEN)
        return scene, lang.count_phrase(n), [lang.count_phrase(m) for m in (1, 2, 3) if m != n]
    raise UserError(f"unknown ShapesWorld probe {kind!r}; known: {', '.join(PROBES)}")


class ProbeScenes(Dataset):
    """One probe suite as data: {"image": uint8 [3, H, W], "positive": str, "negatives":
    list[str], "index": int}; ``sample(index)`` also returns the scene record."""

    def __init__(self, kind: str, seed: int = 0, length: int = 500, image_size: int = 64) -> None:
        if kind not in PROBES:
            raise UserError(f"unknown ShapesWorld probe {kind!r}; known: {', '.join(PROBES)}")
        self.kind, self.seed, self.length, self.image_size = kind, seed, length, image_size

    def __len__(self) -> int:
        return self.length

    def sample(self, index: int) -> tuple[Scene, str, list[str]]:
        if not 0 <= index < self.length:
            raise IndexError(index)
        return sample_probe(self.kind, scene_rng(self.seed, f"probe/{self.kind}", index), self.image_size)

    def __getitem__(self, index: int) -> dict:
        scene, positive, negatives = self.sample(index)
        return {"image": render(scene, self.image_size), "positive": positive, "negatives": negatives, "index": index}
