"""How fast ShapesWorld renders: images/s for one worker, and the training loader's batches/s.

    .venv/bin/python benchmarks/shapesworld_render.py [--image-size 64] [--batch-size 256]

Rendering must not bottleneck training: compare the loader's samples/s with the training
step's (the demo trains at roughly 400 samples/s on a 2-core CPU).
"""

from __future__ import annotations

import argparse
import time

from datamodules.shapesworld import CaptionedScenes, ShapesWorldDataModule


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--samples", type=int, default=5000)
    args = parser.parse_args()

    data = CaptionedScenes(0, "train", args.samples, image_size=args.image_size)
    data[0]
    start = time.perf_counter()
    for i in range(args.samples):
        data[i]
    per_worker = args.samples / (time.perf_counter() - start)
    print(f"render + caption, one worker, {args.image_size}px: {per_worker:,.0f} images/s")

    for workers in (0, 1, 2):
        datamodule = ShapesWorldDataModule(
            image_size=args.image_size,
            batch_size=args.batch_size,
            train_samples=args.batch_size * 40,
            num_workers=workers,
        )
        loader = iter(datamodule.train_dataloader())
        next(loader)  # start the workers
        start = time.perf_counter()
        batches = sum(1 for _ in loader)
        seconds = time.perf_counter() - start
        print(
            f"train loader, {workers} workers, batch {args.batch_size}: "
            f"{batches / seconds:6.1f} batches/s = {batches * args.batch_size / seconds:,.0f} samples/s "
            "(render, stack as uint8, tokenise; the model normalises)"
        )


if __name__ == "__main__":
    main()
