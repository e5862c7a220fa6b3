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

from common.errors import UserError
from datamodules.shapesworld import captions as lang
from datamodules.shapesworld.world import SEEN, SHAPES, Scene, render, sample_scene, scene_rng

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
        return (
            scene,
            f"a {a.color} {a.shape} and a {b.color} {b.shape}",
            [f"a {b.color} {a.shape} and a {a.color} {b.shape}"],
        )
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


def text_pairs() -> dict[str, list[tuple[str, str]]]:
    """Caption pairs in ShapesWorld's vocabulary for the text-only linguistic probes.

    synonym: the same scene in other words ("a red circle" / "a red disk"); antonym: one word
    flipped to its opposite ("a big circle" / "a small circle", "left of" / "right of");
    negation: a statement and its negation; different: one attribute changed to another
    value (the reference distance a real change of meaning should exceed).
    """
    pairs: dict[str, list[tuple[str, str]]] = {"synonym": [], "antonym": [], "negation": [], "different": []}
    colors, shapes = list(lang.COLOR_WORDS), list(lang.SHAPE_WORDS)
    for i, (shape, forms) in enumerate(lang.SHAPE_WORDS.items()):
        color = colors[i % len(colors)]
        for synonym, _ in forms[1:]:
            pairs["synonym"].append((lang.article(f"{color} {shape}"), lang.article(f"{color} {synonym}")))
        pairs["antonym"].append((lang.article(f"big {color} {shape}"), lang.article(f"small {color} {shape}")))
        pairs["negation"].append((f"there is {lang.article(shape)}", f"there is no {shape}"))
        other = shapes[(i + 1) % len(shapes)]
        pairs["different"].append((lang.article(f"{color} {shape}"), lang.article(f"{color} {other}")))
    for i, (color, words) in enumerate(lang.COLOR_WORDS.items()):
        shape = shapes[i % len(shapes)]
        for synonym in words[1:]:
            pairs["synonym"].append((lang.article(f"{color} {shape}"), lang.article(f"{synonym} {shape}")))
        other = colors[(i + 1) % len(colors)]
        pairs["different"].append((lang.article(f"{color} {shape}"), lang.article(f"{other} {shape}")))
    for words in lang.SIZE_WORDS.values():
        pairs["synonym"] += [(f"a {words[0]} square", f"a {word} square") for word in words[1:]]
    for a, b in (("left", "right"), ("above", "below")):
        first, second = lang.RELATIONS[a][0], lang.RELATIONS[b][0]
        pairs["antonym"].append((f"a red circle {first} a blue square", f"a red circle {second} a blue square"))
    return pairs
