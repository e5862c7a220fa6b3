"""Chinese and bilingual ShapesWorld: captions true of their scene, tokens known and untruncated,
held-out combinations held out, the "both" language choice, Chinese probes and prompts, the
datamodule's evaluation tasks, and cross-lingual retrieval (the metric and the module's logging)."""

from __future__ import annotations

import hashlib
import importlib.util
import itertools
import re

import lightning.pytorch as pl
import pytest
import torch

from common.errors import UserError
from datamodules.augment import TextViews, TokenMasking
from datamodules.shapesworld import (
    HELD_OUT,
    PROBES,
    TASKS,
    TASKS_ZH,
    CaptionedScenes,
    CrossLingualScenes,
    ProbeScenes,
    ShapesWorldDataModule,
)
from datamodules.shapesworld import captions as en
from datamodules.shapesworld import captions_zh as zh
from datamodules.shapesworld.datamodule import CONTEXT_LENGTH
from datamodules.shapesworld.world import Scene, Thing
from datamodules.suites.shapesworld import shapesworld_probes, shapesworld_suites
from datamodules.tokenizer import BertTokenizer
from variants.metrics import crosslingual_recall
from variants.module import ContrastiveModule
from variants.objectives import InfoNCE
from variants.towers import TextTower, VisionTower

N_CHECK = 3000
HAS_CN_CLIP = importlib.util.find_spec("cn_clip") is not None

# ---- a reader of the Chinese grammar, independent of how captions_zh draws them ------------
NUMERALS = "".join(zh.COUNT_WORDS)
LEXICON: dict[str, tuple[str, str | None]] = {"的": ("de", None)}  # word -> (kind, concept)
for kind, table in (("color", zh.COLOR_WORDS), ("shape", zh.SHAPE_WORDS), ("size", zh.SIZE_WORDS)):
    LEXICON |= {word: (kind, concept) for concept, words in table.items() for word in words}
LEXICON |= {word: ("noun", None) for word in zh.NOUNS}
PLACE_WORDS = {word: cell for cell, words in zh.PLACES.items() for word in words}
RELATION_WORDS = {word: rel for rel, words in zh.RELATIONS.items() for word in words}


def _alt(words) -> str:
    return "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))


NP = rf"[{NUMERALS}][个颗](?:{_alt(LEXICON)})+"
PICTURE = rf"(?:(?:{_alt(zh.PICTURE)})的)?"
PLACE, RELATION = _alt(PLACE_WORDS), _alt(RELATION_WORDS)
PREFIXES = _alt({p for p in (*zh.LIST_PREFIXES_ONE, *zh.LIST_PREFIXES_MANY, *zh.COUNT_PREFIXES_MANY) if p})


def _segment(text: str) -> list[str]:
    """Greedy longest match over the lexicon; every character must belong to a word."""
    words, i = [], 0
    longest = sorted(LEXICON, key=len, reverse=True)
    while i < len(text):
        word = next((w for w in longest if text.startswith(w, i)), None)
        assert word is not None, f"{text!r}: no word at {text[i:]!r}"
        words.append(word)
        i += len(word)
    return words


def _noun_phrase(text: str) -> tuple[int, dict[str, str]]:
    """ "两个红色的圆形" -> (2, {"color": "red", "shape": "circle"})."""
    match = re.fullmatch(rf"([{NUMERALS}])([个颗])(.+)", text)
    assert match, text
    words = _segment(match[3])
    kinds = [LEXICON[w][0] for w in words]
    assert kinds[-1] in ("shape", "noun"), text  # a phrase ends in its noun
    assert kinds.count("shape") + kinds.count("noun") == 1 and kinds.count("color") <= 1 >= kinds.count("size"), text
    if match[2] == "颗":
        assert words[-1] in zh.STAR_NOUNS, text
    said = {LEXICON[w][0]: LEXICON[w][1] for w in words if LEXICON[w][0] in ("color", "shape", "size")}
    return NUMERALS.index(match[1]) + 1, said


def _matches(thing: Thing, said: dict[str, str]) -> bool:
    return all(getattr(thing, attribute) == value for attribute, value in said.items())


