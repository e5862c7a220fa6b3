"""Training throughput: the suite's CLIP step against open_clip's on the same architecture and batch.

    .venv/bin/python benchmarks/train_throughput.py [--configs tiny vit_s16] [--precisions fp32 bf16]
        [--steps 5] [--warmup 5] [--rounds 2] [--attention auto|fused|explicit] [--no-fused-optimizer]
        [--no-reuse-memory]

(open_clip comes with the dev extra, or `pip install open-clip-torch`.) In one process, for each
config and precision, the two implementations run alternately (``--rounds`` times each, after
``--warmup`` untimed steps every time) on one fixed synthetic batch:

- the suite: ``ContrastiveModule`` (timm ViT + CLIP text tower + InfoNCE) trained by a Lightning
  ``Trainer`` exactly as ``python -m experiments fit`` runs it (AdamW, schedule, logging every 10
  steps, the speed levers of the base config), precision ``32-true`` or ``bf16-mixed``; a step
  is the wall time between consecutive batch ends, so the loop's own overhead counts. The
  levers can be switched off one by one to see what each adds: the attention kernel (towers'
  ``attention``), AdamW's fused kernel (``fused_optimizer``) and the ``ReuseFreedMemory``
  callback (the allocator setting holds only while the suite fits; open_clip's phases run with
  glibc's defaults, as its own training script would);
- open_clip: ``open_clip.CLIP`` with the same shapes, ``ClipLoss``, AdamW, its training loop's
  step (fp32, or bf16 autocast as ``--precision amp_bf16``).

Reported per row: samples/s, median step time, peak resident memory of the phase (VmHWM, reset
before each phase), FLOPs per step counted by ``torch.utils.flop_counter.FlopCounterMode``
(forward + backward) and achieved FLOP/s as a fraction of the matmul peak of that precision,
measured in the same run. The last line is ``speedup_vs_open_clip=<x>``: the suite's best
precision over open_clip's best, on the config that gives the smallest ratio.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import platform
import statistics
import time
from dataclasses import dataclass
from functools import partial

import torch

# The configs of issue 7: a tiny ViT at 64 px, and a ViT-S/16-like model at 224 px.
CONFIGS = {
    "tiny": {"image_size": 64, "patch": 8, "width": 192, "depth": 6, "text_context": 32, "text_width": 128,
             "text_depth": 4, "embed_dim": 128, "batch": 256},
    "vit_s16": {"image_size": 224, "patch": 16, "width": 384, "depth": 12, "text_context": 32, "text_width": 128,
                "text_depth": 4, "embed_dim": 256, "batch": 128},
}  # fmt: skip
HEAD_WIDTH, VOCAB = 64, 49408


@dataclass
class Row:
    config: str
    implementation: str
    precision: str
    step_s: float
    samples_per_s: float
    peak_rss_mib: float
    flops: float

    def fraction_of(self, peak: float) -> float:
        return self.flops / self.step_s / peak


def matmul_peak(dtype: torch.dtype, sizes: tuple[int, ...] = (1024, 2048, 4096), repeats: int = 5) -> float:
    """FLOP/s of the fastest square matmul in ``dtype`` over a few sizes (best of ``repeats``)."""
    best = 0.0
    for n in sizes:
        a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
        for _ in range(2):
            a @ b
        best = max(best, 2 * n**3 / min(_timed(partial(torch.matmul, a, b)) for _ in range(repeats)))
    return best


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _reset_peak_rss() -> None:
    # Return what earlier phases freed first, or the peak would start at their leftovers.
    gc.collect()
    if platform.libc_ver()[0] == "glibc":
        ctypes.CDLL(None).malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as f:  # "5" resets VmHWM (Linux >= 4.0)
        f.write("5")


def _peak_rss_mib() -> float:
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


def synthetic_batch(c: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    """One batch of images and full-length captions (start, words, end), the same for both."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(c["batch"], 3, c["image_size"], c["image_size"], generator=g)
    words = torch.randint(1, VOCAB - 2, (c["batch"], c["text_context"]), generator=g)
    words[:, 0], words[:, -1] = VOCAB - 2, VOCAB - 1  # start and end ids as CLIP's (end = largest)
    return {"image": images, "text": words}


# ---- the suite -------------------------------------------------------------------------------
@dataclass(frozen=True)
class SuiteLevers:
    """The suite's speed levers, all on by default as in experiments/configs/base.yaml."""

    attention: str = "auto"  # VisionTower/TextTower(attention=...)
    fused_optimizer: bool = True  # ContrastiveModule(fused_optimizer=...)
    reuse_memory: bool = True  # the experiments.memory.ReuseFreedMemory callback


