"""FILIP's training step against CLIP's on the same towers: step time and peak memory by batch.

    .venv/bin/python benchmarks/filip_step.py [--towers presets vit] [--batches 64 128 256] [--steps 5]

One full training step as ``python -m experiments fit`` runs it (Lightning ``Trainer``, bf16-mixed,
AdamW, the base config's speed levers), with ``InfoNCE`` (clip.yaml) or ``TokenwiseInfoNCE``
(filip.yaml) over the same towers and one fixed synthetic batch:

- ``presets``: the towers of the presets (base.yaml: ResNet-10t at 64 px, 2x2 = 4 patch tokens;
  CLIP text transformer w128 d4, 32 tokens);
- ``vit``: the tiny ViT of ``train_throughput.py`` (64 px, patch 8: 64 patch tokens; text 32
  tokens), where FILIP's token-wise similarity is 16x larger.

Each row: median step after warm-up, and the phase's peak resident memory (VmHWM after
returning freed memory). The ratio FILIP / InfoNCE is the issue-7 target (<= 1.5x); peak
memory should grow linearly with the batch (FILIP's similarity is chunked to a fixed budget).
"""

from __future__ import annotations

import argparse
import statistics

import torch
from train_throughput import CONFIGS, VOCAB, _peak_rss_mib, _reset_peak_rss, _StepTimes, synthetic_batch


def model(towers: str, term: str, batch: int, similarity_dtype: str = "auto"):
    from variants.module import ContrastiveModule
    from variants.objectives import InfoNCE, TokenwiseInfoNCE
    from variants.towers import TextTower, VisionTower

    torch.manual_seed(0)
    if towers == "presets":  # base.yaml's towers
        vision = VisionTower("resnet10t", embed_dim=128)
        text = TextTower(VOCAB, 32, 128, 4, 4, embed_dim=128)
        c = {"batch": batch, "image_size": 64, "text_context": 32}
    else:
        from train_throughput import suite_model

        c = dict(CONFIGS["tiny"], batch=batch)
        reference = suite_model(c)
        vision, text = reference.vision_tower, reference.text_tower
    terms = [InfoNCE()] if term == "infonce" else [TokenwiseInfoNCE(similarity_dtype=similarity_dtype)]
    return ContrastiveModule(vision, text, terms, warmup_steps=10), c


def run(towers: str, term: str, batch: int, steps: int, warmup: int, similarity_dtype: str) -> tuple[float, float]:
    import lightning.pytorch as pl
    from torch.utils.data import DataLoader

    from experiments.memory import ReuseFreedMemory

    module, c = model(towers, term, batch, similarity_dtype)
    data = synthetic_batch(c)
    loader = DataLoader([data] * (steps + warmup + 1), batch_size=None)
    timer = _StepTimes(warmup)
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, precision="bf16-mixed", max_steps=steps + warmup + 1, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        log_every_n_steps=10, num_sanity_val_steps=0, callbacks=[timer.callback, ReuseFreedMemory()],
    )  # fmt: skip
    _reset_peak_rss()
    trainer.fit(module, train_dataloaders=loader)
    return statistics.median(timer.times), _peak_rss_mib()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--towers", nargs="+", choices=["presets", "vit"], default=["presets", "vit"])
    parser.add_argument("--batches", nargs="+", type=int, default=[64, 128, 256])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--similarity-dtype", choices=["auto", "float32"], default="auto",
                        help="FILIP's training GEMMs (auto: bf16 under bf16-mixed, as filip.yaml sets)")  # fmt: skip
    args = parser.parse_args()
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    for name in ("lightning.pytorch", "lightning.fabric", "lightning.pytorch.utilities.rank_zero"):
        logging.getLogger(name).setLevel(logging.ERROR)

    print("| towers | batch | InfoNCE s/step | FILIP s/step | FILIP / InfoNCE | InfoNCE peak MiB | FILIP peak MiB |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    worst = 0.0
    for towers in args.towers:
        for batch in args.batches:
            order = ("infonce", "filip") if batch % 2 else ("filip", "infonce")  # alternate who runs first
            measured = {
                term: run(towers, term, batch, args.steps, args.warmup, args.similarity_dtype) for term in order
            }
            (t_clip, m_clip), (t_filip, m_filip) = measured["infonce"], measured["filip"]
            worst = max(worst, t_filip / t_clip)
            print(f"| {towers} | {batch} | {t_clip:.3f} | {t_filip:.3f} | {t_filip / t_clip:.2f}x | {m_clip:.0f} | {m_filip:.0f} |",
                  flush=True)  # fmt: skip
    print(f"filip_over_infonce_worst={worst:.2f}")


if __name__ == "__main__":
    main()