def _check_held_out(said: dict[str, str], text: str) -> None:
    assert (said.get("color"), said.get("shape")) not in HELD_OUT, text


def check_true(scene: Scene, text: str, *, training: bool = True) -> str:
    """Assert that a Chinese caption is true of the scene record; returns its kind. Every noun
    phrase is parsed whole (each character belongs to a word of the grammar); with ``training``
    no phrase names a held-out (colour, shape) combination."""
    things = scene.objects
    phrases: list[dict[str, str]] = []

    def phrase(t: str, n: int = 1) -> dict[str, str]:
        count, said = _noun_phrase(t)
        assert count == n, text
        phrases.append(said)
        return said

    kind = "list"
    if m := re.fullmatch(rf"({NP})(?:在|位于)({NP})的({RELATION})", text):
        a, b, rel = phrase(m[1]), phrase(m[2]), RELATION_WORDS[m[3]]
        kind = "relation"
    elif m := re.fullmatch(rf"({NP})的({RELATION})有({NP})", text):
        b, rel, a = phrase(m[1]), RELATION_WORDS[m[2]], phrase(m[3])
        kind = "relation"
    if kind == "relation":
        assert any(
            _matches(x, a) and _matches(y, b) and rel in en.relation(x, y) for x in things for y in things if x is not y
        ), (text, scene)
    elif (m := re.fullmatch(rf"({NP})(?:在|位于){PICTURE}({PLACE})", text)) or (
        m := re.fullmatch(rf"{PICTURE}({PLACE})有({NP})", text)
    ):
        np_text, place = (m[1], m[2]) if m[1][0] in NUMERALS else (m[2], m[1])
        (thing,) = things
        assert _matches(thing, phrase(np_text)) and PLACE_WORDS[place] == (thing.row, thing.col), (text, scene)
        kind = "place"
    elif m := re.fullmatch(rf"(?:{PREFIXES})?({NP})", text):
        count, said = _noun_phrase(m[1])
        phrases.append(said)
        assert count == len(things) and all(_matches(t, said) for t in things), (text, scene)
        kind = "count" if count > 1 or text.startswith(("图中有一个物体", "一个物体", "一个图形")) else "list"
    else:
        m = re.fullmatch(r"一张有(.+)的图片", text) or re.fullmatch(rf"(?:{PREFIXES})?(.+)", text)
        assert m, text
        parts = re.split(rf"{zh.LIST_SEPARATOR}|{zh.LIST_LAST}", m[1])
        said_all = [phrase(p) for p in parts]
        assert len(said_all) == len(things), (text, scene)  # every object, once
        assert any(all(map(_matches, order, said_all)) for order in itertools.permutations(things)), (text, scene)
    if training:
        for said in phrases:
            _check_held_out(said, text)
    return kind


# ---- captions -------------------------------------------------------------------------------
def test_chinese_captions_are_true_of_their_scene_and_training_never_names_a_held_out_combination() -> None:
    data = CaptionedScenes(2, "train", N_CHECK, language="zh")
    kinds, seen = set(), set()
    for i in range(N_CHECK):
        scene = data.scene(i)
        combos = {(t.color, t.shape) for t in scene.objects}
        assert not combos & HELD_OUT
        seen |= combos
        kinds.add(check_true(scene, data.caption(i)))
    assert kinds == {"list", "count", "place", "relation"}
    assert len(seen) == 64 - len(HELD_OUT)