def suite_model(c: dict, levers: SuiteLevers = SuiteLevers()):
    from variants.module import ContrastiveModule
    from variants.objectives import InfoNCE
    from variants.towers import TextTower, VisionTower

    vision = VisionTower(
        "vit_base_patch16_clip_224",
        embed_dim=c["embed_dim"],
        model_kwargs={"img_size": c["image_size"], "patch_size": c["patch"], "embed_dim": c["width"],
                      "depth": c["depth"], "num_heads": c["width"] // HEAD_WIDTH},
        attention=levers.attention,
    )  # fmt: skip
    text = TextTower(VOCAB, c["text_context"], c["text_width"], c["text_depth"], c["text_width"] // HEAD_WIDTH,
                     embed_dim=c["embed_dim"], norm_eps=1e-5, attention=levers.attention)  # fmt: skip
    return ContrastiveModule(vision, text, [InfoNCE()], warmup_steps=10, fused_optimizer=levers.fused_optimizer)


class _StepTimes:
    """Lightning callback: wall time between consecutive batch ends, after ``warmup`` batches."""

    def __init__(self, warmup: int) -> None:
        import lightning.pytorch as pl

        class Callback(pl.Callback):
            def on_train_batch_end(inner, *args, **kwargs) -> None:
                now = time.perf_counter()
                if self.last is not None and self.seen >= warmup:
                    self.times.append(now - self.last)
                self.last, self.seen = now, self.seen + 1

        self.callback, self.times, self.last, self.seen = Callback(), [], None, 0


def run_suite(c: dict, precision: str, steps: int, warmup: int, levers: SuiteLevers) -> tuple[float, float]:
    import lightning.pytorch as pl
    from torch.utils.data import DataLoader

    from experiments.memory import ReuseFreedMemory

    model = suite_model(c, levers)
    batch = synthetic_batch(c)
    loader = DataLoader([batch] * (steps + warmup + 1), batch_size=None)
    timer = _StepTimes(warmup)
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, precision=precision, max_steps=steps + warmup + 1, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        log_every_n_steps=10, num_sanity_val_steps=0,
        callbacks=[timer.callback] + ([ReuseFreedMemory()] if levers.reuse_memory else []),
    )  # fmt: skip
    _reset_peak_rss()
    trainer.fit(model, train_dataloaders=loader)
    return statistics.median(timer.times), _peak_rss_mib()


def suite_flops(c: dict) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    model, batch = suite_model(c), synthetic_batch(c)
    with FlopCounterMode(display=False) as counter:
        term = next(iter(model.terms.values()))
        term(model.encode(batch))["loss"].backward()
    return float(counter.get_total_flops())


# ---- open_clip ---------------------------------------------------------------------------------
def open_clip_model(c: dict):
    import open_clip

    return open_clip.CLIP(
        embed_dim=c["embed_dim"],
        vision_cfg={"image_size": c["image_size"], "patch_size": c["patch"], "width": c["width"],
                    "layers": c["depth"], "head_width": HEAD_WIDTH},
        text_cfg={"context_length": c["text_context"], "vocab_size": VOCAB, "width": c["text_width"],
                  "heads": c["text_width"] // HEAD_WIDTH, "layers": c["text_depth"]},
    )  # fmt: skip


def _open_clip_step(model, loss_fn, optimizer, batch, precision: str) -> None:
    # open_clip's train_one_epoch without gradient accumulation: autocast forward, loss, backward, step.
    optimizer.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "amp_bf16"):
        image_features, text_features, logit_scale = model(batch["image"], batch["text"])
        loss = loss_fn(image_features, text_features, logit_scale)
    loss.backward()
    optimizer.step()
    with torch.no_grad():
        model.logit_scale.clamp_(0, 4.6052)


def run_open_clip(c: dict, precision: str, steps: int, warmup: int) -> tuple[float, float]:
    import open_clip

    model, batch = open_clip_model(c).train(), synthetic_batch(c)
    loss_fn = open_clip.ClipLoss()
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-4, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.2)
    _reset_peak_rss()
    for _ in range(warmup):
        _open_clip_step(model, loss_fn, optimizer, batch, precision)
    times = [_timed(lambda: _open_clip_step(model, loss_fn, optimizer, batch, precision)) for _ in range(steps)]
    return statistics.median(times), _peak_rss_mib()


def open_clip_flops(c: dict) -> float:
    import open_clip
    from torch.utils.flop_counter import FlopCounterMode

    model, batch = open_clip_model(c), synthetic_batch(c)
    with FlopCounterMode(display=False) as counter:
        image_features, text_features, logit_scale = model(batch["image"], batch["text"])
        open_clip.ClipLoss()(image_features, text_features, logit_scale).backward()
    return float(counter.get_total_flops())


