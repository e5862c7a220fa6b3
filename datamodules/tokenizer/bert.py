"""BERT's WordPiece tokenizer (HF ``tokenizers``), as Chinese-CLIP (``cn_clip``) tokenizes captions.

BERT's basic tokenisation (Devlin et al. 2019; ``cn_clip/clip/bert_tokenizer.py``): clean control
characters, lowercase and strip accents, put spaces around every CJK character (each is its own
token) and split on whitespace and punctuation; then greedy longest-match WordPiece with ``##``
continuations, [UNK] for a word with no match. Rows are ``[CLS] tokens [SEP]`` padded with [PAD]
(id 0); a long text keeps its first ``context_length - 2`` tokens and still ends with [SEP], exactly
as ``cn_clip.clip.tokenize`` (whose default context length, 52, is this one's).

The vocabulary is a BERT ``vocab.txt`` (one token per line, the id is the line number; UTF-8): a
path (or a model folder holding it), ``"cn_clip"`` for the file the ``cn_clip`` package installs
(found on disk, without importing the package, which imports torch models), or, with ``words=``,
one built from a closed vocabulary such as Chinese ShapesWorld's: the specials, each word, then
each of their characters.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable, Sequence
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

from common.errors import UserError
from datamodules.tokenizer.base import HFTokenizer, check_context_length

PAD, UNK, CLS, SEP, MASK = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"
BERT_SPECIALS = (PAD, UNK, CLS, SEP, MASK)


def cn_clip_vocab() -> Path:
    """The ``vocab.txt`` that ``pip install cn_clip`` puts beside its tokenizer (21,128 tokens: BERT's
    Chinese vocabulary, which RoBERTa-wwm-ext and Chinese-CLIP use)."""
    spec = importlib.util.find_spec("cn_clip")  # locates the package without running its __init__
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            "vocab 'cn_clip' needs the cn_clip package for its vocab.txt: `pip install cn_clip`, "
            "or give the path of a BERT vocab.txt"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "clip" / "vocab.txt"
    if not path.is_file():
        raise UserError(f"cn_clip is installed but {path} is missing; give the path of a BERT vocab.txt instead")
    return path


def vocab_path(vocab: str) -> Path:
    """The vocab.txt that ``vocab`` names: ``"cn_clip"`` for cn_clip's, a file, or a folder holding a
    vocab.txt (a Hugging Face model folder keeps its vocabulary there, beside config.json, so the
    folder an HFTextTower loads ``pretrained`` from is also its tokenizer's ``vocab``)."""
    path = cn_clip_vocab() if vocab == "cn_clip" else Path(vocab)
    if path.is_dir():
        if not (path / "vocab.txt").is_file():
            raise UserError(
                f"BERT vocabulary {path} is a directory without a vocab.txt: give the path of a vocab.txt file "
                "(or a model folder that holds one), or 'cn_clip'"
            )
        return path / "vocab.txt"
    if not path.is_file():
        raise UserError(f"BERT vocabulary file {path} does not exist: give the path of a vocab.txt, or 'cn_clip'")
    return path


def read_vocab(vocab: str) -> list[str]:
    """The tokens of a BERT vocab.txt (``"cn_clip"`` for cn_clip's, or a folder holding one), in id order."""
    path = vocab_path(vocab)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:  # Chinese vocabularies saved as GBK are common
        raise UserError(
            f"BERT vocabulary file {path} is not UTF-8 text (byte 0x{error.object[error.start]:02x} at offset "
            f"{error.start}); vocab.txt files are read as UTF-8: convert it, e.g. "
            f"`iconv -f GBK -t UTF-8 {path.name} > vocab-utf8.txt`"
        ) from None
    # BERT's load_vocab: one token per line, stripped; the id is the line number. Lines end at "\n"
    # only (str.splitlines also breaks at \x1c, \x85, ... which occur inside cn_clip's vocabulary).
    tokens = [line.strip() for line in text.removesuffix("\n").split("\n")]
    missing = [token for token in (PAD, UNK, CLS, SEP) if token not in tokens]
    if missing:
        raise UserError(f"{path} is not a BERT vocab.txt: it lacks {', '.join(missing)}")
    return tokens


def words_vocab(words: Iterable[str]) -> list[str]:
    """A WordPiece vocabulary for a closed language: the specials, each word (lowercased) and then
    every character of the words, so that any text made of them tokenizes without [UNK] (a CJK
    character is always its own token; an English word missing whole still splits into characters)."""
    words = [w.lower() for w in words]
    chars = [c for w in words for c in w if not c.isspace()]
    continuations = [f"##{c}" for c in chars if not _is_cjk(c)]
    return list(dict.fromkeys([*BERT_SPECIALS, *(w for w in words if " " not in w), *chars, *continuations]))


def _is_cjk(char: str) -> bool:
    return 0x4E00 <= ord(char) <= 0x9FFF or 0x3400 <= ord(char) <= 0x4DBF or 0xF900 <= ord(char) <= 0xFAFF


class BertTokenizer(HFTokenizer):
    """Maps texts to [B, context_length] ids with BERT's WordPiece; unknown pieces map to [UNK].

    Args:
        vocab: a BERT vocab.txt path (or a folder holding a vocab.txt, as a Hugging Face model folder
            does), or "cn_clip" for the one the cn_clip package installs.
        context_length: length of every row, [CLS] and [SEP] included (cn_clip: 52).
        words: instead of ``vocab``, build the vocabulary from these words (:func:`words_vocab`).
    """

    pad_id = 0
    unk_id: int  # every BERT vocabulary has [UNK] (read_vocab and words_vocab make sure)

    def __init__(self, vocab: str | None = None, context_length: int = 52, words: Iterable[str] | None = None) -> None:
        check_context_length(context_length)
        if (vocab is None) == (words is None):
            raise UserError("BertTokenizer takes exactly one of vocab (a vocab.txt path or 'cn_clip') and words")
        tokens = read_vocab(vocab) if vocab is not None else words_vocab(words or [])
        ids = {token: i for i, token in enumerate(tokens)}  # a repeated line keeps its last id, as BERT's dict
        if ids[PAD] != 0:
            raise UserError(f"{vocab}: [PAD] must be id 0 (it is {ids[PAD]}); the text tower pads with 0")
        # cn_clip's WordpieceTokenizer: words over 200 characters become [UNK].
        tokenizer = Tokenizer(models.WordPiece(ids, unk_token=UNK, max_input_chars_per_word=200))
        # The specials are NOT registered as HF special tokens: a caption that contains "[MASK]" or
        # "[PAD]" literally is ordinary text to cn_clip (split at the brackets), and must not become
        # a mask or a padding id here. The template and the padding name their ids directly.
        tokenizer.normalizer = normalizers.BertNormalizer(
            clean_text=True,
            handle_chinese_chars=True,
            strip_accents=None,
            lowercase=True,  # accents: as lowercase
        )
        tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tokenizer.decoder = decoders.WordPiece()
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{CLS} $A {SEP}", special_tokens=[(CLS, ids[CLS]), (SEP, ids[SEP])]
        )
        tokenizer.enable_truncation(max_length=context_length)  # keeps room for [CLS] and [SEP]
        tokenizer.enable_padding(pad_id=self.pad_id, pad_token=PAD)
        self.tokenizer, self.context_length = tokenizer, context_length
        self.vocab, self.words = vocab, None if words is None else list(words)
        self.unk_id = ids[UNK]
        self._specials = frozenset(ids[t] for t in BERT_SPECIALS if t in ids)
        self._mask = ids.get(MASK)

    def __reduce__(self) -> tuple:
        # Rebuilt from its arguments in dataloader workers (an HF Tokenizer pickles, but this is
        # smaller), with the mask id a datamodule's text masking turned on (spawned workers need it).
        return type(self), (self.vocab, self.context_length, self.words), {"mask_id": self.mask_id}

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()  # [MASK] is already in every BERT vocabulary

    @property
    def special_ids(self) -> frozenset[int]:
        return self._specials

    def add_mask_token(self) -> int:
        """BERT's vocabulary has [MASK]: masking uses it and the vocabulary does not grow."""
        if self._mask is None:
            raise UserError(f"{self.vocab} has no [MASK] token for text masking; set data.init_args.text_masking: null")
        self.mask_id = self._mask
        return self.mask_id

    def unknown(self, texts: str | Sequence[str]) -> int:
        """How many [UNK] tokens ``texts`` produce (a prompt check counts characters the vocabulary lacks)."""
        ids = self(texts, pad_to_context=False)
        return int((ids == self.unk_id).sum())

    def decode(self, ids: Sequence[int]) -> str:
        text = self.tokenizer.decode([int(i) for i in ids if int(i) not in self._specials])
        return _join_cjk(text)


def _join_cjk(text: str) -> str:
    """WordPiece decoding puts spaces between all tokens; CJK text has none between its characters
    (a space between a CJK character and a Latin word stays)."""
    out: list[str] = []
    for i, char in enumerate(text):
        if char == " " and 0 < i < len(text) - 1 and _is_cjk(text[i - 1]) and _is_cjk(text[i + 1]):
            continue
        out.append(char)
    return "".join(out)
