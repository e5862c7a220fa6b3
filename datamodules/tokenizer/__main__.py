"""``python -m datamodules.tokenizer train --captions FILE [FILE ...] --out DIR``

Trains a BPE tokenizer (HF ``tokenizers``) on caption files and writes DIR/tokenizer.json. Caption
files: .txt (a caption per line), .jsonl/.json (objects with a caption field), .csv/.tsv (a caption
column); ``--column`` names the field or column. Use the result in a run's data config as
``tokenizer: {class_path: datamodules.tokenizer.BPETokenizer, init_args: {path: DIR/tokenizer.json}}``;
the checkpoint carries its content. A user mistake prints one ``error:`` line and exits with 2
(CLIP_VARIANTS_TRACEBACK=1 shows the traceback).
"""

from __future__ import annotations

import argparse
import sys
from itertools import islice

from common.errors import UserError, exit_on_user_error

SUMMARY_SAMPLE = 10_000  # captions encoded for the tokens-per-caption summary


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def parser() -> argparse.ArgumentParser:
    main = argparse.ArgumentParser(prog="python -m datamodules.tokenizer", description=__doc__.split("\n\n")[1])
    commands = main.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="train a BPE tokenizer on caption files")
    train.add_argument("--captions", nargs="+", required=True, help="caption files (.txt .jsonl .json .csv .tsv)")
    train.add_argument("--out", required=True, help="directory to write tokenizer.json to")
    train.add_argument("--vocab-size", dest="vocab_size", type=int, default=8192, help="at most this many tokens")
    train.add_argument(
        "--min-frequency", dest="min_frequency", type=_count, default=2, help="merges seen fewer times are not learnt"
    )
    train.add_argument("--column", default="caption", help="caption field (.json/.jsonl) or column (.csv/.tsv)")
    return main


def train(argv: list[str] | None = None) -> dict:
    """Parse ``argv``, train, write, print the summary; returns it."""
    from datamodules.tokenizer.bpe import CaptionCount, read_captions, train_bpe, write_tokenizer

    args = parser().parse_args(argv)
    count = CaptionCount()
    tokenizer = train_bpe(
        read_captions(args.captions, args.column, count),
        args.vocab_size,
        args.min_frequency,
        progress=sys.stderr.isatty(),
    )
    if count.captions == 0:
        raise UserError(f"no captions in {', '.join(args.captions)} ({count.empty} empty)")
    path = write_tokenizer(tokenizer, args.out)
    lengths = [
        len(e.ids)
        for e in tokenizer.encode_batch(list(islice(read_captions(args.captions, args.column), SUMMARY_SAMPLE)))
    ]
    summary = {
        "path": str(path), "vocab_size": tokenizer.get_vocab_size(), "captions": count.captions, "empty_skipped": count.empty,
        "files": len(count.files), "tokens_per_caption_mean": round(sum(lengths) / len(lengths), 2), "tokens_per_caption_max": max(lengths),
    }  # fmt: skip
    print(f"wrote {path}: vocab size {summary['vocab_size']} (asked for at most {args.vocab_size})")
    print(
        f"trained on {count.captions} captions from {len(count.files)} file(s), {count.empty} empty skipped; tokens per caption "
        f"(<start>/<end> included, first {len(lengths)} captions): mean {summary['tokens_per_caption_mean']}, max {max(lengths)}"
    )
    return summary


def main() -> None:
    exit_on_user_error(train)


if __name__ == "__main__":
    main()
