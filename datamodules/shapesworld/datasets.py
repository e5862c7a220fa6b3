"""ShapesWorld as torch datasets: captioned scenes for training and retrieval, labelled scenes
for zero-shot tasks. Every item is a pure function of (seed, stream, index)."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal

from torch.utils.data import Dataset

from common.errors import UserError
from datamodules.augment import SSLViews, TextViews, epoch_seed
from datamodules.sampling import index_and_epoch
from datamodules.shapesworld import captions as lang
from datamodules.shapesworld import captions_zh as zh
from datamodules.shapesworld.world import COLORS, SEEN, SHAPES, UNSEEN, Scene, render, sample_scene, scene_rng

Language = Literal["en", "zh", "both"]
LANGUAGES = ("en", "zh", "both")


def check_language(language: str) -> None:
    if language not in LANGUAGES:
        raise UserError(f"unknown ShapesWorld language {language!r}; known: {', '.join(LANGUAGES)}")


def caption_in(language: str, scene: Scene, rng: random.Random) -> str:
    """A caption of ``scene`` in "en" or "zh" from the scene's generator."""
    return (zh if language == "zh" else lang).caption(scene, rng)


class CaptionedScenes(Dataset):
    """Scenes of ``min_objects``..``max_objects`` seen-combination objects with one caption.

    Items: {"image": uint8 [3, H, W], "caption": str, "index": int} and, with ``views``,
    "views": uint8 [2, 3, H, W]; with ``text_views``, "text_view": str; with ``mask_seeds``,
    "mask_seed": int (the seed ``Collate`` masks the caption's tokens with). The scene record of any
    item is ``dataset.scene(index)``.

    With any of these the dataset ``takes_epoch``: ``ResumableSampler`` then asks for
    ``(index, epoch)`` items and the augmentations are drawn afresh each epoch (a pure function of
    (seed, index, epoch)); epoch 0's image views are those drawn before views varied by epoch. The
    scene, image and caption never depend on the epoch.

    ``language`` is the captions' language: "en", "zh", or "both", where each item's caption is
    in one of the two, chosen by a generator of its own (the stream "<stream>/language"), so the
    choice is the same in every worker and construction and the scene and caption generator
    draws exactly what it draws for "en" or "zh" (an "en" caption of "both" is the "en" dataset's).
    """

    def __init__(
        self,
        seed: int,
        stream: str,
        length: int,
        image_size: int = 64,
        min_objects: int = 1,
        max_objects: int = 3,
        views: SSLViews | None = None,
        text_views: TextViews | None = None,
        mask_seeds: bool = False,
        language: Language = "en",
    ) -> None:
        check_language(language)
        if not 1 <= min_objects <= max_objects <= 9:
            raise UserError(f"ShapesWorld needs 1 <= min_objects <= max_objects <= 9, got {min_objects}, {max_objects}")
        self.seed, self.stream, self.length, self.image_size = seed, stream, length, image_size
        self.min_objects, self.max_objects, self.views = min_objects, max_objects, views
        self.text_views, self.mask_seeds, self.language = text_views, mask_seeds, language
        self.takes_epoch = views is not None or text_views is not None or mask_seeds

    def __len__(self) -> int:
        return self.length

    def scene_and_rng(self, index: int) -> tuple[Scene, random.Random]:
        """The scene of item ``index`` and its generator, in the state its caption starts from."""
        if not 0 <= index < self.length:
            raise IndexError(index)
        rng = scene_rng(self.seed, self.stream, index)
        n = rng.randint(self.min_objects, self.max_objects)
        return sample_scene(rng, self.image_size, n), rng

    def _sample(self, index: int) -> tuple[Scene, str, random.Random]:
        scene, rng = self.scene_and_rng(index)
        return scene, caption_in(self.language_of(index), scene, rng), rng

    def language_of(self, index: int) -> str:
        """The language of item ``index``'s caption ("en" or "zh")."""
        if self.language != "both":
            return self.language
        return "zh" if scene_rng(self.seed, f"{self.stream}/language", index).random() < 0.5 else "en"

    def scene(self, index: int) -> Scene:
        return self._sample(index)[0]

    def caption(self, index: int) -> str:
        """The caption of item ``index``, without rendering its image."""
        return self._sample(index)[1]

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        index, epoch = index_and_epoch(key)
        scene, text, rng = self._sample(index)
        image = render(scene, self.image_size)
        item = {"image": image, "caption": text, "index": index}
        base = rng.getrandbits(63)  # the views' seed since views exist: epoch 0 keeps it
        if self.views is not None:
            item["views"] = self.views(image, seed=epoch_seed(base, epoch, "views"))
        if self.text_views is not None:
            item["text_view"] = self.text_views(text, seed=epoch_seed(base, epoch, "text_view"))
        if self.mask_seeds:
            item["mask_seed"] = epoch_seed(base, epoch, "mask")
        return item


