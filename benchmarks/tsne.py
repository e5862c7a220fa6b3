"""How long the t-SNE of the geometry analysis takes: `analysis.geometry.tsne_embedding` wall time.

    .venv/bin/python benchmarks/tsne.py [--points 5000] [--dim 128] [--classes 10]

The data imitate extracted embeddings: `--classes` Gaussian clusters on the unit sphere (random
unit centres plus noise, rows L2-normalised). Target: 5,000 points of dim 128 in <= 60 s on the
project's 2-core CPU, so a t-SNE figure is affordable after every evaluation. The t-SNE itself
runs on one OpenMP thread (see `tsne_embedding`), so the number barely moves when the machine is busy.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from analysis.geometry import tsne_embedding

TARGET_SECONDS = 60.0


def clustered_sphere(points: int, dim: int, classes: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    centres = F.normalize(torch.randn(classes, dim, generator=generator), dim=-1)
    labels = torch.randint(0, classes, (points,), generator=generator)
    noise = 0.5 / dim**0.5 * torch.randn(points, dim, generator=generator)  # about 0.5 off the centre
    return F.normalize(centres[labels] + noise, dim=-1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--points", type=int, default=5000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--classes", type=int, default=10)
    args = parser.parse_args()

    data = clustered_sphere(args.points, args.dim, args.classes)
    start = time.perf_counter()
    xy = tsne_embedding(data, seed=0)
    seconds = time.perf_counter() - start
    verdict = "meets" if seconds <= TARGET_SECONDS else "MISSES"
    print(
        f"tsne_embedding, {args.points} points x {args.dim} dims ({args.classes} clusters) -> {tuple(xy.shape)}: "
        f"{seconds:.1f} s ({verdict} the {TARGET_SECONDS:.0f} s target)"
    )


if __name__ == "__main__":
    main()
