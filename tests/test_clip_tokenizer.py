"""The CLIP BPE tokenizer gives open_clip's ids, id for id, on a corpus built to break it:
punctuation, digits, accents, scripts, emoji, HTML entities, mojibake, control characters,
odd whitespace, contractions in any case, literal special tokens, texts past the context."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys

import pytest
import torch

from common.errors import UserError
from datamodules.tokenizer import CLIPTokenizer, TextTokenizer
from datamodules.tokenizer import clip as clip_module

from helpers import REPO
from helpers.corpus import corpus

open_clip_tokenizer = pytest.importorskip("open_clip.tokenizer")

CORPUS = corpus()


@pytest.fixture(scope="module")
def reference() -> open_clip_tokenizer.SimpleTokenizer:
    return open_clip_tokenizer.SimpleTokenizer()


def first_difference(ours: torch.Tensor, theirs: torch.Tensor) -> str:
    rows = (ours != theirs).any(dim=1).nonzero().flatten().tolist()
    if not rows:
        return ""
    return f"{len(rows)} rows differ, first {CORPUS[rows[0]]!r}: {ours[rows[0]].tolist()} vs {theirs[rows[0]].tolist()}"


@pytest.mark.parametrize("context_length", [77, 32])
def test_ids_are_open_clips_id_for_id(context_length: int, reference) -> None:
    assert len(CORPUS) >= 500
    ours = CLIPTokenizer(context_length)(CORPUS)
    theirs = reference(CORPUS, context_length=context_length)
    assert ours.dtype == theirs.dtype == torch.long and ours.shape == theirs.shape == (len(CORPUS), context_length)
    assert torch.equal(ours, theirs), first_difference(ours, theirs)
    assert (theirs[:, -1] == 49407).sum() >= 10  # the corpus does reach truncation
    assert torch.equal(CLIPTokenizer(context_length)(CORPUS[7]), reference(CORPUS[7], context_length))  # a bare string


def test_clean_up_is_open_clips_and_skips_ftfy_only_where_ftfy_changes_nothing() -> None:
    for text in CORPUS:
        assert clip_module.clean(text) == open_clip_tokenizer._clean_lower(text), repr(text)
        if clip_module._PLAIN.fullmatch(text):
            assert open_clip_tokenizer.ftfy.fix_text(text) == text, repr(text)


def test_the_interface(reference) -> None:
    tokenizer = CLIPTokenizer()
    assert isinstance(tokenizer, TextTokenizer)
    assert (tokenizer.vocab_size, tokenizer.context_length, tokenizer.pad_id, tokenizer.unk_id) == (49408, 77, 0, None)
    assert (tokenizer.start_id, tokenizer.end_id) == (49406, 49407) == tuple(reference.all_special_ids)
    assert tokenizer.state_dict() == {}
    short = tokenizer(CORPUS[:50], pad_to_context=False)  # padded to the longest row of the call only
    lengths = (tokenizer(CORPUS[:50]) == tokenizer.end_id).int().argmax(dim=1) + 1
    assert short.shape == (50, int(lengths.max()))
    assert torch.equal(short, tokenizer(CORPUS[:50])[:, : short.shape[1]])
    assert tokenizer([], pad_to_context=True).shape == (0, 77)


def test_pad_id_is_also_a_token_inside_texts_and_rows_still_end_with_the_end_token() -> None:
    tokenizer = CLIPTokenizer()
    assert (tokenizer.decoder[0], tokenizer.decoder[256]) == ("!", "!</w>")  # "!" inside a word, "!" ending one
    ids = tokenizer(["a dog!~", "a dog!"], pad_to_context=False)
    assert ids.tolist() == [[49406, 320, 1929, 0, 349, 49407], [49406, 320, 1929, 256, 49407, 0]]


def test_decode_round_trip(reference) -> None:
    tokenizer = CLIPTokenizer()
    for text in ["a red square left of a blue circle", "a photo of a café", "two dogs and 3 cats"]:
        ids = tokenizer(text)[0]
        assert tokenizer.decode(ids) == text
        assert tokenizer.decode(ids.tolist()) == reference.decode(ids[1 : ids.tolist().index(49407)].tolist()).strip()
    assert tokenizer.decode(tokenizer("A Dog, running!")[0]) == "a dog , running !"


def test_explicit_bpe_path_and_pickling_give_the_same_ids(reference) -> None:
    tokenizer = CLIPTokenizer(32, bpe_path=open_clip_tokenizer.default_bpe())
    restored = pickle.loads(pickle.dumps(tokenizer))
    assert len(pickle.dumps(tokenizer)) < 1000  # its arguments, not its tables (DataLoader workers)
    assert torch.equal(restored(CORPUS[:100]), reference(CORPUS[:100], context_length=32))


def test_a_missing_vocabulary_says_what_to_do(tmp_path, monkeypatch) -> None:
    with pytest.raises(UserError, match="bpe_path .*missing.txt.gz does not exist.*pip install open-clip-torch"):
        CLIPTokenizer(bpe_path=str(tmp_path / "missing.txt.gz"))
    monkeypatch.setattr(clip_module, "default_vocab", lambda: None)
    with pytest.raises(UserError, match="open-clip-torch is not installed.*pip install open-clip-torch.*bpe_path"):
        CLIPTokenizer()
    with pytest.raises(UserError, match="context_length"):
        CLIPTokenizer(2, bpe_path=open_clip_tokenizer.default_bpe())


@pytest.mark.cli
def test_the_vocabulary_is_found_without_importing_open_clip() -> None:
    code = (
        "import sys; from datamodules.tokenizer.clip import default_vocab; path = default_vocab(); "
        "assert path and path.name == 'bpe_simple_vocab_16e6.txt.gz', path; assert 'open_clip' not in sys.modules"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO))
    subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, check=True, timeout=120)
