"""The check that stops a run whose tokenizer maps its captions or a class prompt mostly to the
unknown token (``datamodules.tokenizer.coverage``): its thresholds, the prompts it reads, English
and Chinese ShapesWorld, and every kind of tokenizer (word-level, BERT WordPiece, trained BPE,
CLIP's byte-level BPE, which has no unknown token)."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.errors import UserError
from datamodules.shapesworld import ShapesWorldDataModule, captions_zh
from datamodules.shapesworld.captions import vocabulary
from datamodules.tokenizer import BertTokenizer, BPETokenizer, CLIPTokenizer, WordTokenizer
from datamodules.tokenizer.bert import BERT_SPECIALS
from datamodules.tokenizer.bpe import train_bpe, write_tokenizer
from datamodules.tokenizer.coverage import (
    MAX_CAPTION_UNKNOWN,
    check_captions,
    check_prompts,
    mostly_unknown,
    sample_indices,
    unknown_counts,
)

WORDS = ["a", "red", "blue", "circle", "square", "left", "of", "the", "big", "small"]
CHINESE = ["一个红色的圆形在蓝色正方形的左边", "一张有两个物体的图片", "三个星形"]


def vocab_file(folder: Path, tokens: list[str]) -> str:
    path = folder / "vocab.txt"
    path.write_text("\n".join([*BERT_SPECIALS, *tokens]) + "\n", encoding="utf-8")
    return str(path)


def test_word_tokens_exclude_start_end_and_padding_but_count_unknowns() -> None:
    tokenizer = WordTokenizer(WORDS, context_length=12)
    unknown, words = unknown_counts(tokenizer, ["a red zebra", "circle", "zebra giraffe okapi"])
    assert unknown.tolist() == [1, 0, 3] and words.tolist() == [3, 1, 3]


@pytest.mark.parametrize(("known", "unknown", "stops"), [(9, 1, False), (8, 2, True), (0, 10, True)])
def test_captions_stop_above_a_tenth_of_unknown_tokens(known: int, unknown: int, stops: bool) -> None:
    tokenizer = WordTokenizer(WORDS, context_length=32)
    caption = " ".join(["red"] * known + ["zebra"] * unknown)
    captions = [caption] * 20
    if not stops:
        check_captions(tokenizer, captions, "data", "fix it")
        return
    with pytest.raises(UserError) as error:
        check_captions(tokenizer, captions, "data", "use another vocabulary")
    message = str(error.value)
    assert "\n" not in message and f"more than {MAX_CAPTION_UNKNOWN:.0%}" in message
    assert f"{caption!r} ({unknown} of {known + unknown} tokens unknown)" in message  # the worst caption
    assert message.startswith("data: the tokenizer (WordTokenizer) maps") and message.endswith("use another vocabulary")


def test_a_prompt_stops_the_run_only_when_more_than_half_is_unknown() -> None:
    tokenizer = WordTokenizer(WORDS, context_length=16)
    assert mostly_unknown(tokenizer, ["a zebra", "a striped zebra", "zebra"]) == [(1, 2, 3), (2, 1, 1)]
    check_prompts(tokenizer, [("class zebra", "a zebra"), ("class okapi", "the okapi")], "prompts", "fix")
    with pytest.raises(UserError, match=r"prompts: .* maps the class prompt 'a striped zebra' \(class zebra\) mostly to "
                       r"its unknown token \(2 of 3 tokens, and 1 more prompts\), so its class cannot be told apart: "
                       r"fix$"):  # fmt: skip
        check_prompts(tokenizer, [("class zebra", "a striped zebra"), ("class okapi", "okapi")], "prompts", "fix")


def test_sample_indices_spread_over_the_data() -> None:
    assert sample_indices(5) == [0, 1, 2, 3, 4]
    assert sample_indices(1000, 4) == [0, 250, 500, 750]


def test_clip_byte_level_bpe_has_no_unknown_token_so_the_check_passes() -> None:
    pytest.importorskip("open_clip")
    tokenizer = CLIPTokenizer(context_length=32)
    texts = [*CHINESE, "emoji 😀 and ünïcödé", "\x00\x01 control bytes"]
    assert tokenizer.unk_id is None and unknown_counts(tokenizer, texts) is None
    check_captions(tokenizer, texts, "data", "fix")
    check_prompts(tokenizer, [("class", text) for text in texts], "prompts", "fix")


def test_a_trained_bpe_maps_unseen_characters_to_unknown(tmp_path: Path) -> None:
    path = write_tokenizer(train_bpe([" ".join(WORDS)] * 4, vocab_size=100, min_frequency=1), tmp_path)
    tokenizer = BPETokenizer(str(path), context_length=32)
    check_captions(tokenizer, ["a red circle left of the big square"], "data", "fix")
    with pytest.raises(UserError, match=r"BPETokenizer over .*tokenizer.json\) maps 100.0% of the tokens"):
        check_captions(tokenizer, CHINESE, "data", "fix")


def test_bert_wordpiece_counts_each_missing_character(tmp_path: Path) -> None:
    english = BertTokenizer(vocab_file(tmp_path, WORDS), context_length=32)
    assert unknown_counts(english, ["一个红色"])[0].tolist() == [4]  # every CJK character is its own [UNK]
    with pytest.raises(UserError, match=r"BertTokenizer over .*vocab.txt\) maps 100.0% of the tokens of 3"):
        check_captions(english, CHINESE, "data", "fix")
    check_captions(BertTokenizer(words=captions_zh.vocabulary()), CHINESE, "data", "fix")


# --- ShapesWorld, both languages: the datamodule checks its captions and every zero-shot prompt ---------


def shapesworld(**kwargs) -> ShapesWorldDataModule:
    return ShapesWorldDataModule(train_samples=512, val_samples=4, test_samples=4, num_workers=0, **kwargs)


@pytest.mark.parametrize(
    "options",
    [
        {"language": "en"},
        {"language": "zh"},
        {"language": "both"},
        {"language": "zh", "vocab": "cn_clip"},
        {"language": "both", "vocab": "cn_clip"},
    ],  # fmt: skip
    ids=["en", "zh", "both", "zh-cn_clip", "both-cn_clip"],
)
def test_shapesworld_vocabularies_cover_their_captions_and_prompts(options: dict) -> None:
    if options.get("vocab") == "cn_clip":
        pytest.importorskip("cn_clip")
    shapesworld(**options).setup("fit")


@pytest.mark.parametrize(("language", "share"), [("zh", "100.0%"), ("both", "6")])
def test_chinese_captions_with_an_english_vocabulary_stop_before_training(
    language: str, share: str, tmp_path: Path
) -> None:
    data = shapesworld(language=language, vocab=vocab_file(tmp_path, vocabulary()))  # construction is fine
    with pytest.raises(UserError) as error:
        data.setup("fit")
    message = str(error.value)
    assert f"maps {share}" in message and "sampled training captions" in message and "\n" not in message
    assert "set data.init_args.vocab: cn_clip" in message
    data.setup("test")  # the check is the fit's alone (the analysis rebuilds datamodules of finished runs)


def test_english_captions_with_a_chinese_vocabulary_stop_too(tmp_path: Path) -> None:
    chinese_only = sorted({c for word in captions_zh.vocabulary() for c in word})
    data = shapesworld(language="en", vocab=vocab_file(tmp_path, chinese_only))
    with pytest.raises(UserError, match=r"maps 100.0% of the tokens .* e.g. 'a .*vocab: cn_clip"):
        data.setup("fit")


def test_every_zero_shot_prompt_is_checked_even_when_the_captions_pass() -> None:
    """A vocabulary without "one" and "object": 2% of the caption tokens are unknown (the captions
    pass), the count task's prompt "one object" is all unknown (the run stops, naming it)."""
    data = shapesworld(language="en")
    data.check_vocabulary()
    data.tokenizer = WordTokenizer([w for w in vocabulary() if w not in ("one", "object")], context_length=32)
    with pytest.raises(UserError, match=r"maps the class prompt 'one object' \(task count, class one object\) mostly "
                       r"to its unknown token \(2 of 2 tokens\), so"):  # fmt: skip
        data.check_vocabulary()
