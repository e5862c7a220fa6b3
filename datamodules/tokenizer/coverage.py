"""Whether a tokenizer covers the texts a run trains and is evaluated on.

A vocabulary that lacks the captions' language does not fail: every word becomes the unknown
token and the run trains and evaluates on ``[CLS] [UNK] [UNK] ... [SEP]`` to exit 0 (a Chinese
run given an English vocab.txt). Datamodules call :func:`check_captions` on a sample of their
training captions and :func:`check_prompts` on every class prompt of their zero-shot tasks, once,
when they are set up for fit; the analysis calls :func:`check_prompts` on a user's templates.

Thresholds (shares of the word tokens: every id but start/end/padding/mask; an unknown counts):

- captions: more than :data:`MAX_CAPTION_UNKNOWN` (10%) unknown stops the run. A vocabulary made
  for the captions' language leaves out far less (ShapesWorld's own vocabularies: 0%; BERT
  WordPiece, whose pieces spell out most words, well under 1% on text in its language), a
  vocabulary of another language nearly all of it (an English vocab.txt on Chinese captions:
  100%, on bilingual ShapesWorld 68%). 10% sits far from both, and leaves room for a
  word-level vocabulary on real captions, whose rare words are legitimately unknown.
- prompts: a class prompt more than half unknown (:data:`MAX_PROMPT_UNKNOWN`) stops the run: its
  class is told apart from the others, if at all, by a minority of its tokens.

Byte-level BPE (:class:`~datamodules.tokenizer.CLIPTokenizer`) has no unknown token: every byte
is a token of its alphabet, so any text encodes (``unk_id`` is None) and both checks pass by
construction. A BPE trained on the run's captions (:class:`~datamodules.tokenizer.BPETokenizer`)
maps characters it never saw to <unk>, and is checked like the others.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch

from common.errors import UserError
from datamodules.tokenizer.base import TextTokenizer

MAX_CAPTION_UNKNOWN = 0.10
MAX_PROMPT_UNKNOWN = 0.5
CAPTION_SAMPLE = 256  # captions checked: enough to measure a share to about +-3 points


def unknown_counts(tokenizer: TextTokenizer, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Per text, (unknown tokens, word tokens) as int64 [N] tensors; None when the tokenizer has no
    unknown token (byte-level BPE: nothing is unknown)."""
    unk = tokenizer.unk_id
    if unk is None or not texts:
        return None
    ids = tokenizer(list(texts), pad_to_context=False)
    # Start/end/padding/mask are no words; an unknown one is. A tokenizer's start and end tokens
    # are among its special ids (word-level, BERT) or named start_id/end_id (CLIP's).
    others = set(tokenizer.special_ids) | {getattr(tokenizer, n, None) for n in ("start_id", "end_id")}
    others = {i for i in others if i is not None} - {unk}
    words = ~torch.isin(ids, torch.tensor(sorted(others), dtype=ids.dtype))
    return (ids == unk).sum(1), words.sum(1)


def sample_indices(length: int, size: int = CAPTION_SAMPLE) -> list[int]:
    """``size`` indices spread evenly over ``range(length)`` (all of them when fewer)."""
    if length <= size:
        return list(range(length))
    return [i * length // size for i in range(size)]


def describe(tokenizer: TextTokenizer) -> str:
    """The tokenizer as messages name it: its class, and its vocabulary file when it has one."""
    vocab = getattr(tokenizer, "vocab", None) or getattr(tokenizer, "path", None)
    return f"{type(tokenizer).__name__}" + (f" over {vocab}" if vocab else "")


def check_captions(
    tokenizer: TextTokenizer, captions: Sequence[str], source: str, fix: str, limit: float = MAX_CAPTION_UNKNOWN
) -> None:
    """A UserError when more than ``limit`` of the word tokens of ``captions`` are unknown, naming
    the share, the caption with the most unknown tokens, and ``fix``."""
    counts = unknown_counts(tokenizer, captions)
    if counts is None:
        return
    unknown, words = counts
    share = float(unknown.sum()) / max(1, int(words.sum()))
    if share <= limit:
        return
    worst = int(torch.argmax(unknown.double() / words.clamp(min=1)))
    raise UserError(
        f"{source}: the tokenizer ({describe(tokenizer)}) maps {share:.1%} of the tokens of {len(captions)} "
        f"sampled training captions to its unknown token (more than {limit:.0%}), e.g. {captions[worst]!r} "
        f"({int(unknown[worst])} of {int(words[worst])} tokens unknown): {fix}"
    )


def mostly_unknown(
    tokenizer: TextTokenizer, prompts: Sequence[str], limit: float = MAX_PROMPT_UNKNOWN
) -> list[tuple[int, int, int]]:
    """(position, unknown, word tokens) of each prompt of which more than ``limit`` is unknown."""
    counts = unknown_counts(tokenizer, prompts)
    if counts is None:
        return []
    return [
        (i, u, w) for i, (u, w) in enumerate(zip(*(c.tolist() for c in counts), strict=True)) if w and u / w > limit
    ]


def check_prompts(tokenizer: TextTokenizer, prompts: Iterable[tuple[str, str]], source: str, fix: str) -> None:
    """A UserError when a class prompt is mostly unknown tokens. ``prompts``: (where, prompt)
    pairs, ``where`` naming the task and class in the message."""
    pairs = list(prompts)
    bad = mostly_unknown(tokenizer, [prompt for _, prompt in pairs])
    if not bad:
        return
    i, unknown, words = bad[0]
    where, prompt = pairs[i]
    more = f", and {len(bad) - 1} more prompts" if len(bad) > 1 else ""
    raise UserError(
        f"{source}: the tokenizer ({describe(tokenizer)}) maps the class prompt {prompt!r} ({where}) mostly to its "
        f"unknown token ({unknown} of {words} tokens{more}), so its class cannot be told apart: {fix}"
    )
