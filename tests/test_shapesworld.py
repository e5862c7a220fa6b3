"""ShapesWorld: determinism, held-out combinations, captions true to the scene and pixels."""

from __future__ import annotations

import itertools
import re

import pytest
import torch
from torch.utils.data import DataLoader

from common.errors import UserError
from datamodules.augment import TextViews
from datamodules.shapesworld import HELD_OUT, CaptionedScenes, ShapesWorldDataModule, ZeroShotScenes
from datamodules.shapesworld import captions as lang
from datamodules.shapesworld.world import BACKGROUND, COLORS, Scene
from datamodules.tokenizer import WordTokenizer

N_CHECK = 3000  # samples inspected by the statistical checks


def _batches(datamodule: ShapesWorldDataModule, workers: int) -> list[dict]:
    datamodule.hparams.num_workers = workers
    loader = datamodule._loader(datamodule.train_set, 16, train=False)
    return list(itertools.islice(loader, 4))


def test_same_seed_same_pixels_and_captions_across_constructions_and_workers() -> None:
    a = CaptionedScenes(seed=3, stream="train", length=100)
    b = CaptionedScenes(seed=3, stream="train", length=100)
    for i in (0, 17, 99):
        assert a[i]["caption"] == b[i]["caption"]
        assert torch.equal(a[i]["image"], b[i]["image"])
    other = CaptionedScenes(seed=4, stream="train", length=100)
    assert any(not torch.equal(a[i]["image"], other[i]["image"]) for i in range(5))

    datamodule = ShapesWorldDataModule(seed=3, train_samples=64, batch_size=16)
    serial, parallel = _batches(datamodule, 0), _batches(datamodule, 2)
    for x, y in zip(serial, parallel, strict=True):
        assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def test_images_are_uint8_at_the_configured_resolution() -> None:
    item = CaptionedScenes(0, "train", 4, image_size=48)[0]
    assert item["image"].dtype == torch.uint8 and item["image"].shape == (3, 48, 48)


def _colors_in_image(image: torch.Tensor) -> set[str]:
    pixels = {tuple(p) for p in image.flatten(1).T.tolist()}
    by_rgb = {rgb: name for name, rgb in COLORS.items()}
    assert pixels <= set(by_rgb) | {BACKGROUND}, "a pixel is neither background nor an object color"
    return {by_rgb[p] for p in pixels if p != BACKGROUND}


def test_pixels_match_the_scene_record() -> None:
    """Objects are drawn without anti-aliasing in distinct cells: the set of non-background
    colors in the image is exactly the set of colors in the record."""
    data = CaptionedScenes(1, "train", 300)
    for i in range(300):
        item = data[i]
        assert _colors_in_image(item["image"]) == {t.color for t in data.scene(i).objects}


def _word(concept_words: list[str]) -> str:
    return "|".join(re.escape(w) for w in sorted(concept_words, key=len, reverse=True))


def test_held_out_combinations_never_appear_in_training_images_or_captions() -> None:
    data = CaptionedScenes(0, "train", N_CHECK)
    color_shape = {}
    for color, shape in HELD_OUT:
        shape_forms = [f for pair in lang.SHAPE_WORDS[shape] for f in pair]
        color_shape[(color, shape)] = re.compile(rf"\b({_word(lang.COLOR_WORDS[color])}) ({_word(shape_forms)})\b")
    seen = set()
    for i in range(N_CHECK):
        scene = data.scene(i)
        combos = {(t.color, t.shape) for t in scene.objects}
        seen |= combos
        assert not combos & HELD_OUT, (i, combos & HELD_OUT)
        caption = data[i]["caption"]
        for combo, pattern in color_shape.items():
            assert not pattern.search(caption), (i, caption, combo)
    assert len(seen) == 64 - len(HELD_OUT)  # every other combination does appear


def test_heldout_task_images_show_only_held_out_combinations() -> None:
    data = ZeroShotScenes("color_shape_heldout", 0, "val", 200)
    for i in range(200):
        scene, _ = data.sample(i)
        assert {(t.color, t.shape) for t in scene.objects} <= HELD_OUT


def _mentioned(caption: str, table: dict[str, list]) -> set[str]:
    found = set()
    for concept, forms in table.items():
        words = [w for form in forms for w in (form if isinstance(form, tuple) else (form,))]
        if re.search(rf"\b({_word(words)})\b", caption):
            found.add(concept)
    return found


def _relation_holds(scene: Scene, caption: str) -> bool:
    """Some ordered pair of objects makes the caption's relation true."""
    for rel, phrases in lang.RELATIONS.items():
        if any(f" {p} " in caption for p in phrases):
            return any(rel in lang.relation(a, b) for a in scene.objects for b in scene.objects if a is not b)
    return True


