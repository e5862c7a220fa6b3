"""``python -m datamodules.captioned [--out data/digits] [--seed 0]``: write the captioned digits
(``datamodules.captioned.digits``) and print where; a complete build already there is kept."""

from __future__ import annotations

import argparse
import json

from common.errors import exit_on_user_error


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m datamodules.captioned", description=__doc__)
    parser.add_argument("--out", default="data/digits", help="the folder to write (default: data/digits)")
    parser.add_argument("--seed", type=int, default=0, help="fixes the split and the evaluation phrasings")
    args = parser.parse_args()

    def run() -> None:
        from datamodules.captioned.digits import build_digits

        root = build_digits(args.out, args.seed)
        print(json.dumps(json.loads((root / "BUILD.json").read_text())["splits"]))
        print(f"captioned digits in {root}: train.csv, val.csv, test.csv, parquet/")

    exit_on_user_error(run)


if __name__ == "__main__":
    main()
