"""Grounded probe suites: an image, one true caption and false captions that differ from it in
one controlled way, for the analysis's image-caption selection probes.

    attribute_binding  "a red circle and a blue square" vs "a blue circle and a red square"
    relation_order     "a red circle left of a blue square" vs "a blue square left of a red circle"
    negation           "there is no star" (absent) vs "there is no circle" (present)
    counting           "two objects" vs "one object", "three objects"

Captions use canonical words; scenes use seen combinations, from their own seed stream. In
Chinese (``language="zh"``) the same items, scene for scene, carry the Chinese captions
("一个红色圆形和一个蓝色正方形", "一个红色圆形在一个蓝色正方形的左边", "图中没有星形", "两个物体").
"""

from __future__ import annotations

import random

from torch.utils.data import Dataset

from common.errors import UserError
from datamodules.shapesworld import captions as lang
from datamodules.shapesworld import captions_zh as zh
from datamodules.shapesworld.world import SEEN, SHAPES, Scene, render, sample_scene, scene_rng

PROBES = ("attribute_binding", "relation_order", "negation", "counting")


def _distinct_pair(rng: random.Random, image_size: int) -> Scene:
    """Two objects differing in color and in shape (so both swaps change the meaning)."""
    while True:
        scene = sample_scene(rng, image_size, 2)
        a, b = scene.objects
        if a.color != b.color and a.shape != b.shape:
            return scene


def sample_probe(kind: str, rng: random.Random, image_size: int, language: str = "en") -> tuple[Scene, str, list[str]]:
    """(scene, true caption, false captions) of one probe item, in "en" or "zh" (the scene and
    every random draw are the same in both)."""
    if language == "zh":
        return _sample_probe_zh(kind, rng, image_size)
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


def _sample_probe_zh(kind: str, rng: random.Random, image_size: int) -> tuple[Scene, str, list[str]]:
    """``sample_probe`` in Chinese: the same draws in the same order, so the same scenes."""
    if kind == "attribute_binding":
        scene = _distinct_pair(rng, image_size)
        a, b = scene.objects
        return (
            scene,
            zh.binding_caption((a.color, a.shape), (b.color, b.shape)),
            [zh.binding_caption((b.color, a.shape), (a.color, b.shape))],
        )
    if kind == "relation_order":
        scene = _distinct_pair(rng, image_size)
        a, b = scene.objects
        rel = rng.choice(lang.relation(a, b))
        first, second = (a.color, a.shape), (b.color, b.shape)
        return scene, zh.relation_caption(first, rel, second), [zh.relation_caption(second, rel, first)]
    if kind == "negation":
        scene = sample_scene(rng, image_size, rng.randint(1, 2))
        present = sorted({t.shape for t in scene.objects})
        absent = rng.choice([s for s in SHAPES if s not in present])
        return scene, zh.negation_caption(absent), [zh.negation_caption(rng.choice(present))]
    if kind == "counting":
        n = rng.randint(1, 3)
        scene = sample_scene(rng, image_size, n, SEEN)
        return scene, zh.count_phrase(n), [zh.count_phrase(m) for m in (1, 2, 3) if m != n]
    raise UserError(f"unknown ShapesWorld probe {kind!r}; known: {', '.join(PROBES)}")


class ProbeScenes(Dataset):
    """One probe suite as data: {"image": uint8 [3, H, W], "positive": str, "negatives":
    list[str], "index": int}; ``sample(index)`` also returns the scene record. ``language`` "zh"
    gives the Chinese captions of the same scenes."""

    def __init__(self, kind: str, seed: int = 0, length: int = 500, image_size: int = 64, language: str = "en") -> None:
        if kind not in PROBES:
            raise UserError(f"unknown ShapesWorld probe {kind!r}; known: {', '.join(PROBES)}")
        if language not in ("en", "zh"):
            raise UserError(f"ShapesWorld probes are in 'en' or 'zh', got {language!r}")
        self.kind, self.seed, self.length, self.image_size = kind, seed, length, image_size
        self.language = language

    def __len__(self) -> int:
        return self.length

    def sample(self, index: int) -> tuple[Scene, str, list[str]]:
        if not 0 <= index < self.length:
            raise IndexError(index)
        rng = scene_rng(self.seed, f"probe/{self.kind}", index)
        return sample_probe(self.kind, rng, self.image_size, self.language)

    def __getitem__(self, index: int) -> dict:
        scene, positive, negatives = self.sample(index)
        return {"image": render(scene, self.image_size), "positive": positive, "negatives": negatives, "index": index}


def text_pairs_zh() -> dict[str, list[tuple[str, str]]]:
    """``text_pairs`` in Chinese: synonym ("一个红色圆形" / "一个红色圆盘"), antonym ("一个红色的大圆形"
    / "一个红色的小圆形", 左边 / 右边), negation ("图中有圆形" / "图中没有圆形"), different (one
    attribute changed)."""
    pairs: dict[str, list[tuple[str, str]]] = {"synonym": [], "antonym": [], "negation": [], "different": []}
    colors, shapes = list(zh.COLOR_WORDS), list(zh.SHAPE_WORDS)
    for i, (shape, forms) in enumerate(zh.SHAPE_WORDS.items()):
        color = zh.color_name(colors[i % len(colors)])
        pairs["synonym"] += [(f"一个{color}{forms[0]}", f"一个{color}{synonym}") for synonym in forms[1:]]
        pairs["antonym"].append((f"一个{color}的大{forms[0]}", f"一个{color}的小{forms[0]}"))
        pairs["negation"].append((f"图中有{forms[0]}", zh.negation_caption(shape)))
        other = zh.shape_name(shapes[(i + 1) % len(shapes)])
        pairs["different"].append((f"一个{color}{forms[0]}", f"一个{color}{other}"))
    for i, words in enumerate(zh.COLOR_WORDS.values()):
        shape = zh.shape_name(shapes[i % len(shapes)])
        pairs["synonym"] += [(f"一个{words[0]}{shape}", f"一个{synonym}{shape}") for synonym in words[1:]]
        other = zh.color_name(colors[(i + 1) % len(colors)])
        pairs["different"].append((f"一个{words[0]}{shape}", f"一个{other}{shape}"))
    for words in zh.SIZE_WORDS.values():
        pairs["synonym"] += [(f"一个{words[1]}正方形", f"一个{word}正方形") for word in words[2:]]
    for a, b in (("left", "right"), ("above", "below")):
        pairs["antonym"].append(
            (zh.relation_caption(("red", "circle"), a, ("blue", "square")),
             zh.relation_caption(("red", "circle"), b, ("blue", "square")))
        )  # fmt: skip
    return pairs


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