def _check_true(scene: Scene, caption: str) -> set[str]:
    """Assert what can be machine-checked of a caption against its scene; returns the kinds seen."""
    colors, shapes, sizes = (_mentioned(caption, t) for t in (lang.COLOR_WORDS, lang.SHAPE_WORDS, lang.SIZE_WORDS))
    # "semicircle"/"half moon" must not also count as "circle" etc.: words are whole words.
    assert colors <= {t.color for t in scene.objects}, (caption, scene)
    assert shapes <= {t.shape for t in scene.objects}, (caption, scene)
    assert sizes <= {t.size for t in scene.objects}, (caption, scene)
    counts = [n + 1 for n, w in enumerate(lang.COUNT_WORDS) if re.search(rf"\b{w}\b", caption)]
    assert all(c == len(scene.objects) for c in counts), (caption, scene)
    assert _relation_holds(scene, caption), (caption, scene)
    for place in lang.PLACES.values():
        if caption.endswith(f"in the {place}"):
            (thing,) = scene.objects
            assert lang.PLACES[(thing.row, thing.col)] == place
    kinds = {"count"} if counts else set()
    return kinds | ({"relation"} if any(f" {p} " in caption for ps in lang.RELATIONS.values() for p in ps) else set())


def test_captions_are_true_of_their_scene() -> None:
    data = CaptionedScenes(2, "train", N_CHECK)
    kinds = set()
    for i in range(N_CHECK):
        kinds |= _check_true(data.scene(i), data[i]["caption"])
    assert kinds == {"count", "relation"}


def _canonical_places(caption: str) -> list[str]:
    places = {w for phrase in lang.PLACES.values() for w in phrase.split()}
    return [{"middle": "center"}.get(w, w) for w in caption.split() if w in places | {"middle"}]


def test_text_views_stay_true_of_their_scene_and_known_to_the_tokenizer() -> None:
    """ShapesWorld's text views (its synonym table, synonym replacement and deletion, DeCLIP's
    delete_p) keep every caption true: the caption checks above, plus: the place words survive in
    order (a deletion never turns "top left" into "top"), every adjacent colour-shape pair names an
    object of the scene, and no word is unknown to the tokenizer."""
    dm = ShapesWorldDataModule(seed=2, train_samples=N_CHECK, text_views=TextViews(synonym=1, delete=1, swap=0))
    views, data = dm.train_set.text_views, dm.train_set
    colors = {w: c for c, ws in lang.COLOR_WORDS.items() for w in ws}
    shapes = {w: s for s, forms in lang.SHAPE_WORDS.items() for pair in forms for w in pair if " " not in w}
    pair = re.compile(rf"\b({_word(list(colors))}) ({_word(list(shapes))})\b")
    texts, changed = [], 0
    for i in range(N_CHECK):
        scene, caption = data.scene(i), data.caption(i)
        for epoch in (0, 1):
            view = views(caption, seed=1000 * i + epoch)
            changed += view != caption
            _check_true(scene, view)
            assert _canonical_places(view) == _canonical_places(caption), (caption, view)
            combos = {(t.color, t.shape) for t in scene.objects}
            assert all((colors[c], shapes[s]) in combos for c, s in pair.findall(view)), (view, scene)
            texts.append(view)
    assert changed > N_CHECK  # most views differ from their caption
    ids = dm.tokenizer(texts, pad_to_context=False)
    assert not (ids == dm.tokenizer.unk_id).any()


def test_every_caption_and_prompt_tokenizes_without_unknown_words() -> None:
    tokenizer = WordTokenizer(lang.vocabulary(), context_length=40)
    data = CaptionedScenes(0, "train", 1000, max_objects=3)
    captions = [data[i]["caption"] for i in range(1000)]
    from datamodules.shapesworld.datasets import TASKS

    prompts = [p for task in TASKS.values() for cls in task.prompts() for p in cls]
    ids = tokenizer(captions + prompts)
    assert not (ids == tokenizer.unk_id).any()
    assert ids[:, -1].eq(tokenizer.pad_id).all(), "40 tokens should hold every caption"


def test_tokenizer_truncates_keeping_the_end_token_and_maps_unknown_words() -> None:
    tokenizer = WordTokenizer(["a", "red", "circle"], context_length=5)
    ids = tokenizer(["a red circle", "a red circle a red circle", "a zebra"])
    start, end = 1, 2
    assert ids[0].tolist() == [start, 4, 5, 6, end]
    assert ids[1, 0] == start and ids[1, -1] == end  # truncated, still ends with <end>
    assert ids[2].tolist() == [start, 4, tokenizer.unk_id, end, tokenizer.pad_id]
    assert tokenizer.decode(ids[0].tolist()) == "a red circle"
    assert tokenizer(["a red", "a"], pad_to_context=False).tolist() == [[start, 4, 5, end], [start, 4, end, 0]]