# ---- report ------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", nargs="+", choices=sorted(CONFIGS), default=["tiny", "vit_s16"])
    parser.add_argument("--steps", type=int, default=5, help="timed steps per phase (>= 5)")
    parser.add_argument(
        "--warmup",
        type=int,
        default=5,
        help="untimed steps before each phase (bf16 kernels warm up over the first few)",
    )
    parser.add_argument("--rounds", type=int, default=2, help="alternations suite / open_clip per precision")
    parser.add_argument("--precisions", nargs="+", choices=["fp32", "bf16"], default=["fp32", "bf16"])
    parser.add_argument(
        "--attention",
        choices=["auto", "fused", "explicit"],
        default="auto",
        help="the suite's attention kernel (auto: explicit matmuls on CPU under bf16)",
    )
    parser.add_argument("--no-fused-optimizer", action="store_true", help="the suite's AdamW without its fused kernel")
    parser.add_argument(
        "--no-reuse-memory", action="store_true", help="the suite without the ReuseFreedMemory callback"
    )
    args = parser.parse_args()
    levers = SuiteLevers(args.attention, not args.no_fused_optimizer, not args.no_reuse_memory)
    print(f"suite levers: {levers}")
    import warnings

    warnings.filterwarnings("ignore")  # Lightning's notes about workers and logging on a synthetic loader
    import logging

    for name in ("lightning.pytorch", "lightning.fabric", "lightning.pytorch.utilities.rank_zero"):
        logging.getLogger(name).setLevel(logging.ERROR)

    peaks = {"fp32": matmul_peak(torch.float32), "bf16": matmul_peak(torch.bfloat16)}
    print(f"matmul peak (best square matmul, {torch.get_num_threads()} threads): fp32 {peaks['fp32'] / 1e12:.3f} TFLOP/s, "
          f"bf16 {peaks['bf16'] / 1e12:.3f} TFLOP/s")  # fmt: skip
    rows: list[Row] = []
    for name in args.configs:
        c = CONFIGS[name]
        flops = {"suite": suite_flops(c), "open_clip": open_clip_flops(c)}
        print(
            f"\n{name}: {c}\nFLOPs per step (fwd+bwd): suite {flops['suite'] / 1e9:.1f} G, open_clip {flops['open_clip'] / 1e9:.1f} G"
        )
        for suite_precision, open_clip_precision, peak in (
            ("32-true", "fp32", "fp32"),
            ("bf16-mixed", "amp_bf16", "bf16"),
        ):
            if peak not in args.precisions:
                continue
            times: dict[str, list[tuple[float, float]]] = {"suite": [], "open_clip": []}
            for _ in range(args.rounds):  # alternate, so drift in the machine's speed hits both alike
                times["suite"].append(run_suite(c, suite_precision, args.steps, args.warmup, levers))
                times["open_clip"].append(run_open_clip(c, open_clip_precision, args.steps, args.warmup))
            for implementation, precision in (("suite", suite_precision), ("open_clip", open_clip_precision)):
                step = min(t for t, _ in times[implementation])  # the best round's median step
                rss = max(r for _, r in times[implementation])
                row = Row(name, implementation, precision, step, c["batch"] / step, rss, flops[implementation])
                rows.append(row)
                print(f"  {implementation:9s} {precision:10s} {step:7.3f} s/step {row.samples_per_s:8.1f} samples/s "
                      f"{rss:7.0f} MiB peak  {100 * row.fraction_of(peaks[peak]):5.1f}% of the {peak} peak")  # fmt: skip

    print(
        "\n| config | implementation | precision | samples/s | s/step | peak RSS MiB | GFLOP/step | % of matmul peak |"
    )
    print("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        peak = peaks["bf16" if "bf16" in r.precision else "fp32"]
        print(f"| {r.config} | {r.implementation} | {r.precision} | {r.samples_per_s:.1f} | {r.step_s:.3f} | "
              f"{r.peak_rss_mib:.0f} | {r.flops / 1e9:.1f} | {100 * r.fraction_of(peak):.1f} |")  # fmt: skip
    speedups = []
    for name in args.configs:
        best = {impl: max(r.samples_per_s for r in rows if r.config == name and r.implementation == impl)
                for impl in ("suite", "open_clip")}  # fmt: skip
        speedups.append(best["suite"] / best["open_clip"])
        print(f"{name}: suite best {best['suite']:.1f} samples/s, open_clip best {best['open_clip']:.1f} samples/s, "
              f"{speedups[-1]:.2f}x")  # fmt: skip
    print(f"speedup_vs_open_clip={min(speedups):.3f}")


if __name__ == "__main__":
    main()
