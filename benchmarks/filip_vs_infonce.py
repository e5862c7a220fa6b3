"""FILIP's token-wise loss against CLIP's InfoNCE: time and peak memory of forward + backward.

    .venv/bin/python benchmarks/filip_vs_infonce.py [--batches 128 256 512 1024] [--threads 2]

Inputs as in a training step of a ViT-B-sized model: 64 patch tokens and 32 text tokens per
sample, projected to 256 dims (FILIP's default), global embeddings of 256 dims for InfoNCE.
Every measurement runs in a fresh process, so the peak resident memory (ru_maxrss) minus the
resident memory just before the loss is the loss's own extra memory. "filip (unchunked)" builds
the whole [N, N, P, L] similarity at once (what the suite never does), up to where it fits.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # each measurement imports torch in its own fresh process
    import torch


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def _filip_block(  # the whole [N, P, N, L] block at once, through autograd: what the suite never does
    image_tokens: torch.Tensor, text_tokens: torch.Tensor, text_mask: torch.Tensor, i2t: bool, t2i: bool
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    c, p, d = image_tokens.shape
    n, length = text_tokens.shape[:2]
    # One GEMM, laid out [c, P, Nt, L] so that no permuted copy of the block is made.
    sim = (image_tokens.reshape(c * p, d) @ text_tokens.reshape(n * length, d).T).view(c, p, n, length)
    out_i2t = out_t2i = None
    if t2i:  # max over the patches of image i, mean over the valid tokens of text j
        valid = text_mask.to(sim.dtype)
        out_t2i = (sim.max(dim=1).values * valid).sum(dim=2) / valid.sum(dim=1)
    if i2t:  # max over the valid tokens of text j, mean over the patches of image i
        # In place: max saves only its indices, so the block is not needed any more.
        masked = sim.masked_fill_(~text_mask, float("-inf"))
        out_i2t = masked.max(dim=3).values.mean(dim=1)
    return out_i2t, out_t2i


def measure(kind: str, n: int, threads: int, repeats: int = 3) -> dict:
    import torch
    import torch.nn.functional as F

    from variants.losses import clip_loss, filip_loss

    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    patches, tokens, dim = 64, 32, 256
    image_tokens = F.normalize(torch.randn(n, patches, dim, generator=g), dim=-1).requires_grad_()
    text_tokens = F.normalize(torch.randn(n, tokens, dim, generator=g), dim=-1).requires_grad_()
    mask = torch.arange(tokens)[None] < torch.randint(4, tokens + 1, (n, 1), generator=g)
    image = F.normalize(torch.randn(n, dim, generator=g), dim=-1).requires_grad_()
    text = F.normalize(torch.randn(n, dim, generator=g), dim=-1).requires_grad_()
    targets = torch.arange(n)

    def step() -> None:
        if kind == "infonce":
            loss = clip_loss(image, text, 14.0)
        elif kind == "filip":
            loss = filip_loss(image_tokens, text_tokens, mask, 14.0)
        else:  # the whole [N, N, P, L] block at once
            i2t, t2i = _filip_block(image_tokens, text_tokens, mask, True, True)
            loss = 0.5 * (F.cross_entropy(14.0 * i2t, targets) + F.cross_entropy(14.0 * t2i.T, targets))
        loss.backward()

    before = _rss_mb()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"kind": kind, "batch": n, "seconds": statistics.median(times), "extra_mb": peak - before}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, nargs="+", default=[128, 256, 512, 1024])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--unchunked-up-to", type=int, default=256, help="largest batch for the unchunked reference")
    parser.add_argument("--_one", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._one:
        print(json.dumps(measure(args._one[0], int(args._one[1]), args.threads)))
        return

    print(f"{'loss':<18} {'batch':>6} {'fwd+bwd s':>10} {'extra MiB':>10}")
    for n in args.batches:
        kinds = ["infonce", "filip"] + (["filip (unchunked)"] if n <= args.unchunked_up_to else [])
        for kind in kinds:
            command = [sys.executable, __file__, "--threads", str(args.threads), "--_one", kind, str(n)]
            result = json.loads(subprocess.run(command, capture_output=True, text=True, check=True).stdout)
            print(f"{kind:<18} {n:>6} {result['seconds']:>10.3f} {result['extra_mb']:>10.0f}")


if __name__ == "__main__":
    main()