def test_both_language_captions_are_true_and_chosen_deterministically_about_half_and_half() -> None:
    both = CaptionedScenes(5, "train", N_CHECK, language="both")
    english, chinese = CaptionedScenes(5, "train", N_CHECK), CaptionedScenes(5, "train", N_CHECK, language="zh")
    again = CaptionedScenes(5, "train", N_CHECK, language="both")
    languages = [both.language_of(i) for i in range(N_CHECK)]
    assert languages == [again.language_of(i) for i in range(N_CHECK)]
    assert 0.45 < languages.count("zh") / N_CHECK < 0.55
    for i in range(N_CHECK):
        text = both.caption(i)
        # A caption of "both" is the one-language dataset's caption of the same index: the scene
        # and caption draws do not depend on the language choice.
        assert text == (chinese if languages[i] == "zh" else english).caption(i)
        if languages[i] == "zh":
            check_true(both.scene(i), text)
    held_out = re.compile(
        "|".join(
            rf"\b({'|'.join(en.COLOR_WORDS[c])}) ({'|'.join(f for pair in en.SHAPE_WORDS[s] for f in pair)})\b"
            for c, s in HELD_OUT
        )
    )
    assert not any(held_out.search(english.caption(i)) for i in range(N_CHECK) if languages[i] == "en")


def test_both_language_batches_are_the_same_across_workers_and_constructions() -> None:
    def batches(workers: int) -> list[dict]:
        datamodule = ShapesWorldDataModule(seed=3, train_samples=64, batch_size=16, language="both")
        datamodule.hparams.num_workers = workers
        loader = datamodule._loader(datamodule.train_set, 16, train=False)
        return list(itertools.islice(loader, 4))

    for x, y in zip(batches(0), batches(2), strict=True):
        assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def test_english_is_unchanged_by_the_language_option() -> None:
    """language="en" (the default) is byte-identical to ShapesWorld before Chinese existed: the same
    captions, the word-level tokenizer and its 32-token context. The digest pins the first 200
    training captions and their ids, every test task's name and prompt ids, the vocabulary size and
    the context length, as computed by the code before the language option (commit 66c6b68)."""
    dm = ShapesWorldDataModule(train_samples=200, val_samples=20, test_samples=20, num_workers=0)
    digest = hashlib.sha256()
    captions = [dm.train_set.caption(i) for i in range(200)]
    digest.update("\n".join(captions).encode())
    digest.update(dm.tokenizer(captions).numpy().tobytes())
    for task in dm.eval_tasks("test"):
        digest.update(task.name.encode())
        if task.prompts is not None:
            digest.update(task.prompts.numpy().tobytes())
    digest.update(f"{dm.vocab_size}{dm.context_length}".encode())
    assert digest.hexdigest() == "51225d666b5463a15d37a4de4635951be0369c6b22934604322f24de15e14046"
    default, explicit = ShapesWorldDataModule(train_samples=50), ShapesWorldDataModule(train_samples=50, language="en")
    assert [default.train_set.caption(i) for i in range(50)] == [explicit.train_set.caption(i) for i in range(50)]
    assert type(default.tokenizer).__name__ == "WordTokenizer" and default.context_length == 32
    assert default.vocab_size == len(en.vocabulary()) + 4


def test_examples_of_each_kind_read_naturally() -> None:
    """A few fixed captions (seed 0), so a change of the grammar shows up in review."""
    data = CaptionedScenes(0, "train", 12, language="zh")
    captions = [data.caption(i) for i in range(12)]
    assert captions[:3] == ["一个很大的五角星", "一个蓝色大圆盘的右面有一个大大的红色圆盘", "一个橙色的星星"]
    assert zh.binding_caption(("red", "circle"), ("blue", "square")) == "一个红色圆形和一个蓝色正方形"
    assert zh.relation_caption(("red", "circle"), "left", ("blue", "square")) == "一个红色圆形在一个蓝色正方形的左边"
    assert zh.negation_caption("star") == "图中没有星形" and zh.count_phrase(2) == "两个物体"


# ---- tokens: known and untruncated ------------------------------------------------------------
def _zh_texts() -> list[str]:
    data = CaptionedScenes(0, "train", 2000, language="zh")
    texts = [data.caption(i) for i in range(2000)]
    texts += [p for task in TASKS_ZH.values() for cls in task.prompts() for p in cls]
    for kind in PROBES:
        for i in range(100):
            _, positive, negatives = ProbeScenes(kind, 0, 100, language="zh").sample(i)
            texts += [positive, *negatives]
    return texts


