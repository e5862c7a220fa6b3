"""The BERT WordPiece tokenizer gives cn_clip's ids, id for id, on Chinese, mixed and English texts
(the CLIP tokenizer's adversarial corpus plus Chinese captions, CJK punctuation, full-width forms,
rare characters and texts past the context), and its own small vocabularies never lose a word."""

from __future__ import annotations

import pickle
import random

import pytest
import torch

from common.errors import UserError
from datamodules.tokenizer import BertTokenizer
from datamodules.tokenizer.bert import cn_clip_vocab

from helpers.corpus import corpus as english_corpus

CHINESE = [
    "一个红色的圆形在蓝色正方形的左边", "图中有三个物体", "没有星形。", "一张猫的照片，很可爱！", "「引号」和《书名号》",
    "全角ＡＢＣ１２３", "繁體中文測試", "龘靐齉爩", "日本語のテキスト", "ﾊﾝｶｸ", "一、二、三；四：五？", "中" * 80,
    "中文mixed英文 text 混合123", "3.14是圆周率", "emoji😀表情", "  前后空格  ", "换\n行\t制表", "㐀㐁 扩展A", "𠀀 扩展B",
    "[MASK] 猫", "a [PAD] b [CLS][SEP]", "[UNK]", "[mask]",
]  # fmt: skip


def corpus() -> list[str]:
    rng = random.Random(1)
    chars = [c for text in CHINESE[:12] for c in text]
    mixed = [
        "".join(rng.choices(chars, k=rng.randint(1, 30))) + rng.choice(["", " cat", "!", " 2"]) for _ in range(100)
    ]
    return CHINESE + mixed + english_corpus()


@pytest.fixture(scope="module")
def cn_clip_tokenize():
    pytest.importorskip("cn_clip")
    from cn_clip.clip import tokenize

    return tokenize


@pytest.mark.parametrize("context_length", [52, 8])
def test_ids_equal_cn_clip_tokenize(cn_clip_tokenize, context_length: int) -> None:
    texts = corpus()
    ours = BertTokenizer("cn_clip", context_length)(texts)
    theirs = cn_clip_tokenize(texts, context_length=context_length)
    differ = [texts[i] for i in torch.nonzero((ours != theirs).any(dim=1)).flatten().tolist()]
    assert not differ, f"{len(differ)} of {len(texts)} texts differ, e.g. {differ[:3]}"


def test_vocab_file_found_without_importing_cn_clip() -> None:
    pytest.importorskip("cn_clip")
    import sys

    sys.modules.pop("cn_clip", None)
    path = cn_clip_vocab()
    assert path.name == "vocab.txt" and "cn_clip" not in sys.modules
    assert BertTokenizer(str(path)).vocab_size == BertTokenizer("cn_clip").vocab_size == 21128


def test_words_vocabulary_knows_every_word_and_character() -> None:
    words = ["红色", "圆形", "在", "的", "左边", "red", "circle", "left"]
    tokenizer = BertTokenizer(words=words, context_length=16)
    assert tokenizer.unknown(["红色的圆形在左边", "a red circle left", "circle red 红"]) == 1  # "a" is not a word
    assert tokenizer.unknown("龘") == 1  # a character outside the vocabulary: [UNK], counted
    assert tokenizer.decode(tokenizer("红色的圆形 red circle")[0].tolist()) == "红色的圆形 red circle"


def test_rows_start_end_pad_and_truncate() -> None:
    tokenizer = BertTokenizer(words=["中"], context_length=5)
    ids = tokenizer(["中", "中中中中中中"])
    cls, sep = tokenizer.tokenizer.token_to_id("[CLS]"), tokenizer.tokenizer.token_to_id("[SEP]")
    assert ids.tolist()[0] == [cls, 5, sep, 0, 0] and ids.tolist()[1] == [cls, 5, 5, 5, sep]


def test_masking_uses_bert_mask_without_growing_the_vocabulary() -> None:
    tokenizer = BertTokenizer(words=["中"])
    size = tokenizer.vocab_size
    assert tokenizer.add_mask_token() == tokenizer.tokenizer.token_to_id("[MASK]") and tokenizer.vocab_size == size
    assert tokenizer.mask_id in tokenizer.special_ids and tokenizer.unk_id in tokenizer.special_ids


def test_pickles_for_dataloader_workers_with_the_mask_id() -> None:
    tokenizer = BertTokenizer(words=["红色", "圆形"], context_length=12)
    tokenizer.add_mask_token()
    again = pickle.loads(pickle.dumps(tokenizer))
    assert torch.equal(again(["红色圆形", "绿"]), tokenizer(["红色圆形", "绿"])) and again.mask_id == tokenizer.mask_id


def test_bad_vocabularies_are_named(tmp_path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        BertTokenizer(str(tmp_path / "missing.txt"))
    bad = tmp_path / "vocab.txt"
    bad.write_text("a\nb\n", encoding="utf-8")
    with pytest.raises(UserError, match="lacks"):
        BertTokenizer(str(bad))
    with pytest.raises(UserError, match="exactly one"):
        BertTokenizer()


def test_a_gbk_vocabulary_names_the_file_and_utf8(tmp_path) -> None:
    """Chinese vocabularies saved as GBK are common; a UnicodeDecodeError is not the message."""
    path = tmp_path / "vocab.txt"
    path.write_bytes("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "红色", "圆形"]).encode("gbk"))
    with pytest.raises(
        UserError, match=rf"{path} is not UTF-8 text \(byte 0x[0-9a-f]{{2}} at offset 24\); .*iconv -f GBK"
    ) as error:
        BertTokenizer(str(path))
    assert "\n" not in str(error.value)


def test_a_folder_holding_a_vocab_txt_is_taken_as_hf_does(tmp_path) -> None:
    (tmp_path / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "红"]) + "\n", encoding="utf-8")
    assert BertTokenizer(str(tmp_path), context_length=4)(["红"]).tolist() == [[2, 4, 3, 0]]
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="empty is a directory without a vocab.txt: give the path of a vocab.txt"):
        BertTokenizer(str(tmp_path / "empty"))


def test_the_prompt_check_counts_a_character_missing_from_the_vocabulary() -> None:
    from types import SimpleNamespace

    from analysis.zeroshot import prompt_check

    tokenizer = BertTokenizer(words=["红色", "圆形", "一个"], context_length=16)
    check = prompt_check(SimpleNamespace(tokenizer=tokenizer), [["一个红色圆形"], ["一个红色龘形"]])
    assert check == {
        "indistinguishable_classes": 0,
        "unknown_word_fraction": pytest.approx(1 / 12),  # 12 characters
        "mostly_unknown_prompts": 0,
    }
    assert prompt_check(SimpleNamespace(tokenizer=tokenizer), [["龘龘"], ["一个"]])["mostly_unknown_prompts"] == 1
