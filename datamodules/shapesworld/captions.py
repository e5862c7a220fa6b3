"""ShapesWorld's language: words for every concept, a caption grammar, zero-shot prompts.

Captions only state what the scene record makes true: the attributes of objects that exist,
relations that hold between their grid cells, and the exact count. Each concept has a
canonical word (used by zero-shot prompts and probes) and synonyms seen in training.
"""

from __future__ import annotations

import random

from datamodules.shapesworld.world import COLORS, GRID, SHAPES, Scene, Thing

SHAPE_WORDS = {  # concept -> (singular, plural) forms; the first is canonical
    "circle": [("circle", "circles"), ("disk", "disks")],
    "square": [("square", "squares"), ("box", "boxes")],
    "triangle": [("triangle", "triangles")],
    "diamond": [("diamond", "diamonds"), ("rhombus", "rhombuses")],
    "star": [("star", "stars")],
    "cross": [("cross", "crosses"), ("plus", "pluses")],
    "ring": [("ring", "rings"), ("donut", "donuts")],
    "semicircle": [("semicircle", "semicircles"), ("half moon", "half moons")],
}
COLOR_WORDS = {
    "red": ["red", "crimson"],
    "green": ["green"],
    "blue": ["blue"],
    "yellow": ["yellow"],
    "purple": ["purple", "violet"],
    "orange": ["orange"],
    "cyan": ["cyan", "aqua"],
    "white": ["white"],
}
SIZE_WORDS = {"small": ["small", "little", "tiny"], "big": ["big", "large"]}
NOUNS = [("object", "objects"), ("shape", "shapes")]  # when the shape is not named
COUNT_WORDS = ("one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
RELATIONS = {  # relation -> phrases; "a X <phrase> a Y"
    "left": ["left of", "to the left of"],
    "right": ["right of", "to the right of"],
    "above": ["above", "over"],
    "below": ["below", "under", "beneath"],
}
PLACES = {  # (row, col) of the 3x3 grid -> phrase after "in the"
    (0, 0): "top left", (0, 1): "top", (0, 2): "top right",
    (1, 0): "left", (1, 1): "center", (1, 2): "right",
    (2, 0): "bottom left", (2, 1): "bottom", (2, 2): "bottom right",
}  # fmt: skip
assert set(SHAPE_WORDS) == set(SHAPES) and set(COLOR_WORDS) == set(COLORS) and len(PLACES) == GRID**2

# Words only the probes use (negation); in the vocabulary so they are never <unk>.
PROBE_WORDS = ("no", "not", "there", "is", "are", "without")
TEMPLATE_WORDS = (",", "a", "an", "and", "of", "the", "in", "picture", "photo", "there", "is", "are",
                  "with", "middle", "total")  # fmt: skip


def relation(a: Thing, b: Thing) -> list[str]:
    """The relations that hold for "a <relation> b" from the grid cells."""
    held = []
    if a.col < b.col:
        held.append("left")
    if a.col > b.col:
        held.append("right")
    if a.row < b.row:
        held.append("above")
    if a.row > b.row:
        held.append("below")
    return held


def article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def noun_phrase(
    thing: Thing, rng: random.Random, *, size_p: float = 0.3, color_p: float = 0.85, shape_p: float = 0.85
) -> str:
    """ "a small red circle", "a crimson object", "a box", ...: at least color or shape is named."""
    say_color, say_shape = rng.random() < color_p, rng.random() < shape_p
    if not (say_color or say_shape):
        say_color, say_shape = rng.choice([(True, False), (False, True)])
    words = []
    if rng.random() < size_p:
        words.append(rng.choice(SIZE_WORDS[thing.size]))
    if say_color:
        words.append(rng.choice(COLOR_WORDS[thing.color]))
    words.append(rng.choice(SHAPE_WORDS[thing.shape])[0] if say_shape else rng.choice(NOUNS)[0])
    return article(" ".join(words))


def caption_kind(n: int, rng: random.Random) -> str:
    """Which kind of caption a scene of ``n`` objects gets (both languages draw it alike): a list,
    a count, the place of a lone object or a relation between two."""
    return rng.choice(["list", "list", "count"] + (["place", "place"] if n == 1 else ["relation"] * 3))


def caption(scene: Scene, rng: random.Random) -> str:
    """One caption of ``scene`` from the grammar (templates x paraphrases x synonyms)."""
    things = list(scene.objects)
    n = len(things)
    kind = caption_kind(n, rng)
    if kind == "place":
        text = f"{noun_phrase(things[0], rng)} in the {PLACES[(things[0].row, things[0].col)]}"
        return text.replace("in the center", rng.choice(["in the center", "in the middle"]))
    if kind == "relation":
        a, b = rng.sample(things, 2)
        rel = rng.choice(relation(a, b))
        return f"{noun_phrase(a, rng)} {rng.choice(RELATIONS[rel])} {noun_phrase(b, rng)}"
    if kind == "count":
        return _count_caption(things, rng)
    rng.shuffle(things)
    phrases = [noun_phrase(t, rng) for t in things]
    listed = phrases[0] if n == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]
    prefix = rng.choice(["", "", "there is ", "a picture of "] if n == 1 else ["", "", "a picture of "])
    return prefix + listed


