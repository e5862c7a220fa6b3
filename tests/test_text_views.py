"""DeCLIP's data side: EDA text views (``augment.TextViews``), token masking for MLM
(``augment.TokenMasking``), the appended <mask> token, per-epoch augmentation seeds, and the batches
both datamodules build with them."""

from __future__ import annotations

import dataclasses
import pickle
import random
import warnings
from pathlib import Path

import pytest
import torch

from common.errors import UserError
from datamodules.augment import IGNORE, SSLViews, TextViews, TokenMasking, epoch_seed
from datamodules.collate import Collate
from datamodules.sampling import ResumableSampler
from datamodules.shapesworld import CaptionedScenes, ShapesWorldDataModule
from datamodules.shapesworld import captions as lang
from datamodules.tokenizer import BPETokenizer, TextTokenizer, WordTokenizer
from datamodules.tokenizer.bpe import train_bpe

from helpers.image_text import SIZE, WORDS, make_csv, make_shards
from helpers.image_text import datamodule as image_text_datamodule

CAPTION = "a small red circle to the left of a big blue square"
TABLE = {"red": ["crimson"], "circle": ["disk"], "small": ["little", "tiny"]}
NO_COLOR = {"color_jitter_p": 0.0, "grayscale_p": 0.0, "flip_p": 0.0}


# ---- TextViews ------------------------------------------------------------------------------
def test_a_text_view_is_a_pure_function_of_caption_and_seed() -> None:
    views = TextViews(synonym=1, swap=1, delete=1, insert=1, synonyms=TABLE)
    again = TextViews(synonym=1, swap=1, delete=1, insert=1, synonyms=TABLE)
    drawn = [views(CAPTION, seed) for seed in range(200)]
    assert drawn == [again(CAPTION, seed) for seed in range(200)]
    assert len(set(drawn)) > 20  # the seed matters


def test_each_operation_does_what_eda_does() -> None:
    words = CAPTION.split()
    for seed in range(100):
        # synonym replacement: one word of the table, every occurrence, by one of its synonyms
        view = TextViews(synonym=1, swap=0, delete=0, synonyms=TABLE)("a red circle and a red box", seed)
        changed = {(a, b) for a, b in zip("a red circle and a red box".split(), view.split(), strict=True) if a != b}
        assert changed in ({("red", "crimson")}, {("circle", "disk")}), view
        # swap: the same words, two positions exchanged
        swapped = TextViews(synonym=0, swap=1, delete=0)(CAPTION, seed).split()
        assert sorted(swapped) == sorted(words) and sum(a != b for a, b in zip(words, swapped, strict=True)) in (0, 2)
        # deletion: a subsequence; protected words always stay
        kept = TextViews(synonym=0, swap=0, delete=1, delete_p=0.5, protected=["left", "square"])(CAPTION, seed)
        assert _is_subsequence(kept.split(), words) and {"left", "square"} <= set(kept.split())
        # insertion without a table: one more word, a copy of a word of the caption
        inserted = TextViews(synonym=0, swap=0, delete=0, insert=1)(CAPTION, seed).split()
        assert len(inserted) == len(words) + 1 and set(inserted) == set(words)
    # with a table, insertion adds a synonym of a word of the caption
    inserted = TextViews(synonym=0, swap=0, delete=0, insert=1, synonyms=TABLE)(CAPTION, 0).split()
    assert len(inserted) == len(words) + 1 and set(inserted) - set(words) <= {"crimson", "disk", "little", "tiny"}


def test_an_operation_with_nothing_to_act_on_returns_the_caption_unchanged() -> None:
    assert TextViews(synonym=1, swap=0, delete=0, synonyms=TABLE)("a blue square", 3) == "a blue square"
    assert TextViews(synonym=0, swap=0, delete=1, delete_p=0.99)("word", 3) == "word"
    assert TextViews(synonym=0, swap=1, delete=0, protected=["a", "b"])("a b c", 3) == "a b c"
    assert TextViews(synonym=0, swap=1, delete=0)("", 3) == ""
    # deletion keeps one word when every word would go (EDA)
    assert TextViews(synonym=0, swap=0, delete=1, delete_p=0.999999)("one two three", 1) in ("one", "two", "three")


