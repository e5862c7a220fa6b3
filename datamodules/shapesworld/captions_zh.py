"""ShapesWorld's language in Chinese: words for every concept, a caption grammar, zero-shot prompts
and the probe captions, for the same scene records as ``captions.py``.

The grammar mirrors the English one (lists, counts, places of a single object, relations between
two objects) and obeys the same rule: a caption only states what the scene record makes true
(attributes of objects that exist, relations that hold between their grid cells from
``captions.relation``, the exact count). Each concept has a canonical word (the first of its
list), used by zero-shot prompts and probes; the others are synonyms seen in training.

Chinese has no articles or plurals: an object is introduced by a numeral and a measure word
("一个", "一颗" for stars drawn as 星星/五角星), and a count is the numeral itself ("两个红色的圆形").
No word of one concept is a prefix-free part of another concept's word in a way that a
longest-match reading would confuse ("半圆形" is read before "圆形", "圆环" before "圆").
"""

from __future__ import annotations

import random

from datamodules.shapesworld.captions import caption_kind, relation
from datamodules.shapesworld.world import COLORS, GRID, SHAPES, Scene, Thing

SHAPE_WORDS = {  # concept -> forms; the first is canonical
    "circle": ["圆形", "圆", "圆盘"],
    "square": ["正方形", "方块", "方形"],
    "triangle": ["三角形", "三角"],
    "diamond": ["菱形"],
    "star": ["星形", "五角星", "星星"],
    "cross": ["十字形", "十字", "加号"],
    "ring": ["圆环", "环", "环形", "甜甜圈"],
    "semicircle": ["半圆形", "半圆", "半月形"],
}
# A colour ending in 色 stands before a noun with or without 的 ("红色的圆形", "红色圆形"); a bare
# colour ("红") only directly before a shape word ("红方块"), never before 物体/图形.
COLOR_WORDS = {
    "red": ["红色", "红"],
    "green": ["绿色", "绿"],
    "blue": ["蓝色", "蓝"],
    "yellow": ["黄色", "黄"],
    "purple": ["紫色", "紫"],
    "orange": ["橙色", "橘色", "橙"],
    "cyan": ["青色", "青"],
    "white": ["白色", "白"],
}
# One-character sizes go right before the noun ("红色的小圆形"); the others end in 的 and come first
# ("小小的红色圆形").
SIZE_WORDS = {"small": ["小", "小小的", "很小的"], "big": ["大", "大大的", "很大的"]}
NOUNS = ["物体", "图形"]  # when the shape is not named
COUNT_WORDS = ("一", "两", "三", "四", "五", "六", "七", "八", "九")
MEASURES = ("个", "颗")  # 颗 only for stars called 星星 or 五角星 ("一颗星星")
STAR_NOUNS = ("星星", "五角星")
RELATIONS = {  # relation -> words; "A在B的<word>" = "A <relation> B"
    "left": ["左边", "左侧", "左面"],
    "right": ["右边", "右侧", "右面"],
    "above": ["上面", "上方", "上边"],
    "below": ["下面", "下方", "下边"],
}
PLACES = {  # (row, col) of the 3x3 grid -> words for the cell; the first is canonical
    (0, 0): ["左上角", "左上方"], (0, 1): ["上方", "正上方", "上面"], (0, 2): ["右上角", "右上方"],
    (1, 0): ["左边", "左侧"], (1, 1): ["中间", "中央", "正中间"], (1, 2): ["右边", "右侧"],
    (2, 0): ["左下角", "左下方"], (2, 1): ["下方", "正下方", "下面"], (2, 2): ["右下角", "右下方"],
}  # fmt: skip
assert set(SHAPE_WORDS) == set(SHAPES) and set(COLOR_WORDS) == set(COLORS) and len(PLACES) == GRID**2

LIST_SEPARATOR, LIST_LAST = "、", "和"
PICTURE = ("图片", "画面")  # "the picture", in place captions ("在图片的左上角")
# Openings of list and count captions; "一张有{}的图片" wraps the list ("a picture with ...").
LIST_PREFIXES_ONE = ("", "", "有", "这是", "图中有", "画面里有")
LIST_PREFIXES_MANY = ("", "", "图中有", "画面里有")
COUNT_PREFIXES_ONE = ("", "有", "图中有", "画面里有")
COUNT_PREFIXES_MANY = ("", "有", "图中有", "画面里有", "图中一共有", "画面里总共有", "一共")
PROBE_WORDS = ("图中", "没有")  # negation: "图中没有星形"
TEMPLATE_WORDS = ("一张", "的", "图片", "这是", "在", "位于", "有", "图中", "画面", "里", "一共", "总共", "中")


def one(thing: Thing, rng: random.Random, *, size_p: float = 0.3, color_p: float = 0.85, shape_p: float = 0.85) -> str:
    """ "一个红色的小圆形", "一颗黄色的星星", "一个红色物体", ...: numeral, measure word and a
    description naming at least the colour or the shape (``captions.noun_phrase``'s odds)."""
    say_color, say_shape = rng.random() < color_p, rng.random() < shape_p
    if not (say_color or say_shape):
        say_color, say_shape = rng.choice([(True, False), (False, True)])
    size = rng.choice(SIZE_WORDS[thing.size]) if rng.random() < size_p else None
    noun = rng.choice(SHAPE_WORDS[thing.shape]) if say_shape else rng.choice(NOUNS)
    color = None
    if say_color:
        forms = COLOR_WORDS[thing.color]
        # A bare colour only directly before a shape word, so not before 物体 nor with a size.
        color = rng.choice(forms if say_shape and size is None else [f for f in forms if f.endswith("色")])
    measure = "颗" if noun in STAR_NOUNS and rng.random() < 0.5 else "个"
    return f"一{measure}{describe(noun, color, size, rng)}"


