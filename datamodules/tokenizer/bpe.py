"""A BPE tokenizer trained on the run's own captions (HF ``tokenizers``), and its training.

``python -m datamodules.tokenizer train --captions ... --out DIR`` writes ``DIR/tokenizer.json``;
a run uses it as ``{class_path: datamodules.tokenizer.BPETokenizer, init_args: {path: DIR/tokenizer.json}}``.
The file's content travels in the checkpoint (``state_dict``), so a run is analysed with the
tokenizer it was trained with even once the file is moved, deleted or retrained.

Ids follow WordTokenizer's conventions: 0 <pad>, 1 <start>, 2 <end>, 3 <unk>, then the merges.
Texts are NFC-normalised, lowercased and their whitespace collapsed; words and punctuation runs
are split apart, then merged from characters (``</w>`` ends a word). A character never seen in
training is <unk>.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

from common.errors import UserError
from common.files import write_text
from datamodules.tokenizer.base import END, PAD, SPECIALS, START, UNK, HFTokenizer, check_context_length

CAPTION_FORMATS = (".txt", ".jsonl", ".json", ".csv", ".tsv")


class BPETokenizer(HFTokenizer):
    """Maps texts to [B, context_length] id tensors with a BPE trained by the ``train`` command.

    Args:
        path: the ``tokenizer.json`` the ``train`` command wrote.
        context_length: length of every encoded row, <start> and <end> included.
        tokenizer_json: the content of that file, as a checkpoint carries it (``state_dict``); when
            given it is used and ``path`` is only a record of where it came from.
    """

    pad_id = 0

    def __init__(self, path: str, context_length: int = 77, tokenizer_json: str | None = None) -> None:
        check_context_length(context_length)
        if tokenizer_json is None:
            if not Path(path).is_file():
                raise UserError(
                    f"BPE tokenizer file {path} not found: train one with `python -m datamodules.tokenizer "
                    "train --captions FILE --out DIR` and pass DIR/tokenizer.json"
                )
            tokenizer_json = Path(path).read_text(encoding="utf-8")
        try:
            tokenizer = Tokenizer.from_str(tokenizer_json)
        except Exception as error:  # noqa: BLE001 - HF tokenizers raises a bare Exception for a malformed file
            raise UserError(
                f"{path} is not a tokenizer.json written by HF tokenizers: {error}".splitlines()[0]
            ) from None
        if [tokenizer.token_to_id(token) for token in SPECIALS] != [0, 1, 2, 3]:
            raise UserError(
                f"{path} does not have the ids {', '.join(SPECIALS)} = 0..3: retrain it with `python -m datamodules.tokenizer train`"
            )
        tokenizer.enable_truncation(max_length=context_length)
        tokenizer.enable_padding(pad_id=self.pad_id, pad_token=PAD)  # to the longest in the call
        self.path, self.context_length, self.tokenizer_json = path, context_length, tokenizer_json
        self.tokenizer, self.unk_id = tokenizer, tokenizer.token_to_id(UNK)

    def __reduce__(self) -> tuple:
        # The mask id (text masking) is state, not an init argument: it travels as the third item.
        return type(self), (self.path, self.context_length, self.tokenizer_json), {"mask_id": self.mask_id}

    def state_dict(self) -> dict:
        """The tokenizer file's content: the checkpoint then restores it without the file."""
        return {"tokenizer_json": self.tokenizer_json}


def train_bpe(
    captions: Iterable[str], vocab_size: int = 8192, min_frequency: int = 2, progress: bool = False
) -> Tokenizer:
    """A BPE tokenizer trained on ``captions`` with the suite's specials (ids 0..3) and normalisation."""
    if vocab_size <= len(SPECIALS):
        raise UserError(f"vocab size must be > {len(SPECIALS)} (the special tokens), got {vocab_size}")
    tokenizer = Tokenizer(models.BPE(unk_token=UNK, end_of_word_suffix="</w>"))
    tokenizer.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Lowercase(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Strip()]
    )
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.decoder = decoders.BPEDecoder(suffix="</w>")
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=list(SPECIALS),
        end_of_word_suffix="</w>", show_progress=progress,
    )  # fmt: skip
    tokenizer.train_from_iterator(captions, trainer)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{START} $A {END}",
        special_tokens=[(START, tokenizer.token_to_id(START)), (END, tokenizer.token_to_id(END))],
    )
    return tokenizer


@dataclass
class CaptionCount:
    """What ``read_captions`` read: captions used, empty ones skipped, files."""

    captions: int = 0
    empty: int = 0
    files: list[str] = field(default_factory=list)


def read_captions(
    paths: Sequence[str | Path], column: str = "caption", count: CaptionCount | None = None
) -> Iterator[str]:
    """Captions streamed from .txt (a caption per line), .jsonl/.json (``column`` of each object)
    and .csv/.tsv (the ``column`` column) files; empty captions are skipped and counted in ``count``."""
    count = count if count is not None else CaptionCount()
    for path in map(Path, paths):
        if path.suffix.lower() not in CAPTION_FORMATS:
            raise UserError(f"{path}: caption files must be one of {', '.join(CAPTION_FORMATS)}")
        if not path.is_file():
            raise UserError(f"caption file not found: {path}")
        count.files.append(str(path))
        for caption in _captions(path, column):
            if isinstance(caption, str) and caption.strip():
                count.captions += 1
                yield caption
            else:
                count.empty += 1


def _captions(path: Path, column: str) -> Iterator[object]:
    suffix = path.suffix.lower()
    with path.open(encoding="utf-8", newline="" if suffix in (".csv", ".tsv") else None) as file:
        if suffix == ".txt":
            yield from (line.rstrip("\n") for line in file)
        elif suffix in (".csv", ".tsv"):
            reader = csv.DictReader(file, delimiter="\t" if suffix == ".tsv" else ",")
            if column not in (reader.fieldnames or []):
                raise UserError(
                    f"{path} has no column '{column}'; columns found: {', '.join(reader.fieldnames or []) or 'none'} (pass --column)"
                )
            yield from (row[column] for row in reader)
        else:
            lines = enumerate(file, 1) if suffix == ".jsonl" else [(1, file.read())]
            for number, line in lines:
                where = f"{path}:{number}" if suffix == ".jsonl" else str(path)
                if not line.strip():
                    continue
                try:
                    records = json.loads(line)
                except json.JSONDecodeError as error:
                    raise UserError(f"{where}: not valid JSON ({error})") from None
                for record in records if suffix == ".json" and isinstance(records, list) else [records]:
                    if not isinstance(record, dict) or column not in record:
                        found = (
                            ", ".join(record)
                            if isinstance(record, dict)
                            else f"a {type(record).__name__}, not an object"
                        )
                        raise UserError(f"{where}: no field '{column}'; found: {found or 'none'} (pass --column)")
                    yield record[column]


def write_tokenizer(tokenizer: Tokenizer, out: str | Path) -> Path:
    """Write ``out/tokenizer.json`` whole or not at all (a run may be reading the old one)."""
    return write_text(Path(out) / "tokenizer.json", tokenizer.to_str())
