"""Large contrastive batches on small memory: a plain step against gradient caching
(``model.micro_batch_size``) and gradient caching plus gradient checkpointing.

    .venv/bin/python benchmarks/grad_cache.py [--towers presets vit] [--batches 1024 4096] [--micro 128]

One full Lightning training step (float32 on a CPU without native bf16, AdamW, InfoNCE, the base
config's speed levers) on one fixed synthetic batch, each configuration in its own process:

- ``presets``: base.yaml's towers (ResNet-10t at 64 px, CLIP text transformer w128 d4, 32 tokens);
- ``vit``: the tiny ViT of ``train_throughput.py`` (64 px, patch 8, w192 d6; the same text tower).

Each row: median step time after warm-up; the peak resident memory of the fit (VmHWM) and what
the step adds to the process before the fit (model, optimizer state, batch and libraries are in
the baseline: "step MiB" = peak - RSS before ``fit``). The targets (issue 18): the cached step's
memory within 1.5x of a plain step at the micro-batch size whatever the contrastive batch, and
its time at most 1.4x the plain step's (one extra forward).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

import torch
from train_throughput import CONFIGS, VOCAB, _peak_rss_mib, _reset_peak_rss, _StepTimes, synthetic_batch


def _rss_mib() -> float:
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


def build(towers: str, micro: int | None, checkpointing: bool, terms: list | None = None):
    """The module of one configuration; ``terms`` default to ``[InfoNCE()]``."""
    from variants.module import ContrastiveModule
    from variants.objectives import InfoNCE
    from variants.towers import TextTower, VisionTower

    torch.manual_seed(0)
    text = TextTower(VOCAB, 32, 128, 4, 4, embed_dim=128, grad_checkpointing=checkpointing)
    if towers == "presets":
        vision = VisionTower("resnet10t", embed_dim=128, grad_checkpointing=checkpointing)
    else:
        c = CONFIGS["tiny"]
        vision = VisionTower(
            "vit_base_patch16_clip_224",
            embed_dim=128,
            model_kwargs={"img_size": 64, "patch_size": c["patch"], "embed_dim": c["width"], "depth": c["depth"],
                          "num_heads": c["width"] // 64},
            grad_checkpointing=checkpointing,
        )  # fmt: skip
    return ContrastiveModule(vision, text, terms or [InfoNCE()], warmup_steps=10, micro_batch_size=micro)


def one(
    towers: str, batch: int, micro: int | None, checkpointing: bool, steps: int, warmup: int, terms: list | None = None
) -> dict:
    """One configuration in this process: (median s/step, peak MiB, step MiB)."""
    import lightning.pytorch as pl
    from torch.utils.data import DataLoader

    from experiments.memory import ReuseFreedMemory

    module = build(towers, micro, checkpointing, terms)
    data = synthetic_batch({"batch": batch, "image_size": 64, "text_context": 32})
    total = steps + warmup + 1 if steps else 1
    loader = DataLoader([data] * total, batch_size=None)
    timer = _StepTimes(warmup)
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, precision="32-true", max_steps=total, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        log_every_n_steps=10, num_sanity_val_steps=0, callbacks=[timer.callback, ReuseFreedMemory()],
    )  # fmt: skip
    _reset_peak_rss()
    before = _rss_mib()
    trainer.fit(module, train_dataloaders=loader)
    peak = _peak_rss_mib()
    seconds = statistics.median(timer.times) if timer.times else float("nan")  # --steps 0: memory only
    return {"seconds": seconds, "peak": peak, "step": peak - before}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--towers", nargs="+", choices=["presets", "vit"], default=["presets", "vit"])
    parser.add_argument("--batches", nargs="+", type=int, default=[1024, 4096])
    parser.add_argument("--micro", type=int, default=128)
    parser.add_argument("--steps", type=int, default=2, help="timed steps (0: one step, memory only)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--modes", nargs="+", choices=["plain", "micro", "checkpointing"],
                        default=["plain", "micro", "checkpointing"],
                        help="which steps to run at the contrastive batches (a plain step at 4096 on the ViT needs ~30 GiB)")  # fmt: skip
    parser.add_argument("--threads", type=int, default=None, help="torch threads per run (default: torch's)")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one configuration, print JSON
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.one:
        import logging
        import warnings

        warnings.filterwarnings("ignore")
        logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
        print(json.dumps(one(**json.loads(args.one))))
        return
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; float32; micro-batch {args.micro}")
    print("| towers | contrastive batch | step | s/step | vs plain | peak MiB | step MiB | vs plain at micro |")
    print("| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |")
    for towers in args.towers:
        modes = {"plain": ("plain", None, False), "micro": ("micro-batches", args.micro, False),
                 "checkpointing": ("micro-batches + checkpointing", args.micro, True)}  # fmt: skip
        reference = _run(args, towers, args.micro, None, False)
        print(f"| {towers} | {args.micro} | plain | {reference['seconds']:.2f} | | {reference['peak']:.0f} "
              f"| {reference['step']:.0f} | 1.00x |", flush=True)  # fmt: skip
        for batch in args.batches:
            plain = None
            for name, micro, checkpointing in (modes[mode] for mode in args.modes):
                row = _run(args, towers, batch, micro, checkpointing)
                plain = plain or (row if micro is None else None)
                versus = f"{row['seconds'] / plain['seconds']:.2f}x" if plain else ""
                print(f"| {towers} | {batch} | {name} | {row['seconds']:.2f} | {versus} "
                      f"| {row['peak']:.0f} | {row['step']:.0f} | {row['step'] / reference['step']:.2f}x |",
                      flush=True)  # fmt: skip


def _run(args: argparse.Namespace, towers: str, batch: int, micro: int | None, checkpointing: bool) -> dict:
    spec = {"towers": towers, "batch": batch, "micro": micro, "checkpointing": checkpointing,
            "steps": args.steps, "warmup": args.warmup}  # fmt: skip
    command = [sys.executable, __file__, "--one", json.dumps(spec)]
    if args.threads:
        command += ["--threads", str(args.threads)]
    result = subprocess.run(command, capture_output=True, text=True, env=os.environ | {"PYTHONWARNINGS": "ignore"})
    if result.returncode:
        raise SystemExit(f"{spec} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    main()