def _is_subsequence(short: list[str], long: list[str]) -> bool:
    it = iter(long)
    return all(word in it for word in short)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"swap": -1.0}, "text_views.swap must be a finite weight >= 0, got -1.0"),
        ({"delete": float("nan")}, "text_views.delete must be a finite weight >= 0"),
        ({"synonym": 0, "swap": 0, "delete": 0, "insert": 0}, "weights synonym, swap, delete and insert are all 0"),
        ({"words": 0}, "text_views.words must be an integer >= 1, got 0"),
        ({"words": 1.5}, "text_views.words must be an integer >= 1"),
        ({"delete_p": 1.0}, r"text_views.delete_p must be in \[0, 1\), got 1.0"),
        ({"synonyms": {"red": "crimson"}}, "text_views.synonyms must map each word to a list"),
    ],
)
def test_bad_text_view_arguments_are_one_line_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(UserError, match=message) as error:
        TextViews(**kwargs)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"blur_p": 5}, r"views.blur_p must be a probability in \[0, 1\], got 5$"),
        ({"flip_p": -0.1}, r"views.flip_p must be a probability in \[0, 1\], got -0.1"),
        ({"color_jitter_p": True}, "views.color_jitter_p must be a probability"),
        ({"grayscale_p": 1.5}, "views.grayscale_p must be a probability"),
        ({"crop_scale": (0.5, 0.2)}, r"views.crop_scale must be two area fractions \[low, high\] with 0 < low <= high"),
        ({"crop_scale": (0.0, 1.0)}, r"<= 1, got \(0.0, 1.0\)"),
        ({"crop_scale": (0.5, 2.0)}, "views.crop_scale must be"),
        ({"crop_scale": (0.5,)}, "views.crop_scale must be"),
        ({"color_jitter": (0.4, 0.4, 0.4, 0.7)}, r"views.color_jitter hue \(item 4\) must be in \[0, 0.5\], got 0.7"),
        ({"color_jitter": (-1, 0.4, 0.4, 0.1)}, r"views.color_jitter brightness \(item 1\) must be >= 0, got -1"),
        ({"color_jitter": (0.4, 0.4, 0.4)}, r"views.color_jitter must be four numbers \[brightness, contrast"),
    ],
)
def test_bad_image_view_arguments_are_one_line_errors_at_construction(kwargs: dict, message: str) -> None:
    """Not at the first sample inside torchvision, in a dataloader worker."""
    with pytest.raises(UserError, match=message) as error:
        SSLViews(**kwargs)
    assert "\n" not in str(error.value)


def test_image_view_settings_at_their_limits_are_accepted() -> None:
    views = SSLViews(
        crop_scale=(1, 1), color_jitter=(0, 0, 0, 0.5), color_jitter_p=1, grayscale_p=0, blur_p=1, flip_p=0
    )
    assert views(torch.zeros(3, 16, 16, dtype=torch.uint8), seed=0).shape == (2, 3, 16, 16)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"probability": 0.0}, "text_masking.probability must be > 0"),
        ({"probability": 1.5}, r"text_masking.probability must be in \[0, 1\], got 1.5"),
        ({"mask_fraction": -0.1}, "text_masking.mask_fraction must be in"),
        ({"random_fraction": True}, "text_masking.random_fraction must be in"),
        ({"mask_fraction": 0.8, "random_fraction": 0.3}, "mask_fraction \\+ random_fraction must be <= 1"),
    ],
)
def test_bad_masking_arguments_are_one_line_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(UserError, match=message) as error:
        TokenMasking(**kwargs)
    assert "\n" not in str(error.value)


# ---- the mask token -------------------------------------------------------------------------
def test_add_mask_token_appends_exactly_one_id_and_leaves_the_others() -> None:
    word = WordTokenizer(["red", "circle"], context_length=8)
    before, ids = word.vocab_size, word(["red circle", "a <mask>"])
    assert word.mask_id is None and word.add_mask_token() == before and word.add_mask_token() == before
    assert word.vocab_size == before + 1 and word.mask_id == before
    assert torch.equal(word(["red circle", "a <mask>"]), ids)  # no text encodes to the mask
    assert word.decode([1, 4, before, 5, 2]) == "red circle" and before in word.special_ids

    bpe = BPETokenizer("unused.json", 16, tokenizer_json=train_bpe(["a red circle", "a blue square"] * 5, 40).to_str())
    size = bpe.vocab_size
    bpe.add_mask_token()
    assert (bpe.mask_id, bpe.vocab_size) == (size, size + 1)
    assert pickle.loads(pickle.dumps(bpe)).mask_id == size  # DataLoader workers keep it

    class Plain(TextTokenizer):
        pass

    with pytest.raises(UserError, match="Plain cannot add a <mask> token for text masking: use WordTokenizer"):
        Plain().add_mask_token()