def _en_texts() -> list[str]:
    data = CaptionedScenes(0, "train", 1000)
    texts = [data.caption(i) for i in range(1000)] + [p for t in TASKS.values() for c in t.prompts() for p in c]
    for kind in PROBES:
        for i in range(50):
            _, positive, negatives = ProbeScenes(kind, 0, 50).sample(i)
            texts += [positive, *negatives]
    return texts


def _longest_caption(objects: int) -> str:
    """The longest Chinese list caption of ``objects`` objects the grammar can write (lists are its
    longest kind): the wrapper "一张有...的图片" around the longest phrase per object."""
    longest = max(
        (zh.describe(noun, color, size, _FirstChoice()) for noun in [w for ws in zh.SHAPE_WORDS.values() for w in ws]
         for color in [w for ws in zh.COLOR_WORDS.values() for w in ws if w.endswith("色")]
         for size in [w for ws in zh.SIZE_WORDS.values() for w in ws]),
        key=len,
    )  # fmt: skip
    return "一张有" + zh.LIST_SEPARATOR.join([f"一个{longest}"] * (objects - 1)) + zh.LIST_LAST + f"一个{longest}的图片"


class _FirstChoice:
    """A stand-in generator that always takes the longest option (for the worst case)."""

    def choice(self, options):
        return max(options, key=len)


@pytest.mark.parametrize("language", ["zh", "both"])
def test_no_unknown_token_and_no_truncation_with_the_default_vocabulary(language: str) -> None:
    datamodule = ShapesWorldDataModule(train_samples=10, val_samples=4, test_samples=4, language=language)
    tokenizer = datamodule.tokenizer
    assert isinstance(tokenizer, BertTokenizer) and datamodule.context_length == CONTEXT_LENGTH[language] == 64
    texts = _zh_texts() + (_en_texts() if language == "both" else [])
    texts += [_longest_caption(n) for n in (3, 4, 5)]
    assert tokenizer.unknown(texts) == 0
    ids = tokenizer(texts, pad_to_context=False)
    lengths = (ids != tokenizer.pad_id).sum(1)
    # 40 tokens for the longest 3-object caption, 11 more per object: 5 objects fit in 64.
    assert lengths[-3:].tolist() == [40, 51, 62]
    assert lengths.max() <= datamodule.context_length
    assert tokenizer.decode(tokenizer([texts[0]])[0].tolist()) == texts[0]


@pytest.mark.skipif(not HAS_CN_CLIP, reason="the cn_clip package (its vocab.txt) is not installed")
@pytest.mark.parametrize("language", ["zh", "both"])
def test_no_unknown_token_and_no_truncation_with_the_cn_clip_vocabulary(language: str) -> None:
    datamodule = ShapesWorldDataModule(train_samples=10, val_samples=4, test_samples=4, language=language,
                                       vocab="cn_clip")  # fmt: skip
    tokenizer = datamodule.tokenizer
    assert datamodule.vocab_size == 21128
    texts = _zh_texts() + (_en_texts() if language == "both" else []) + [_longest_caption(5)]
    assert tokenizer.unknown(texts) == 0
    assert (tokenizer(texts, pad_to_context=False) != tokenizer.pad_id).sum(1).max() <= datamodule.context_length


def test_a_character_missing_from_the_vocabulary_is_an_unknown_token_and_counted() -> None:
    tokenizer = ShapesWorldDataModule(train_samples=4, val_samples=2, test_samples=2, language="zh").tokenizer
    assert isinstance(tokenizer, BertTokenizer)
    assert tokenizer.unknown("一个红色的圆形") == 0
    assert tokenizer.unknown(["一个红色的龘", "龘龘"]) == 3
    assert (tokenizer("一个龘")[0] == tokenizer.unk_id).sum() == 1


