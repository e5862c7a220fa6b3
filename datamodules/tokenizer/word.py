"""A word-level tokenizer (HF ``tokenizers``) for closed vocabularies such as ShapesWorld's.

Ids: 0 <pad>, 1 <start>, 2 <end>, 3 <unk>, then the words (then <mask> when a datamodule with text
masking calls ``add_mask_token``: the datamodule's config rebuilds the same vocabulary). Every text becomes ``<start> words <end>``
padded with <pad> (to ``context_length``, or to the longest text of the batch); longer texts are
truncated and still end with <end>, so the text tower's end-of-text pooling always finds it.
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

from datamodules.tokenizer.base import END, PAD, SPECIALS, START, UNK, HFTokenizer, check_context_length


class WordTokenizer(HFTokenizer):
    """Maps texts to [B, context_length] id tensors; unknown words map to <unk>.

    Args:
        words: the vocabulary (duplicates ignored, order kept).
        context_length: length of every encoded row, <start> and <end> included.
    """

    pad_id = 0

    def __init__(self, words: Iterable[str], context_length: int = 32) -> None:
        check_context_length(context_length)
        vocab = {token: i for i, token in enumerate(dict.fromkeys([*SPECIALS, *words]))}
        tokenizer = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
        tokenizer.add_special_tokens(list(SPECIALS))  # already in vocab: ids unchanged
        tokenizer.normalizer = normalizers.Lowercase()
        tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{START} $A {END}", special_tokens=[(START, vocab[START]), (END, vocab[END])]
        )
        tokenizer.enable_truncation(max_length=context_length)
        tokenizer.enable_padding(pad_id=self.pad_id, pad_token=PAD)  # to the longest in the call
        self.tokenizer, self.context_length = tokenizer, context_length
        self.unk_id = vocab[UNK]