def test_clip_gets_its_mask_after_its_49408_ids_and_its_exclamation_mark_stays_maskable() -> None:
    from datamodules.tokenizer import CLIPTokenizer
    from datamodules.tokenizer.clip import default_vocab

    if default_vocab() is None:
        pytest.skip("open-clip-torch (CLIP's vocabulary) is not installed")
    clip = CLIPTokenizer(context_length=12)
    clip.add_mask_token()
    assert (clip.mask_id, clip.vocab_size) == (49408, 49409) and 0 not in clip.special_ids
    assert pickle.loads(pickle.dumps(clip)).mask_id == 49408
    ids = clip(["!~ a dog"], pad_to_context=True)  # id 0 is "!" inside the text, and the padding
    masked, labels = TokenMasking(probability=1.0, mask_fraction=1.0, random_fraction=0.0)(ids, [0], clip)
    end = int((ids[0] == clip.end_id).nonzero())
    assert (ids[0, 1:end] == 0).any() and (ids[0, end + 1 :] == 0).all()
    assert (labels[0, 1:end] == ids[0, 1:end]).all() and (labels[0, end:] == IGNORE).all() and labels[0, 0] == IGNORE
    assert (masked[0, 1:end] == 49408).all() and (masked[0, end + 1 :] == 0).all()
    assert clip.decode(masked[0].tolist()) == ""


def test_text_masking_grows_the_datamodules_vocabulary_by_one(tmp_path: Path) -> None:
    plain, masked = (
        ShapesWorldDataModule(train_samples=8),
        ShapesWorldDataModule(train_samples=8, text_masking=TokenMasking()),
    )
    assert masked.vocab_size == plain.vocab_size + 1 and masked.tokenizer.mask_id == plain.vocab_size
    assert plain.tokenizer.mask_id is None and not plain.provides_mlm and masked.provides_mlm
    dm = image_text_datamodule(tmp_path, "csv", "unused.csv", text_masking=TokenMasking())
    assert dm.vocab_size == 4 + len(WORDS) + 1 and dm.tokenizer.mask_id == 4 + len(WORDS)


# ---- masking statistics -----------------------------------------------------------------------
def test_masking_statistics_and_what_is_never_chosen() -> None:
    vocab = [f"w{i}" for i in range(50)]
    tokenizer = WordTokenizer(vocab, context_length=24)
    tokenizer.add_mask_token()
    rng = random.Random(0)  # captions of 1..20 words, a few unknown ("zz" -> <unk>)
    captions = [" ".join(rng.choice([*vocab, "zz"]) for _ in range(rng.randint(1, 20))) for _ in range(3000)]
    ids = tokenizer(captions, pad_to_context=False)
    masked, labels = TokenMasking()(ids, list(range(len(captions))), tokenizer)
    special = torch.isin(ids, torch.tensor(sorted(tokenizer.special_ids)))  # pad, start, end, unk
    chosen = labels != IGNORE
    assert not (chosen & special).any() and torch.equal(labels[chosen], ids[chosen])
    assert torch.equal(masked[~chosen], ids[~chosen])  # nothing outside the chosen changes
    eligible = int((~special).sum())
    assert abs(chosen.sum().item() / eligible - 0.15) < 0.01, chosen.sum().item() / eligible
    n = chosen.sum().item()
    to_mask = (masked == tokenizer.mask_id) & chosen
    kept = (masked == ids) & chosen  # unchanged, or a random id that drew the same token (1/55)
    random_ids = chosen & ~to_mask & ~kept
    assert abs(to_mask.sum().item() / n - 0.8) < 0.02
    assert abs(random_ids.sum().item() / n - 0.1 * 54 / 55) < 0.015
    assert abs(kept.sum().item() / n - (0.1 + 0.1 / 55)) < 0.015
    drawn = masked[random_ids]
    assert drawn.min() >= 0 and drawn.max() < tokenizer.vocab_size and len(drawn.unique()) > 40  # the whole vocabulary

    # A row's mask depends on its seed alone: not on the batch's padded width nor its neighbours.
    alone, alone_labels = TokenMasking()(tokenizer(captions[5:6], pad_to_context=False), [5], tokenizer)
    width = alone.shape[1]
    assert torch.equal(alone[0], masked[5, :width]) and torch.equal(alone_labels[0], labels[5, :width])
    assert (labels[5, width:] == IGNORE).all()


