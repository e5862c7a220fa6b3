"""Embedding extraction against the towers' pure forward: the analysis target is within 10%.

    .venv/bin/python benchmarks/embed_throughput.py [--ckpt runs/clip] [--images 4000] [--precision 32]

"pure forward" runs the vision tower on batches that are already rendered and normalised in
memory; "embed_images" is the analysis path (loader, transform, collate, forward), first over
the same images held in memory (the extraction's own overhead), then rendering ShapesWorld on
the fly with 0 and 1 loader workers (adds the data generation). Without --ckpt the base config's towers are used untrained (the
speed does not depend on the weights).
"""

from __future__ import annotations

import argparse
import time
from functools import partial
from pathlib import Path

import torch

from analysis.checkpoint import LoadedCheckpoint, load_checkpoint
from analysis.embed import EmbedOptions, autocast, embed_images, embed_texts
from datamodules.shapesworld import ShapesWorldDataModule, ZeroShotScenes
from datamodules.shapesworld.datasets import TASKS
from variants.module import ContrastiveModule
from variants.objectives import InfoNCE
from variants.towers import TextTower, VisionTower


def untrained() -> LoadedCheckpoint:
    data = ShapesWorldDataModule()
    model = ContrastiveModule(
        VisionTower("resnet10t", embed_dim=128),
        TextTower(data.vocab_size, data.context_length, width=128, depth=4, heads=4, embed_dim=128),
        [InfoNCE()],
    ).eval()
    return LoadedCheckpoint(model, data.tokenizer, data.image_transform, data, Path("untrained"), "untrained", 0)


def seconds(fn, repeats: int = 3) -> float:
    fn()  # warm-up
    return min(_timed(fn) for _ in range(repeats))


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", help="a checkpoint or run directory (default: untrained base towers)")
    parser.add_argument("--images", type=int, default=4000)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--precision", choices=("32", "bf16"), default="32")
    args = parser.parse_args()
    torch.manual_seed(0)
    loaded = load_checkpoint(args.ckpt) if args.ckpt else untrained()
    dataset = ZeroShotScenes("shape", 0, "bench", args.images, loaded.image_transform.image_size)
    rendered = [dataset[i] for i in range(args.images)]  # uint8 images held in memory
    batches = [
        loaded.image_transform.normalize(torch.stack([item["image"] for item in rendered[s : s + args.batch_size]]))
        for s in range(0, args.images, args.batch_size)
    ]

    @torch.inference_mode()
    def pure_forward() -> None:
        with autocast(args.precision):
            for batch in batches:
                loaded.model.image_record(batch)

    forward = seconds(pure_forward)
    print(
        f"{loaded.name}, {args.images} images of {loaded.image_transform.image_size} px, batch {args.batch_size}, precision {args.precision}"
    )
    print("| path | seconds | images/s | vs pure forward |\n| --- | ---: | ---: | ---: |")
    print(f"| pure forward (pre-rendered batches) | {forward:.2f} | {args.images / forward:,.0f} | 1.00x |")
    for what, data, workers in (
        ("in-memory images", rendered, 0),
        ("rendering on the fly", dataset, 0),
        ("rendering on the fly", dataset, 1),
    ):
        options = EmbedOptions(batch_size=args.batch_size, num_workers=workers, precision=args.precision)
        took = seconds(partial(embed_images, loaded, data, options=options))
        print(
            f"| embed_images, {what}, {workers} workers | {took:.2f} | {args.images / took:,.0f} | {took / forward:.2f}x |"
        )
    prompts = [p for task in TASKS.values() for ps in task.prompts() for p in ps] * 10
    took = seconds(lambda: embed_texts(loaded, prompts, options=EmbedOptions(precision=args.precision)))
    print(f"| embed_texts, {len(prompts)} prompts | {took:.2f} | {len(prompts) / took:,.0f} texts/s | |")


if __name__ == "__main__":
    main()