# ---- probes and prompts -----------------------------------------------------------------------
def _probe_holds(caption: str, scene: Scene) -> bool:
    """A Chinese probe caption (canonical words) evaluated against the scene record."""
    things = scene.objects
    if caption.startswith("图中没有"):
        (shape,) = [s for s, words in zh.SHAPE_WORDS.items() if caption == f"图中没有{words[0]}"]
        return shape not in {t.shape for t in things}
    if m := re.fullmatch(rf"({NP})在({NP})的({RELATION})", caption):
        (_, a), (_, b), rel = _noun_phrase(m[1]), _noun_phrase(m[2]), RELATION_WORDS[m[3]]
        return any(
            _matches(x, a) and _matches(y, b) and rel in en.relation(x, y) for x in things for y in things if x is not y
        )
    if m := re.fullmatch(rf"({NP})", caption):
        count, said = _noun_phrase(caption)
        return count == len(things) and all(_matches(t, said) for t in things)
    parts = caption.split(zh.LIST_LAST)
    said_all = [_noun_phrase(p)[1] for p in parts]
    return any(all(map(_matches, order, said_all)) for order in itertools.permutations(things, len(said_all)))


@pytest.mark.parametrize("kind", PROBES)
def test_chinese_probe_positives_are_true_and_negatives_false_on_the_english_probes_scenes(kind: str) -> None:
    tokenizer = BertTokenizer(words=zh.vocabulary(), context_length=64)
    chinese, english = ProbeScenes(kind, seed=0, length=300, language="zh"), ProbeScenes(kind, seed=0, length=300)
    for i in range(300):
        scene, positive, negatives = chinese.sample(i)
        assert scene == english.sample(i)[0]  # the same items, in the other language
        assert _probe_holds(positive, scene), (kind, positive, scene)
        assert negatives and not any(_probe_holds(n, scene) for n in negatives), (kind, negatives, scene)
        assert tokenizer.unknown([positive, *negatives]) == 0


def test_chinese_text_pairs_are_in_the_vocabulary() -> None:
    from datamodules.shapesworld.probes import text_pairs, text_pairs_zh

    pairs = text_pairs_zh()
    assert pairs.keys() == text_pairs().keys() and all(pairs.values())
    tokenizer = BertTokenizer(words=zh.vocabulary(), context_length=64)
    assert tokenizer.unknown([text for kind in pairs.values() for pair in kind for text in pair]) == 0
    assert ("图中有圆形", "图中没有圆形") in pairs["negation"]


def test_chinese_prompts_name_the_same_classes_in_the_same_order() -> None:
    assert TASKS_ZH["shape"].classes[:3] == ("圆形", "正方形", "三角形")
    assert TASKS_ZH["color_shape_heldout"].classes[0] == "红色圆形"
    assert TASKS_ZH["count"].prompts()[1] == ["两个物体", "图中有两个物体"]
    for name, task in TASKS_ZH.items():
        assert len(task.classes) == len(TASKS[name].classes) == len(set(task.classes))


# ---- the datamodule ---------------------------------------------------------------------------
ZEROSHOT = ["shape", "color", "color_shape_seen", "color_shape_heldout", "count"]


@pytest.mark.parametrize(
    ("language", "names"),
    [
        ("en", [*(f"zeroshot/shapesworld_val/{t}" for t in ZEROSHOT), "retrieval/shapesworld_val"]),
        ("zh", [*(f"zeroshot/shapesworld_val/{t}_zh" for t in ZEROSHOT), "retrieval/shapesworld_val"]),
        (
            "both",
            [*(f"zeroshot/shapesworld_val/{t}" for t in ZEROSHOT), *(f"zeroshot/shapesworld_val/{t}_zh" for t in ZEROSHOT),
             "retrieval/shapesworld_val", "crosslingual/shapesworld_val"],
        ),
    ],
)  # fmt: skip
def test_eval_task_names_per_language(language: str, names: list[str]) -> None:
    datamodule = ShapesWorldDataModule(val_samples=4, test_samples=4, train_samples=4, language=language)
    tasks = datamodule.eval_tasks("val")
    assert [t.name for t in tasks] == names
    assert [t.name for t in datamodule.eval_tasks("test")] == [n.replace("_val", "_test") for n in names]
    for task in tasks:
        if task.kind == "zeroshot":
            assert task.prompts.shape[0] == len(TASKS[task.name.split("/")[-1].removesuffix("_zh")].classes)
            assert task.prompts.shape[-1] == datamodule.context_length
    if language == "zh":
        tokenizer = datamodule.tokenizer
        assert tokenizer.decode(tasks[0].prompts[0, 0].tolist()) == "一个圆形"