def _count_caption(things: list[Thing], rng: random.Random) -> str:
    n = len(things)
    count = COUNT_WORDS[n - 1]
    shapes = {t.shape for t in things}
    colors = {t.color for t in things}
    words = []
    if len(colors) == 1 and rng.random() < 0.7:
        words.append(rng.choice(COLOR_WORDS[colors.pop()]))
    if len(shapes) == 1 and rng.random() < 0.7:
        singular, plural = rng.choice(SHAPE_WORDS[shapes.pop()])
    else:
        singular, plural = rng.choice(NOUNS)
    words.append(singular if n == 1 else plural)
    phrase = f"{count} {' '.join(words)}"
    verb = "is" if n == 1 else "are"
    return rng.choice([phrase, f"there {verb} {phrase}", f"a picture of {phrase}"])


def vocabulary() -> list[str]:
    """Every word captions, prompts and probes can use, in a fixed order."""
    words: list[str] = []
    for forms in SHAPE_WORDS.values():
        for singular, plural in forms:
            words += singular.split() + plural.split()
    for options in (*COLOR_WORDS.values(), *SIZE_WORDS.values(), *RELATIONS.values(), PLACES.values()):
        for phrase in options:
            words += phrase.split()
    words += [w for pair in NOUNS for w in pair] + list(COUNT_WORDS) + list(PROBE_WORDS) + list(TEMPLATE_WORDS)
    return list(dict.fromkeys(words))


def synonyms() -> dict[str, list[str]]:
    """The caption language's single-word synonyms, for EDA text views (``augment.TextViews``): a
    word maps to the other words of its concept, so a replacement keeps the caption true. Shape
    words keep their number (singular with singular, plural with plural); relation synonyms are
    the one-word phrases (above/over, below/under/beneath); "center"/"middle" are the grammar's
    two words for the middle cell; multi-word forms ("half moon", "left of") are left out."""
    groups: list[list[str]] = [*COLOR_WORDS.values(), *SIZE_WORDS.values(), ["center", "middle"]]
    for forms in [*SHAPE_WORDS.values(), NOUNS]:
        groups += [[singular for singular, _ in forms], [plural for _, plural in forms]]
    groups += list(RELATIONS.values())
    table: dict[str, list[str]] = {}
    for group in groups:
        single = [word for word in group if " " not in word]
        for word in single:
            if len(single) > 1:
                table[word] = [other for other in single if other != word]
    return table


def protected_words() -> list[str]:
    """Words EDA's deletion must keep for a caption to stay true (``augment.TextViews``'s
    ``protected``): place words (deleting "left" from "in the top left" names another, false place),
    every shape noun and "object"/"shape" (deleting a noun leaves "a red and a blue square", read
    as two squares), and negations (no training caption has one; a probe-like caption would flip)."""
    places = [word for phrase in PLACES.values() for word in phrase.split()] + ["middle"]
    nouns = [w for forms in SHAPE_WORDS.values() for pair in forms for form in pair for w in form.split()]
    nouns += [word for pair in NOUNS for word in pair]
    return list(dict.fromkeys([*places, *nouns, "no", "not", "without"]))


# ---- zero-shot prompts (canonical words; each a list of templates over class phrases) ----
OBJECT_TEMPLATES = ("a {}", "there is a {}", "a picture of a {}")
COLOR_TEMPLATES = ("a {} object", "a {} shape", "there is a {} object")
COUNT_TEMPLATES = ("{}", "a picture of {}")


def fill(templates: tuple[str, ...], phrase: str) -> list[str]:
    """Templates filled with a class phrase, with "a"/"an" agreeing with the phrase."""
    return [t.format(phrase).replace("a " + phrase, article(phrase)) for t in templates]


def count_phrase(n: int) -> str:
    return f"{COUNT_WORDS[n - 1]} {'object' if n == 1 else 'objects'}"