def describe(noun: str, color: str | None, size: str | None, rng: random.Random) -> str:
    """The words before a noun in a natural order: "红色的小圆形", "小小的红色圆形", "红方块"."""
    if color is None:
        return (size or "") + noun
    if not color.endswith("色"):
        return color + noun  # bare colours: "红方块"
    if size is None:
        return color + rng.choice(["的", ""]) + noun
    if size.endswith("的"):  # "小小的红色圆形": one 的 is enough
        return size + color + noun
    return color + rng.choice(["的", ""]) + size + noun  # "红色的小圆形", "红色小圆形"


def caption(scene: Scene, rng: random.Random) -> str:
    """One Chinese caption of ``scene`` (same kinds and odds as ``captions.caption``)."""
    things = list(scene.objects)
    n = len(things)
    kind = caption_kind(n, rng)
    if kind == "place":
        thing = things[0]
        phrase, place = one(thing, rng), rng.choice(PLACES[(thing.row, thing.col)])
        picture = rng.choice(PICTURE)
        return rng.choice(
            [f"{phrase}在{place}", f"{phrase}在{picture}的{place}", f"{phrase}位于{picture}的{place}",
             f"{place}有{phrase}", f"{picture}的{place}有{phrase}"]
        )  # fmt: skip
    if kind == "relation":
        a, b = rng.sample(things, 2)
        word = rng.choice(RELATIONS[rng.choice(relation(a, b))])
        first, second = one(a, rng), one(b, rng)
        return rng.choice([f"{first}在{second}的{word}", f"{first}位于{second}的{word}", f"{second}的{word}有{first}"])
    if kind == "count":
        return _count_caption(things, rng)
    rng.shuffle(things)
    phrases = [one(t, rng) for t in things]
    listed = phrases[0] if n == 1 else LIST_SEPARATOR.join(phrases[:-1]) + LIST_LAST + phrases[-1]
    if rng.random() < 0.15:
        return f"一张有{listed}的图片"
    return rng.choice(LIST_PREFIXES_ONE if n == 1 else LIST_PREFIXES_MANY) + listed


def _count_caption(things: list[Thing], rng: random.Random) -> str:
    n = len(things)
    shapes = {t.shape for t in things}
    colors = {t.color for t in things}
    color = None
    if len(colors) == 1 and rng.random() < 0.7:
        color = rng.choice([f for f in COLOR_WORDS[colors.pop()] if f.endswith("色")])
    noun = rng.choice(SHAPE_WORDS[shapes.pop()]) if len(shapes) == 1 and rng.random() < 0.7 else rng.choice(NOUNS)
    measure = "颗" if noun in STAR_NOUNS and rng.random() < 0.5 else "个"
    phrase = f"{COUNT_WORDS[n - 1]}{measure}{describe(noun, color, None, rng)}"
    return rng.choice(COUNT_PREFIXES_ONE if n == 1 else COUNT_PREFIXES_MANY) + phrase


def vocabulary() -> list[str]:
    """Every word captions, prompts and probes can use, in a fixed order (for a WordPiece
    vocabulary built from words: each CJK character is its own token, so what matters is that
    every character of these words is in it)."""
    words: list[str] = []
    for options in (*SHAPE_WORDS.values(), *COLOR_WORDS.values(), *SIZE_WORDS.values(), NOUNS, *RELATIONS.values(),
                    *PLACES.values()):  # fmt: skip
        words += options
    words += [f"{n}{m}" for n in COUNT_WORDS for m in MEASURES] + list(COUNT_WORDS) + list(MEASURES)
    words += [LIST_SEPARATOR, LIST_LAST, *PICTURE, *LIST_PREFIXES_ONE, *LIST_PREFIXES_MANY, *COUNT_PREFIXES_MANY]
    words += [*PROBE_WORDS, *TEMPLATE_WORDS]
    return list(dict.fromkeys(w for w in words if w))


# ---- zero-shot prompts and probes (canonical words) --------------------------------------
OBJECT_TEMPLATES = ("一个{}", "这是一个{}", "一张{}的图片")
COLOR_TEMPLATES = ("一个{}的物体", "一个{}的图形", "图中有一个{}的物体")
COUNT_TEMPLATES = ("{}", "图中有{}")


def fill(templates: tuple[str, ...], phrase: str) -> list[str]:
    """Templates filled with a class phrase (Chinese needs no agreement)."""
    return [t.format(phrase) for t in templates]


def shape_name(shape: str) -> str:
    return SHAPE_WORDS[shape][0]


def color_name(color: str) -> str:
    return COLOR_WORDS[color][0]


def color_shape(color: str, shape: str) -> str:
    """ "红色圆形": the canonical colour + shape phrase of prompts and probes."""
    return color_name(color) + shape_name(shape)


def count_phrase(n: int) -> str:
    """ "两个物体" (``captions.count_phrase``'s "two objects")."""
    return f"{COUNT_WORDS[n - 1]}个物体"


def binding_caption(first: tuple[str, str], second: tuple[str, str]) -> str:
    """ "一个红色圆形和一个蓝色正方形" from two (colour, shape) pairs."""
    return f"一个{color_shape(*first)}{LIST_LAST}一个{color_shape(*second)}"


def relation_caption(first: tuple[str, str], rel: str, second: tuple[str, str]) -> str:
    """ "一个红色圆形在一个蓝色正方形的左边": ``first`` <rel> ``second``."""
    return f"一个{color_shape(*first)}在一个{color_shape(*second)}的{RELATIONS[rel][0]}"


def negation_caption(shape: str) -> str:
    """ "图中没有星形" (there is no star)."""
    return f"图中没有{shape_name(shape)}"