class CrossLingualScenes(Dataset):
    """Scenes, each with an English and a Chinese caption, for cross-lingual retrieval.

    Item ``2 i`` is scene ``i`` with its English caption, item ``2 i + 1`` the same scene with its
    Chinese one: {"image", "caption", "label": the scene ``i``, "target": whether the caption is in
    the target language (Chinese), "index"}. One caption per item lets the evaluation batches stay
    ordinary image-caption batches; the label pairs the captions again. Both captions come from copies
    of the scene's generator (stream ``stream``), each true of the scene; ``pair(i)`` returns
    (scene, English caption, Chinese caption).
    """

    def __init__(
        self, seed: int, stream: str, length: int, image_size: int = 64, min_objects: int = 1, max_objects: int = 3
    ) -> None:
        self.scenes = CaptionedScenes(seed, stream, length, image_size, min_objects, max_objects)
        self.length, self.image_size = length, image_size

    def __len__(self) -> int:
        return 2 * self.length

    def pair(self, index: int) -> tuple[Scene, str, str]:
        scene, rng = self.scenes.scene_and_rng(index)
        state = rng.getstate()
        english = lang.caption(scene, rng)
        rng.setstate(state)
        return scene, english, zh.caption(scene, rng)

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < len(self):
            raise IndexError(index)
        scene, english, chinese = self.pair(index // 2)
        target = bool(index % 2)
        caption = chinese if target else english
        return {"image": render(scene, self.image_size), "caption": caption, "label": index // 2, "target": target,
                "index": index}  # fmt: skip


@dataclass(frozen=True)
class ZeroShotTask:
    """A classification task: class phrases, prompt templates (both in ``language``), and how to
    draw a labelled scene (the class order, hence the labels, is the same in every language)."""

    name: str
    classes: tuple[str, ...]
    templates: tuple[str, ...]
    language: Literal["en", "zh"] = "en"

    def prompts(self) -> list[list[str]]:
        """[class][template] prompt strings."""
        fill = zh.fill if self.language == "zh" else lang.fill
        return [fill(self.templates, phrase) for phrase in self.classes]


ALL_COMBOS = tuple((c, s) for c in COLORS for s in SHAPES)
TASKS = {
    "shape": ZeroShotTask("shape", SHAPES, lang.OBJECT_TEMPLATES),
    "color": ZeroShotTask("color", tuple(COLORS), lang.COLOR_TEMPLATES),
    # Both color+shape tasks choose among all 64 combinations; they differ in the images.
    "color_shape_seen": ZeroShotTask(
        "color_shape_seen", tuple(f"{c} {s}" for c, s in ALL_COMBOS), lang.OBJECT_TEMPLATES
    ),
    "color_shape_heldout": ZeroShotTask(
        "color_shape_heldout", tuple(f"{c} {s}" for c, s in ALL_COMBOS), lang.OBJECT_TEMPLATES
    ),
    "count": ZeroShotTask("count", tuple(lang.count_phrase(n) for n in (1, 2, 3)), lang.COUNT_TEMPLATES),
}
# The same tasks with Chinese prompts (canonical words; the same classes in the same order).
TASKS_ZH = {
    "shape": ZeroShotTask("shape", tuple(map(zh.shape_name, SHAPES)), zh.OBJECT_TEMPLATES, "zh"),
    "color": ZeroShotTask("color", tuple(map(zh.color_name, COLORS)), zh.COLOR_TEMPLATES, "zh"),
    "color_shape_seen": ZeroShotTask(
        "color_shape_seen", tuple(zh.color_shape(c, s) for c, s in ALL_COMBOS), zh.OBJECT_TEMPLATES, "zh"
    ),
    "color_shape_heldout": ZeroShotTask(
        "color_shape_heldout", tuple(zh.color_shape(c, s) for c, s in ALL_COMBOS), zh.OBJECT_TEMPLATES, "zh"
    ),
    "count": ZeroShotTask("count", tuple(zh.count_phrase(n) for n in (1, 2, 3)), zh.COUNT_TEMPLATES, "zh"),
}
assert list(TASKS_ZH) == list(TASKS) and all(len(TASKS_ZH[k].classes) == len(TASKS[k].classes) for k in TASKS)


def tasks_in(language: str) -> list[tuple[str, ZeroShotTask]]:
    """(suffix, task) of the zero-shot tasks of a run in ``language``: the English tasks (no
    suffix) for "en", the Chinese ones (suffix "_zh") for "zh", both for "both"."""
    check_language(language)
    english = [("", task) for task in TASKS.values()] if language in ("en", "both") else []
    return english + ([("_zh", task) for task in TASKS_ZH.values()] if language in ("zh", "both") else [])


class ZeroShotScenes(Dataset):
    """Labelled scenes for one task of :data:`TASKS`; {"image", "label", "index"} items.

    shape / color / color_shape_seen: one object of a seen combination; color_shape_heldout:
    one object of a held-out combination; count: 1..3 seen-combination objects.
    """

    def __init__(self, task: str, seed: int, stream: str, length: int, image_size: int = 64) -> None:
        if task not in TASKS:
            raise UserError(f"unknown ShapesWorld task {task!r}; known: {', '.join(TASKS)}")
        self.task, self.seed, self.stream, self.length = task, seed, f"{stream}/{task}", length
        self.image_size = image_size

    def __len__(self) -> int:
        return self.length

    def sample(self, index: int) -> tuple[Scene, int]:
        rng = scene_rng(self.seed, self.stream, index)
        if self.task == "count":
            n = rng.randint(1, len(TASKS["count"].classes))
            return sample_scene(rng, self.image_size, n), n - 1
        combos = UNSEEN if self.task == "color_shape_heldout" else SEEN
        scene = sample_scene(rng, self.image_size, 1, combos)
        thing = scene.objects[0]
        label = {
            "shape": SHAPES.index(thing.shape),
            "color": list(COLORS).index(thing.color),
        }.get(self.task, ALL_COMBOS.index((thing.color, thing.shape)))
        return scene, label

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self.length:
            raise IndexError(index)
        scene, label = self.sample(index)
        return {"image": render(scene, self.image_size), "label": label, "index": index}