# ---- seeds that vary by epoch -------------------------------------------------------------------
def test_sampler_hands_out_epochs_only_to_datasets_that_take_them() -> None:
    data = CaptionedScenes(0, "train", 32, text_views=TextViews(synonym=0, swap=1))
    plain = CaptionedScenes(0, "train", 32)
    assert data.takes_epoch and not plain.takes_epoch
    sampler = ResumableSampler(data, 1, 0, seed=0, batch_size=4)
    sampler.set_epoch(3)
    keys = list(sampler)
    assert all(epoch == 3 for _, epoch in keys) and sorted(i for i, _ in keys) == list(range(32))
    indices = [i for i, _ in ResumableSampler(data, 1, 0, seed=0, batch_size=4)]
    assert list(ResumableSampler(plain, 1, 0, seed=0, batch_size=4)) == indices  # the same order
    resumed = ResumableSampler(data, 1, 0, seed=0, batch_size=4, skip_batches=3)
    resumed.set_epoch(3)
    assert list(resumed) == keys[12:]  # a resumed run sees the same (index, epoch) keys


def test_shapesworld_views_vary_by_epoch_and_epoch_zero_keeps_the_old_views() -> None:
    views = SSLViews()
    data = CaptionedScenes(5, "train", 16, views=views, text_views=TextViews(synonym=1, delete=1, swap=0).with_defaults(
        lang.synonyms(), lang.protected_words()), mask_seeds=True)  # fmt: skip
    for i in (0, 7):
        _, _, rng = data._sample(i)
        old_seed = rng.getrandbits(63)  # how views were seeded before they varied by epoch
        zero, one = data[(i, 0)], data[(i, 1)]
        assert torch.equal(zero["views"], views(zero["image"], seed=old_seed))
        assert torch.equal(data[i]["views"], zero["views"]) and data[i]["text_view"] == zero["text_view"]
        assert torch.equal(zero["image"], one["image"]) and zero["caption"] == one["caption"]
        assert not torch.equal(zero["views"], one["views"]) and zero["mask_seed"] != one["mask_seed"]
        assert torch.equal(data[(i, 1)]["views"], one["views"]) and data[(i, 1)]["text_view"] == one["text_view"]
    text_views = [data[(i, epoch)]["text_view"] for i in range(16) for epoch in (0, 1)]
    assert any(
        a != b for a, b in zip(text_views[::2], text_views[1::2], strict=True)
    )  # some text view changes with the epoch
    assert epoch_seed(11, 0, "views") == 11
    assert len({epoch_seed(11, e, w) for e in (0, 1) for w in ("text_view", "mask")}) == 4


# ---- batches ---------------------------------------------------------------------------------------
def test_shapesworld_batches_carry_exactly_what_is_configured() -> None:
    def train_batch(**kwargs) -> dict:
        dm = ShapesWorldDataModule(train_samples=16, batch_size=8, num_workers=0, image_size=32, **kwargs)
        return next(iter(dm.train_dataloader()))

    assert set(train_batch()) == {"image", "text", "index"}
    with pytest.warns(UserWarning, match="swap or insert > 0 can make captions false of their scene"):
        ShapesWorldDataModule(train_samples=16, text_views=TextViews())  # EDA's default swap weight 1
    assert set(train_batch(text_views=TextViews(swap=0))) == {"image", "text", "index", "text_view"}
    full = ShapesWorldDataModule(
        train_samples=16, batch_size=8, num_workers=0, image_size=32, views=SSLViews(**NO_COLOR),
        text_views=TextViews(swap=0), text_masking=TokenMasking(probability=0.5),
    )  # fmt: skip
    assert (full.provides_views, full.provides_text_view, full.provides_mlm) == (True, True, True)
    batch = next(iter(full.train_dataloader()))
    assert set(batch) == {"image", "text", "index", "views", "text_view", "mlm_labels"}
    assert batch["views"].shape == (8, 2, 3, 32, 32) and batch["views"].dtype == torch.uint8  # the model normalises
    assert batch["mlm_labels"].shape == batch["text"].shape and batch["text_view"].dtype == torch.int64
    assert (batch["text"] == full.tokenizer.mask_id).any() and not (batch["text_view"] == full.tokenizer.mask_id).any()
    assert (batch["text_view"][:, -1] != full.tokenizer.pad_id).any()  # padded to its own longest row
    evaluation = next(iter(full.val_dataloader()))
    assert not {"views", "text_view", "mlm_labels"} & set(evaluation)
    assert not (evaluation["text"] == full.tokenizer.mask_id).any()