def test_crosslingual_items_pair_an_english_and_a_chinese_caption_of_one_scene() -> None:
    pairs = CrossLingualScenes(0, "val/crosslingual", 300)
    assert len(pairs) == 600
    for i in range(300):
        scene, english, chinese = pairs.pair(i)
        check_true(scene, chinese, training=False)
        first, second = pairs[2 * i], pairs[2 * i + 1]
        assert (first["caption"], first["label"], first["target"]) == (english, i, False)
        assert (second["caption"], second["label"], second["target"]) == (chinese, i, True)
        assert torch.equal(first["image"], second["image"])
    retrieval = ShapesWorldDataModule(val_samples=8, train_samples=4, language="both")._eval_sets["val"][-2][1]
    assert {retrieval.language_of(i) for i in range(8)} == {"en", "zh"}


def test_text_views_are_refused_in_chinese_and_masking_uses_berts_mask_token() -> None:
    with pytest.raises(UserError, match="text_views are English-only"):
        ShapesWorldDataModule(train_samples=4, language="zh", text_views=TextViews())
    plain = ShapesWorldDataModule(train_samples=8, batch_size=8, language="zh", num_workers=0)
    masked = ShapesWorldDataModule(train_samples=8, batch_size=8, language="zh", num_workers=0,
                                   text_masking=TokenMasking(probability=0.5))  # fmt: skip
    assert masked.vocab_size == plain.vocab_size  # [MASK] is already in the vocabulary
    assert masked.tokenizer.mask_id == masked.tokenizer.tokenizer.token_to_id("[MASK]")
    batch = next(iter(masked._loader(masked.train_set, 8, train=True)))
    assert (batch["text"] == masked.tokenizer.mask_id).any() and (batch["mlm_labels"] >= 0).any()


def test_analysis_suites_follow_the_runs_language() -> None:
    names = [s.name for s in shapesworld_suites(samples=4, probe_train_samples=4, language="both")]
    assert names == [*(f"shapesworld/{t}" for t in ZEROSHOT), *(f"shapesworld/{t}_zh" for t in ZEROSHOT), "shapesworld"]
    zh_suites = shapesworld_suites(samples=4, probe_train_samples=4, language="zh")
    assert zh_suites[0].class_prompts()[0] == ["一个圆形", "这是一个圆形", "一张圆形的图片"]
    probes = shapesworld_probes(samples=4, language="both")
    assert [p.name for p in probes] == [f"shapesworld/{k}" for k in PROBES] + [f"shapesworld/{k}_zh" for k in PROBES]
    assert probes[-1].items[0]["positive"].endswith("个物体")
    with pytest.raises(UserError, match="unknown ShapesWorld language 'fr'"):
        shapesworld_probes(language="fr")  # type: ignore[arg-type]


# ---- cross-lingual retrieval ------------------------------------------------------------------
def _naive_crosslingual(en_to_zh, en_to_image, image_to_zh, positives, k: int) -> tuple[float, float]:
    n = en_to_zh.shape[0]
    direct = via = 0
    for i in range(n):
        ranked = sorted(range(n), key=lambda j: -float(en_to_zh[i, j]))[:k]
        direct += any(bool(positives[i, j]) for j in ranked)
        image = max(range(n), key=lambda j: float(en_to_image[i, j]))
        ranked = sorted(range(n), key=lambda j: -float(image_to_zh[image, j]))[:k]
        via += any(bool(positives[i, j]) for j in ranked)
    return direct / n, via / n


