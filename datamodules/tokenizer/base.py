"""The interface every tokenizer follows, and the special tokens of the suite's own vocabularies."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from tokenizers import Tokenizer

from common.errors import UserError

PAD, START, END, UNK = "<pad>", "<start>", "<end>", "<unk>"
SPECIALS = (PAD, START, END, UNK)  # ids 0..3 in the suite's own vocabularies (word-level, trained BPE)
# Appended (id = the old vocab size) only when a datamodule turns text masking on, so default
# vocabularies and every existing checkpoint keep their ids (official DeCLIP appends <|mask|> too).
MASK = "<mask>"


class TextTokenizer:
    """Interface: ``tokenizer(texts, pad_to_context=True) -> LongTensor [B, L]``.

    Every row is ``<start> ... <end>`` followed only by ``pad_id``; texts too long for
    ``context_length`` are truncated and still end with the end token. ``unk_id`` is the id of
    unknown words, or None when nothing is unknown (byte-level BPE).

    ``mask_id`` is the id masked language modelling replaces tokens with, or None (the default: no
    mask token). ``add_mask_token()`` appends it as the last id (``vocab_size`` grows by one); only
    the masking ever writes it, so no text encodes to it and ``decode`` skips it. ``special_ids``
    are the ids that are never words (masking never chooses them).

    ``state_dict()`` is what a checkpoint must carry to rebuild the tokenizer when the files it
    was built from are gone: its keys are init arguments, so ``cls(**init_args, **state)`` restores
    it (``analysis.checkpoint`` does this before rebuilding a datamodule).
    """

    pad_id: int = 0
    unk_id: int | None = None
    mask_id: int | None = None
    context_length: int

    @property
    def vocab_size(self) -> int:
        raise NotImplementedError

    @property
    def special_ids(self) -> frozenset[int]:
        return frozenset(i for i in (self.pad_id, self.unk_id, self.mask_id) if i is not None)

    def add_mask_token(self) -> int:
        """Append the mask token as the last id (idempotent) and return its id. A tokenizer without
        ``_base_vocab_size`` cannot get one: a UserError naming it and the fix."""
        if self.mask_id is None:
            try:
                self.mask_id = self._base_vocab_size()
            except NotImplementedError:
                raise UserError(
                    f"{type(self).__name__} cannot add a {MASK} token for text masking: use WordTokenizer, "
                    "BPETokenizer or CLIPTokenizer (or give it a `_base_vocab_size` method), or set "
                    "data.init_args.text_masking: null"
                ) from None
        return self.mask_id

    def _base_vocab_size(self) -> int:
        """The vocabulary size without the mask token."""
        raise NotImplementedError

    def __call__(self, texts: str | Sequence[str], pad_to_context: bool = True) -> torch.Tensor:
        raise NotImplementedError

    def decode(self, ids: Sequence[int]) -> str:
        raise NotImplementedError

    def state_dict(self) -> dict:
        """Init arguments that make the tokenizer rebuildable from a checkpoint alone; ``{}`` when its
        init arguments (recorded with the run's config) are enough."""
        return {}


def with_state(config: dict, state: dict) -> dict:
    """A tokenizer's ``{class_path, init_args}`` config with its saved ``state_dict()`` merged into the
    init arguments: instantiating it restores the tokenizer the state was saved from."""
    return {**config, "init_args": {**(config.get("init_args") or {}), **state}}


def padded(rows: list[list[int]], width: int, pad_id: int) -> torch.Tensor:
    """Rows of ids -> int64 [B, max(width, longest row)], right-padded with ``pad_id`` (filled row by
    row in numpy: several times faster than ``torch.tensor`` on nested lists)."""
    out = np.full((len(rows), max(width, *map(len, rows)) if rows else width), pad_id, dtype=np.int64)
    for i, row in enumerate(rows):
        out[i, : len(row)] = row
    return torch.from_numpy(out)


def check_context_length(context_length: int) -> None:
    if context_length < 3:
        raise UserError(
            f"context_length must be >= 3 to hold the start token, one word and the end token, got {context_length}: "
            "set data.init_args.context_length (or the tokenizer's) to 3 or more"
        )


class HFTokenizer(TextTokenizer):
    """A TextTokenizer over an HF ``tokenizers.Tokenizer`` (``self.tokenizer``) that already adds
    the start and end tokens, truncates to ``context_length`` and pads to the longest row."""

    tokenizer: Tokenizer

    def _base_vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    @property
    def vocab_size(self) -> int:
        return self._base_vocab_size() + (self.mask_id is not None)

    @property
    def special_ids(self) -> frozenset[int]:
        ids = (self.tokenizer.token_to_id(token) for token in SPECIALS)
        return frozenset(i for i in (*ids, self.mask_id) if i is not None)

    def __call__(self, texts: str | Sequence[str], pad_to_context: bool = True) -> torch.Tensor:
        """A text or a list of texts -> int64 ids [B, context_length].

        With ``pad_to_context=False`` rows are padded only to the longest text of the call
        (training batches: the text tower then skips columns that are padding everywhere).
        """
        texts = [texts] if isinstance(texts, str) else list(texts)
        ids = torch.tensor([e.ids for e in self.tokenizer.encode_batch(texts)], dtype=torch.long)
        if pad_to_context and ids.shape[1] < self.context_length:
            ids = torch.nn.functional.pad(ids, (0, self.context_length - ids.shape[1]), value=self.pad_id)
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        # The mask id is not in the HF tokenizer (no text may encode to it): drop it here.
        return self.tokenizer.decode([int(i) for i in ids if int(i) != self.mask_id], skip_special_tokens=True)


class TokenizerLinks:
    """For datamodules: ``vocab_size`` and ``context_length`` of ``self.tokenizer``, which the CLI
    links to the text tower's arguments."""

    tokenizer: TextTokenizer

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    @property
    def context_length(self) -> int:
        return self.tokenizer.context_length