def test_a_masked_batch_is_its_items_masked_one_by_one() -> None:
    dm = ShapesWorldDataModule(
        train_samples=16, batch_size=8, num_workers=0, image_size=16, text_masking=TokenMasking(0.5)
    )
    batch = next(iter(dm.train_dataloader()))
    collate = Collate(dm.tokenizer, pad_to_context=False, masking=dm.text_masking)
    for row, index in enumerate(batch["index"].tolist()):
        alone = collate([dm.train_set[(index, 0)]])
        width = alone["text"].shape[1]
        assert torch.equal(alone["text"][0], batch["text"][row, :width])
        assert torch.equal(alone["mlm_labels"][0], batch["mlm_labels"][row, :width])


def test_image_text_views_text_views_and_masks_on_a_csv(tmp_path: Path) -> None:
    files = str(make_csv(tmp_path))
    options = dict(views=SSLViews(**NO_COLOR), text_views=TextViews(synonym=0, swap=1, delete=1),
                   text_masking=TokenMasking(probability=0.5))  # fmt: skip
    dm = image_text_datamodule(tmp_path, "csv", files, **options)
    assert (dm.provides_views, dm.provides_text_view, dm.provides_mlm) == (True, True, True)
    with pytest.warns(UserWarning):
        dm.setup("fit")
        batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"image", "text", "index", "skipped", "views", "text_view", "mlm_labels"}
    assert batch["views"].shape == (7, 2, 3, SIZE, SIZE) and batch["mlm_labels"].shape == batch["text"].shape
    # Views are normalised like the image: the red image's views are red wherever the crop lands.
    red = [i for i, ids in enumerate(batch["text_view"].tolist()) if "red" in dm.tokenizer.decode(ids)]
    assert red and torch.allclose(batch["views"][red[0]], batch["image"][red[0]], atol=1e-3)
    for ids in batch["text_view"].tolist():  # the caption's own words only
        assert set(dm.tokenizer.decode(ids).split()) <= set(WORDS) - {"broken", "picture"}
    # A pure function of (seed, row, epoch): the same in a second datamodule, different next epoch.
    rows = dm.train_set
    other = image_text_datamodule(tmp_path, "csv", files, **options)
    with pytest.warns(UserWarning):
        other.setup("fit")
        other.train_dataloader()
    assert torch.equal(rows[(0, 0)]["views"], other.train_set[(0, 0)]["views"])
    assert rows[(0, 0)]["mask_seed"] == other.train_set[(0, 0)]["mask_seed"] != rows[(0, 1)]["mask_seed"]
    rows.augment = dataclasses.replace(rows.augment, views=SSLViews())  # colour jitter: flat images vary too
    assert all(not torch.equal(rows[(i, 0)]["views"], rows[(i, 1)]["views"]) for i in range(len(rows)))
    plain = image_text_datamodule(tmp_path, "csv", files)
    with pytest.warns(UserWarning):
        plain.setup("fit")
        assert set(next(iter(plain.train_dataloader()))) == {"image", "text", "index", "skipped"}
    assert not (plain.provides_views or plain.provides_text_view or plain.provides_mlm)


def test_a_stream_carries_views_text_views_and_masks_too(tmp_path: Path) -> None:
    make_shards(tmp_path / "shards")
    options = dict(views=SSLViews(), text_views=TextViews(synonym=0), text_masking=TokenMasking())
    batches = []
    for _ in range(2):  # a pure function of (seed, rank, worker, position): the same stream twice
        dm = image_text_datamodule(tmp_path, "webdataset", str(tmp_path / "shards" / "*.tar"), batch_size=3, **options)
        dm.setup("fit")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            batches.append(next(iter(dm.train_dataloader())))
    assert set(batches[0]) == {"image", "text", "skipped", "views", "text_view", "mlm_labels"}
    assert batches[0]["views"].shape == (3, 2, 3, SIZE, SIZE)
    for key in ("views", "text_view", "text", "mlm_labels"):
        assert torch.equal(batches[0][key], batches[1][key])


def test_image_text_synonym_replacement_without_a_table_is_a_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="synonym replacement needs a synonym table and image-text data has none") as e:
        image_text_datamodule(tmp_path, "csv", "unused.csv", text_views=TextViews())
    assert "set synonym: 0" in str(e.value) and "\n" not in str(e.value)
    dm = image_text_datamodule(tmp_path, "csv", "unused.csv", text_views=TextViews(synonyms={"red": ["crimson"]}))
    assert dm.provides_text_view
