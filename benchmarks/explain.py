"""Time per explained image: each explanation method, and the whole pointing game, on untrained
demo-sized towers (the speed does not depend on the weights).

    .venv/bin/python benchmarks/explain.py [--items 256] [--batch-size 64] [--threads 2]

Towers: the base ResNet-10t (64 px, CLIP: Grad-CAM and alignment) and the ViT of
experiments/configs/towers/vit.yaml at 64 px (8 x 8 patches) with CLIP's InfoNCE (Grad-CAM,
relevance, alignment) and with FILIP's token-wise term (alignment in its own space). Each row: one
query map per image ("a red circle" for every scene of ShapesWorld's pointing game), float32; the
pointing-game row adds the second query, the per-word maps and the scoring.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from analysis.checkpoint import LoadedCheckpoint
from analysis.explain import available_methods, query_maps
from analysis.explain.pointing import pointing_game
from analysis.explain.words import word_spans
from datamodules.shapesworld import ShapesWorldDataModule
from datamodules.shapesworld.pointing import PointingScenes
from variants.module import ContrastiveModule
from variants.objectives import InfoNCE, TokenwiseInfoNCE
from variants.towers import TextTower, VisionTower

VIT = {"model_name": "vit_tiny_patch16_224", "model_kwargs": {"img_size": 64, "patch_size": 8, "depth": 6}}


def loaded(name: str, vision: dict, term) -> LoadedCheckpoint:
    data = ShapesWorldDataModule()
    model = ContrastiveModule(
        VisionTower(embed_dim=128, **vision),
        TextTower(data.vocab_size, data.context_length, width=128, depth=4, heads=4, embed_dim=128),
        [term],
    ).eval()
    model.requires_grad_(False)
    return LoadedCheckpoint(model, data.tokenizer, data.image_transform, data, Path(name), name, 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    models = [
        loaded("ResNet-10t CLIP", {"model_name": "resnet10t"}, InfoNCE()),
        loaded("ViT (6 blocks, 8x8 patches) CLIP", VIT, InfoNCE()),
        loaded("ViT (6 blocks, 8x8 patches) FILIP", VIT, TokenwiseInfoNCE()),
    ]
    print(
        f"{args.items} ShapesWorld pointing-game images at 64 px, batch {args.batch_size}, {args.threads} threads, float32"
    )
    print("| towers | method | ms per image |\n| --- | --- | ---: |")
    for model in models:
        scenes = PointingScenes(0, args.items, 64, 3)
        items = [scenes[i] for i in range(args.items)]
        images = torch.stack([model.image_transform(item["image"]) for item in items])
        ids = model.tokenizer([item["query"] for item in items], pad_to_context=False)
        span = word_spans(model.tokenizer, items[0]["query"].split())
        spans = [{"query": (span[0][0], span[-1][1])}] * args.batch_size
        methods = available_methods(model.model)
        for method in methods:
            query_maps(model.model, method, images[: args.batch_size], ids[: args.batch_size], spans)  # warm-up
            start = time.perf_counter()
            for first in range(0, args.items, args.batch_size):
                rows = slice(first, first + args.batch_size)
                query_maps(model.model, method, images[rows], ids[rows], spans[: len(images[rows])])
            print(f"| {model.name} | {method} | {1000 * (time.perf_counter() - start) / args.items:.2f} |")
        start = time.perf_counter()
        pointing_game(model, methods, scenes, batch_size=args.batch_size, examples=0)
        print(
            f"| {model.name} | pointing game, all {len(methods)} methods | {1000 * (time.perf_counter() - start) / args.items:.2f} |"
        )


if __name__ == "__main__":
    main()
