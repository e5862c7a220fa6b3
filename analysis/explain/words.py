"""The text side: which caption words a pair's score rests on.

Leave-one-word-out (chosen over gradient x input: it needs no gradient through the token
embedding, works for every scoring rule including FILIP's max-based one, and reads directly as
"the logit falls by this much without the word"): importance(w) = y(caption) - y(caption without w).
A word is a whitespace-separated piece of the caption; with a subword tokenizer (CLIP's BPE) it
removes all of the word's tokens at once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from analysis.explain.target import pair_logits, text_record
from common.errors import UserError
from variants.module import ContrastiveModule

Tokenizer = Callable[..., torch.Tensor]


def word_spans(tokenizer: Tokenizer, words: Sequence[str]) -> list[tuple[int, int]]:
    """Each word's token positions (start, stop) in the ids of " ".join(words): every encoded row is
    <start> tokens <end> (the suite's tokenizer interface), and words are tokenized independently."""
    spans, position = [], 1
    for word in words:
        length = tokenizer([word], pad_to_context=False).shape[1] - 2
        spans.append((position, position + length))
        position += length
    context = getattr(tokenizer, "context_length", None)
    if context is not None:  # truncation keeps <start> and <end>
        spans = [(min(a, context - 1), min(b, context - 1)) for a, b in spans]
    return spans


def check_caption(tokenizer: Tokenizer, caption: str) -> list[str]:
    """The caption's words; a UserError when it has none, or when the tokenizer knows none of them."""
    words = caption.split()
    if not words:
        raise UserError('--text is empty: give a caption, e.g. --text "a red circle"')
    unk = getattr(tokenizer, "unk_id", None)
    ids = tokenizer([caption], pad_to_context=False)[0, 1:-1]
    if unk is not None and len(ids) and bool((ids == unk).all()):
        raise UserError(
            f"every word of {caption!r} is unknown to the checkpoint's tokenizer (all map to <unk>): use words "
            "of the vocabulary it was trained with (ShapesWorld's: colours, shapes, sizes, counts, relations)"
        )
    return words


@torch.no_grad()
def word_importance(
    model: ContrastiveModule, tokenizer: Tokenizer, image: torch.Tensor, caption: str
) -> list[tuple[str, float]]:
    """[(word, importance)] for one normalised image [3, H, W] and its caption."""
    words = check_caption(tokenizer, caption)
    texts = [caption] + [" ".join(words[:i] + words[i + 1 :]) for i in range(len(words))]
    encoded_texts = text_record(model, tokenizer(texts, pad_to_context=False))
    images = model.image_record(
        image[None].float().expand(len(texts), -1, -1, -1), tokens="image_tokens" in model.scoring_needs
    )
    logits = pair_logits(model, images, encoded_texts)
    return [(word, float(logits[0] - logits[i + 1])) for i, word in enumerate(words)]
