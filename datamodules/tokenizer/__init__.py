"""Tokenizers: texts -> padded int64 id tensors for the text tower.

:class:`TextTokenizer` is the interface every datamodule's ``tokenizer`` follows (the CLI links its
``vocab_size`` and ``context_length`` to the text tower; the analysis calls it on prompts).

- :class:`WordTokenizer`: word-level, for closed vocabularies such as ShapesWorld's.
- :class:`CLIPTokenizer`: OpenAI CLIP's BPE, ids identical to open_clip's ``tokenize``.
- :class:`BertTokenizer`: BERT's WordPiece over a vocab.txt, ids identical to Chinese-CLIP's ``tokenize``
  (``"cn_clip"`` reads the installed package's vocabulary), or over a closed vocabulary's words.
- :class:`BPETokenizer`: a BPE trained on your captions with ``python -m datamodules.tokenizer train``,
  saved with the run's checkpoint (``state_dict``).
"""

from datamodules.tokenizer.base import TextTokenizer, TokenizerLinks
from datamodules.tokenizer.bert import BertTokenizer
from datamodules.tokenizer.bpe import BPETokenizer
from datamodules.tokenizer.clip import CLIPTokenizer
from datamodules.tokenizer.word import WordTokenizer

__all__ = ["BertTokenizer", "BPETokenizer", "CLIPTokenizer", "TextTokenizer", "TokenizerLinks", "WordTokenizer"]