def test_zero_shot_labels_match_the_scene() -> None:
    from datamodules.shapesworld.datasets import ALL_COMBOS, TASKS

    for name, task in TASKS.items():
        data = ZeroShotScenes(name, 0, "test", 50)
        for i in range(50):
            scene, label = data.sample(i)
            phrase = task.classes[label]
            if name == "count":
                assert phrase == lang.count_phrase(len(scene.objects))
            else:
                (thing,) = scene.objects
                assert phrase in (thing.shape, thing.color, f"{thing.color} {thing.shape}")
                if name.startswith("color_shape"):
                    assert ALL_COMBOS[label] == (thing.color, thing.shape)


def test_datamodule_eval_tasks_and_batches() -> None:
    datamodule = ShapesWorldDataModule(val_samples=8, test_samples=8, eval_batch_size=64, batch_size=4, num_workers=0)
    tasks = datamodule.eval_tasks("val")
    assert [t.name for t in tasks] == [
        "zeroshot/shapesworld_val/shape",
        "zeroshot/shapesworld_val/color",
        "zeroshot/shapesworld_val/color_shape_seen",
        "zeroshot/shapesworld_val/color_shape_heldout",
        "zeroshot/shapesworld_val/count",
        "retrieval/shapesworld_val",
    ]
    assert tasks[0].prompts.shape == (8, len(lang.OBJECT_TEMPLATES), datamodule.context_length)
    batch = next(iter(datamodule.val_dataloader()))
    assert batch["task"].tolist() == [t for t in range(6) for _ in range(8)]
    assert batch["index"].tolist() == list(range(48))
    assert (batch["label"][:40] >= 0).all() and (batch["label"][40:] == -1).all()
    train = next(iter(datamodule.train_dataloader()))
    # uint8 in the batch; the model normalises each micro-batch with the datamodule's transform
    assert train["image"].shape == (4, 3, 64, 64) and train["image"].dtype == torch.uint8
    # training text is padded to the batch's longest caption, which ends in <end>
    length = train["text"].shape[1]
    assert length <= datamodule.context_length
    assert (train["text"] != datamodule.tokenizer.pad_id).sum(1).max() == length


@pytest.mark.parametrize("bad", [(0, 3), (3, 2), (1, 10)])
def test_bad_object_counts_are_rejected(bad: tuple[int, int]) -> None:
    with pytest.raises(UserError, match="min_objects"):
        CaptionedScenes(0, "train", 4, min_objects=bad[0], max_objects=bad[1])


def test_loaders_iterate_under_dataloader() -> None:
    loader = DataLoader(ZeroShotScenes("count", 0, "val", 10), batch_size=5)
    assert sum(len(b["label"]) for b in loader) == 10


# ---- grounded probe suites ---------------------------------------------------------------
def _holds(caption: str, scene: Scene) -> bool:
    """Evaluate a probe caption (canonical words) against the scene record."""
    things = scene.objects
    combos = {(t.color, t.shape) for t in things}
    if caption.startswith("there is no "):
        return caption.removeprefix("there is no ") not in {t.shape for t in things}
    for n in (1, 2, 3):
        if caption == lang.count_phrase(n):
            return len(things) == n
    for rel, phrases in lang.RELATIONS.items():
        match = re.fullmatch(rf"an? (\w+) (\w+) {re.escape(phrases[0])} an? (\w+) (\w+)", caption)
        if match:
            c1, s1, c2, s2 = match.groups()
            return any(
                (a.color, a.shape, b.color, b.shape) == (c1, s1, c2, s2) and rel in lang.relation(a, b)
                for a in things for b in things if a is not b
            )  # fmt: skip
    match = re.fullmatch(r"a (\w+) (\w+) and a (\w+) (\w+)", caption)
    assert match, caption
    c1, s1, c2, s2 = match.groups()
    return {(c1, s1), (c2, s2)} <= combos


@pytest.mark.parametrize("kind", ["attribute_binding", "relation_order", "negation", "counting"])
def test_probe_positives_are_true_and_negatives_false(kind: str) -> None:
    from datamodules.shapesworld import ProbeScenes

    tokenizer = WordTokenizer(lang.vocabulary(), context_length=32)
    suite = ProbeScenes(kind, seed=0, length=300)
    for i in range(300):
        scene, positive, negatives = suite.sample(i)
        assert _holds(positive, scene), (kind, positive, scene)
        assert negatives and not any(_holds(n, scene) for n in negatives), (kind, negatives, scene)
        assert not (tokenizer([positive, *negatives]) == tokenizer.unk_id).any()
    item = suite[0]
    assert item["image"].shape == (3, 64, 64) and isinstance(item["negatives"], list)


def test_unknown_probe_is_a_named_error() -> None:
    from datamodules.shapesworld import ProbeScenes

    with pytest.raises(UserError, match="unknown ShapesWorld probe 'binding'"):
        ProbeScenes("binding")