def test_crosslingual_recall_matches_a_naive_loop() -> None:
    generator = torch.Generator().manual_seed(0)
    n, d = 30, 8
    en_, zh_, images = (torch.nn.functional.normalize(torch.randn(n, d, generator=generator), dim=-1) for _ in range(3))
    zh_ = torch.nn.functional.normalize(zh_ + 2 * en_, dim=-1)  # related, so recall is not ~k/n
    positives = torch.eye(n, dtype=torch.bool)
    positives[3, 7] = positives[7, 3] = True  # two scenes with identical Chinese captions
    got = crosslingual_recall(en_, zh_, images, positives=positives)
    for k in (1, 5, 10):
        direct, via = _naive_crosslingual(en_ @ zh_.T, en_ @ images.T, images @ zh_.T, positives, k)
        assert got[f"direct_R@{k}"].item() == pytest.approx(direct)
        assert got[f"via_image_R@{k}"].item() == pytest.approx(via)
    custom_a, custom_b = torch.randn(n, n, generator=generator), torch.randn(n, n, generator=generator)
    got = crosslingual_recall(en_, zh_, images, (3,), en_to_image=custom_a, image_to_zh=custom_b)
    assert got["via_image_R@3"].item() == pytest.approx(_naive_crosslingual(en_ @ zh_.T, custom_a, custom_b,
                                                                            torch.eye(n, dtype=torch.bool), 3)[1])  # fmt: skip
    assert set(got) == {"direct_R@3", "via_image_R@3"}
    perfect = crosslingual_recall(en_, en_, en_)
    assert all(v.item() == 1.0 for v in perfect.values())


def test_validation_on_both_languages_logs_crosslingual_retrieval(tmp_path) -> None:
    """A tiny module validated on language "both" logs every task, and its cross-lingual numbers
    are those of the metric on the embeddings of the pairs computed here by hand."""
    datamodule = ShapesWorldDataModule(image_size=32, val_samples=6, eval_batch_size=64, train_samples=4,
                                       num_workers=0, language="both")  # fmt: skip
    module = ContrastiveModule(
        VisionTower("resnet10t", embed_dim=16),
        TextTower(datamodule.vocab_size, datamodule.context_length, width=32, depth=1, heads=2, embed_dim=16),
        [InfoNCE()],
    )
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, default_root_dir=tmp_path)
    (metrics,) = trainer.validate(module, datamodule, verbose=False)
    names = [f"crosslingual/shapesworld_val/{way}_R@{k}" for way in ("direct", "via_image") for k in (1, 5, 10)]
    assert set(names) <= set(metrics) and "zeroshot/shapesworld_val/shape_zh/top1" in metrics
    assert "zeroshot/shapesworld_val/shape/top1" in metrics and "retrieval/shapesworld_val/i2t_R@1" in metrics
    pairs = CrossLingualScenes(0, "val/crosslingual", 6, 32)
    items = [pairs[i] for i in range(12)]
    module.eval()
    with torch.no_grad():
        images = module.encode_image(
            datamodule.image_transform.normalize(torch.stack([x["image"] for x in items[::2]]))
        )
        tokens = datamodule.tokenizer([x["caption"] for x in items])
        texts = module.encode_text(tokens)
    same_zh = (tokens[1::2, None] == tokens[None, 1::2]).all(-1)
    same_en = (tokens[::2, None] == tokens[None, ::2]).all(-1)  # identical English queries: each scene is right
    expected = crosslingual_recall(texts[::2], texts[1::2], images, positives=same_zh | same_en)
    for key, value in expected.items():
        assert metrics[f"crosslingual/shapesworld_val/{key}"] == pytest.approx(value.item(), abs=1e-5), key


def test_loaders_carry_language_both_zero_shot_and_crosslingual_items() -> None:
    datamodule = ShapesWorldDataModule(val_samples=3, eval_batch_size=100, train_samples=4, num_workers=0,
                                       language="both")  # fmt: skip
    (batch,) = list(datamodule.val_dataloader())
    tasks = datamodule.eval_tasks("val")
    assert batch["task"].tolist() == [t for t in range(len(tasks)) for _ in range(6 if t == len(tasks) - 1 else 3)]
    assert batch["label"][-6:].tolist() == [0, 0, 1, 1, 2, 2] and batch["target"][-6:].tolist() == [False, True] * 3
    assert not batch["target"][:-6].any()
