"""OpenAI CLIP's BPE tokenizer on HF ``tokenizers``: the ids of open_clip's ``tokenize``, faster.

Text clean-up is open_clip's, in Python (``ftfy.fix_text``, HTML unescaped twice, whitespace
collapsed, lowercase); the Rust tokenizer then splits with CLIP's regex, maps bytes to CLIP's
unicode alphabet and applies the BPE merges with the ``</w>`` end-of-word suffix (the layout of HF
transformers' CLIP fast tokenizer, without its NFC and whitespace normalisers, which the Python
clean-up already does as open_clip does it).

Ids: 49406 start, 49407 end, 0 padding; with text masking, 49408 <mask> (appended; official DeCLIP
puts <|mask|> before start and end, which would move CLIP's ids). Id 0 is also a token of CLIP's
vocabulary ("!" not ending a word, as in "!~"; a final "!" is 256), as in OpenAI's and open_clip's
tokenizers: intended, rows are read up to their end token (the text tower pools at the last non-pad
position, the end token), so such a "!" inside a text is just a token.
"""

from __future__ import annotations

import gzip
import html
import importlib.util
import re
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import ftfy
import torch
from tokenizers import Regex, Tokenizer, models, pre_tokenizers

from common.errors import UserError
from datamodules.tokenizer.base import TextTokenizer, check_context_length, padded

VOCAB_FILE = "bpe_simple_vocab_16e6.txt.gz"
SPECIALS = ("<start_of_text>", "<end_of_text>")
# open_clip's pattern (compiled there with IGNORECASE: the contractions match any case)
PATTERN = "|".join(SPECIALS) + r"""|(?i:'s|'t|'re|'ve|'m|'ll|'d)|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
# text ftfy leaves as it is: printable ASCII without '&' (no mojibake, entity, control or escape)
_PLAIN = re.compile(r"[\t\n !-%'-~]*")


@lru_cache
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable character map; its order is the vocabulary's."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    return {**{b: chr(b) for b in printable}, **{b: chr(256 + n) for n, b in enumerate(others)}}


def clean(text: str) -> str:
    """open_clip's 'lower' clean-up; ftfy is skipped on text it provably leaves unchanged (speed)."""
    if not _PLAIN.fullmatch(text):
        text = ftfy.fix_text(text)
    return " ".join(html.unescape(html.unescape(text)).split()).lower()


def default_vocab() -> Path | None:
    """The vocabulary file open_clip ships, found without importing open_clip (and torch with it)."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / VOCAB_FILE
    return path if path.is_file() else None


class CLIPTokenizer(TextTokenizer):
    """OpenAI CLIP's tokenizer: 49408 ids, rows ``<start_of_text> ... <end_of_text>`` then 0s.

    Args:
        context_length: length of every row, start and end included (CLIP models use 77).
        bpe_path: CLIP's merges file (``bpe_simple_vocab_16e6.txt.gz``); None takes the one
            open-clip-torch installs.
    """

    pad_id = 0

    def __init__(self, context_length: int = 77, bpe_path: str | None = None) -> None:
        check_context_length(context_length)
        path = Path(bpe_path) if bpe_path else default_vocab()
        if path is None or not path.is_file():
            where = f"bpe_path {bpe_path} does not exist" if bpe_path else "open-clip-torch is not installed"
            raise UserError(
                f"the CLIP tokenizer needs CLIP's {VOCAB_FILE}: {where}; `pip install open-clip-torch` "
                "(or the suite's `clip` extra) or pass bpe_path"
            )
        self.context_length, self.bpe_path = context_length, bpe_path
        self.tokenizer, self.encoder = _build(str(path))
        self.start_id, self.end_id = (self.encoder[s] for s in SPECIALS)
        self.decoder = {i: token for token, i in self.encoder.items()}

    def __reduce__(self) -> tuple:
        """Pickled as its arguments (DataLoader workers rebuild it) rather than as 49408-token tables;
        the mask id (text masking) travels as state."""
        return type(self), (self.context_length, self.bpe_path), {"mask_id": self.mask_id}

    def _base_vocab_size(self) -> int:
        return len(self.encoder)

    @property
    def vocab_size(self) -> int:
        return self._base_vocab_size() + (self.mask_id is not None)

    @property
    def special_ids(self) -> frozenset[int]:
        # Not the padding id 0: inside a text it is the token "!" (padding is found by position).
        return frozenset(i for i in (self.start_id, self.end_id, self.mask_id) if i is not None)

    def __call__(self, texts: str | Sequence[str], pad_to_context: bool = True) -> torch.Tensor:
        """A text or a list of texts -> int64 ids [B, context_length] (or [B, longest row of the call]
        with ``pad_to_context=False``); too long texts keep their first tokens and the end token."""
        texts = [clean(text) for text in ([texts] if isinstance(texts, str) else texts)]
        rows = [e.ids for e in self.tokenizer.encode_batch(texts, add_special_tokens=False)]
        for i, text in enumerate(texts):
            if "_of_text>" in text:  # a literal special token in the text: open_clip keeps it special
                rows[i] = self._encode_with_specials(text)
        keep = self.context_length - 2
        rows = [[self.start_id, *row[:keep], self.end_id] for row in rows]
        return padded(rows, self.context_length if pad_to_context else 0, self.pad_id)

    def _encode_with_specials(self, text: str) -> list[int]:
        """The slow path for text holding "<start_of_text>"/"<end_of_text>": the split regex keeps
        them whole where open_clip's does, and they map to their ids instead of being merged."""
        ids = []
        for piece, _ in self.tokenizer.pre_tokenizer.pre_tokenize_str(text):
            ids += [self.encoder[piece]] if piece in SPECIALS else [t.id for t in self.tokenizer.model.tokenize(piece)]
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        """Ids -> text, without the start token and without anything from the end token on."""
        ids = [int(i) for i in ids if int(i) != self.mask_id]  # the mask id is no text
        ids = ids[1:] if ids[:1] == [self.start_id] else ids
        ids = ids[: ids.index(self.end_id)] if self.end_id in ids else ids
        byte_of = {c: b for b, c in bytes_to_unicode().items()}
        text = "".join(self.decoder[i] for i in ids)
        return bytes(byte_of[c] for c in text).decode("utf-8", errors="replace").replace("</w>", " ").strip()


@lru_cache(maxsize=2)
def _build(path: str) -> tuple[Tokenizer, dict[str, int]]:
    """The Rust tokenizer and the vocabulary of a merges file, built as open_clip builds its own:
    256 byte characters, the same with ``</w>``, one token per merge, then the two specials."""
    lines = gzip.open(path).read().decode("utf-8").split("\n")[1 : 49152 - 256 - 2 + 1]
    merges = [(first, second) for first, second in (line.split() for line in lines)]
    alphabet = list(bytes_to_unicode().values())
    vocab = [*alphabet, *(c + "</w>" for c in alphabet), *("".join(m) for m in merges), *SPECIALS]
    encoder = {token: i for i, token in enumerate(vocab)}
    tokenizer = Tokenizer(models.BPE(encoder, merges, end_of_word_suffix="</w>", continuing_subword_prefix=""))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PATTERN), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    return tokenizer, encoder
