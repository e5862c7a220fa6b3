"""Chunked, recomputing InfoNCE and sigmoid losses (issue 30) against the dense formula and
open_clip's own ``SigLipLoss``: peak memory and time of the loss alone and of a cached
Lightning step, at the contrastive batches given on the command line.

    cd benchmarks && ../.venv/bin/python chunked_losses.py --parts loss --sizes 4096 16384 65536 --threads 1
    cd benchmarks && ../.venv/bin/python chunked_losses.py --parts step --sizes 4096 --micro 128 --threads 1
    cd benchmarks && ../.venv/bin/python chunked_losses.py --parts step --sizes 65536 --micro 256 --steps 0 --paths chunked --threads 1

Every configuration runs in its own process (float32, CPU), and memory is measured as in
``grad_cache.py``: the peak resident memory (VmHWM, reset before the measured phase) and what
the phase adds to the process before it ("MiB": peak - RSS before; the inputs, the batch, the
model and the libraries are in that baseline).

- ``loss``: forward + backward of the loss alone on unit embeddings [N, 128] with a learned
  scale (and bias), one process holding all N rows. Paths: ``dense`` (the formula on the whole
  N x N matrix through autograd: today's unchunked loss), ``chunked`` (``clip_loss``/
  ``siglip_loss`` with ``chunk``: blocks of rows, recomputed in the backward), ``open_clip``
  (``open_clip.loss.SigLipLoss``; with ``open_clip chunked`` too if the installed open_clip has
  a ``chunk_size`` argument, which 3.3.0 does not). Time: the median over ``--repeats`` runs after
  one untimed run; above ``--single-above`` rows a single run, timed (memory first).
- ``step``: one full Lightning training step of the demo towers (base.yaml's ResNet-10t at 64 px
  and the CLIP text transformer w128 d4, 32 tokens) with gradient caching in micro-batches of
  ``--micro``, the term on its ``dense`` path (``chunk_size: 0``) or ``chunked``; and the plain
  step at the micro-batch size (the reference of the 1.5x target). ``--steps 0``: one step,
  memory only.

Dense paths above ``--max-dense`` rows are not run (at N = 65,536 one N x N float32 matrix is
16 GiB and the dense loss holds several). The chunked path's rows per block are the suite's
default (``variants.losses.logit_chunk``; below its dense cut-off, the block size it would use
above it) unless ``--chunk`` is given. The last lines check the issue's three targets where the
run measured what they need: (1) the cached chunked step at N = 4096 within 1.5x the plain step
at the micro-batch size (memory), (2) the cached chunked step at N = 65,536 under 8 GiB (peak,
the 3 GiB float32 batch included), (3) the chunked loss at N = 4096 at most 1.3x the dense
loss's time.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time

import torch
from train_throughput import _peak_rss_mib, _reset_peak_rss

DIM = 128


def _rss_mib() -> float:
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


def rows_per_block(n: int, chunk: int | None) -> int:
    """``--chunk``, else the suite's default block for N x N logits on a CPU (forced below its
    dense cut-off, where the default is the dense formula)."""
    from variants.losses import logit_chunk

    return chunk or logit_chunk(n, n, torch.device("cpu")) or max(32, 2**20 // n)


def open_clip_has_chunks() -> bool:
    import inspect

    from open_clip.loss import SigLipLoss

    return "chunk_size" in inspect.signature(SigLipLoss).parameters


def loss_function(loss: str, path: str, n: int, chunk: int | None):
    """(image, text, scale, bias) -> scalar loss for one row of the loss table."""
    from variants.losses import clip_loss, siglip_loss

    rows = rows_per_block(n, chunk)
    if loss == "infonce":
        if path == "dense":
            return lambda i, t, s, b: clip_loss(i, t, s)
        return lambda i, t, s, b: clip_loss(i, t, s, chunk=rows)
    if loss == "sigmoid":
        if path == "dense":
            return lambda i, t, s, b: siglip_loss(i, t, s, b)
        return lambda i, t, s, b: siglip_loss(i, t, s, b, chunk=rows)
    from open_clip.loss import SigLipLoss

    fn = SigLipLoss(chunk_size=rows) if path == "chunked" else SigLipLoss()
    return lambda i, t, s, b: fn(i, t, s, b)


def loss_run(loss: str, path: str, n: int, chunk: int | None, repeats: int, single_above: int) -> dict:
    """Forward + backward of one loss in this process: median seconds, peak MiB, MiB added."""
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(0)
    image = F.normalize(torch.randn(n, DIM, generator=g), dim=-1).requires_grad_()
    text = F.normalize(torch.randn(n, DIM, generator=g), dim=-1).requires_grad_()
    log_scale = torch.tensor(math.log(10.0), requires_grad=True)
    bias = torch.tensor(-10.0, requires_grad=True)
    fn = loss_function(loss, path, n, chunk)
    runs = 1 if n > single_above else 1 + repeats
    _reset_peak_rss()
    before = _rss_mib()
    times = []
    for _ in range(runs):
        for leaf in (image, text, log_scale, bias):
            leaf.grad = None
        start = time.perf_counter()
        fn(image, text, log_scale.exp(), bias).backward()
        times.append(time.perf_counter() - start)
    peak = _peak_rss_mib()
    return {"seconds": statistics.median(times[1:] or times), "runs": len(times[1:] or times), "peak": peak,
            "mib": peak - before}  # fmt: skip


def make_term(loss: str, path: str, n: int, chunk: int | None):
    """The step's term: InfoNCE or Sigmoid on a path, or Sigmoid whose loss is open_clip's."""
    from variants.objectives import InfoNCE, Sigmoid

    chunk_size = 0 if path == "dense" else rows_per_block(n, chunk)
    if loss == "infonce":
        return InfoNCE(chunk_size=chunk_size)
    if loss == "sigmoid":
        return Sigmoid(chunk_size=chunk_size)
    from open_clip.loss import SigLipLoss

    class OpenClipSigmoid(Sigmoid):
        """SigLIP's parameters and initialisation, open_clip's loss (float32 logits, one process)."""

        def forward(self, encoded):
            fn = SigLipLoss(chunk_size=chunk_size) if path == "chunked" else SigLipLoss()
            image, text = encoded.image.float(), encoded.text.float()
            return {"loss": fn(image, text, self.logit_scale(), self.logit_bias)}

    return OpenClipSigmoid()


def step_run(loss: str, path: str, n: int, micro: int | None, chunk: int | None, steps: int, warmup: int) -> dict:
    from grad_cache import one

    term = make_term(loss, path, n, chunk)
    return one("presets", n, micro, False, steps, warmup, terms=[term])


def _run(spec: dict, threads: int | None) -> dict:
    command = [sys.executable, __file__, "--one", json.dumps(spec)]
    if threads:
        command += ["--threads", str(threads)]
    result = subprocess.run(command, capture_output=True, text=True, env=os.environ | {"PYTHONWARNINGS": "ignore"})
    if result.returncode:
        raise SystemExit(f"{spec} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def _not_run(n: int) -> str:
    return f"not run: one {n} x {n} float32 matrix is {4 * n * n / 2**30:.1f} GiB, the dense loss holds several"


def loss_table(args: argparse.Namespace, found: dict) -> None:
    print("\n| loss | N | path | rows per block | s (fwd+bwd) | runs | vs dense | peak MiB | MiB |")
    print("| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for loss in args.losses:
        paths = [p for p in args.paths if not (loss == "open_clip" and p == "chunked" and not open_clip_has_chunks())]
        for n in args.sizes:
            dense = None
            for path in paths:
                rows = rows_per_block(n, args.chunk) if path == "chunked" else ""
                if path == "dense" and n > args.max_dense:
                    print(f"| {loss} | {n} | {path} | | {_not_run(n)} | | | | |", flush=True)
                    continue
                spec = {"part": "loss", "loss": loss, "path": path, "n": n, "chunk": args.chunk,
                        "repeats": args.repeats, "single_above": args.single_above}  # fmt: skip
                row = _run(spec, args.threads)
                found[("loss", loss, path, n)] = row
                dense = row if path == "dense" else dense
                versus = f"{row['seconds'] / dense['seconds']:.2f}x" if dense else ""
                print(f"| {loss} | {n} | {path} | {rows} | {row['seconds']:.3f} | {row['runs']} | {versus} "
                      f"| {row['peak']:.0f} | {row['mib']:.0f} |", flush=True)  # fmt: skip


def step_table(args: argparse.Namespace, found: dict) -> None:
    print(f"\n| term | contrastive batch | step | s/step | peak MiB | step MiB | vs plain at {args.micro} |")
    print("| --- | ---: | --- | ---: | ---: | ---: | ---: |")
    for loss in args.terms:
        spec = {"part": "step", "loss": loss, "path": "dense", "n": args.micro, "micro": None, "chunk": args.chunk,
                "steps": args.steps, "warmup": args.warmup}  # fmt: skip
        reference = _run(spec, args.threads)
        found[("plain", loss, args.micro)] = reference
        print(f"| {loss} | {args.micro} | plain | {reference['seconds']:.2f} | {reference['peak']:.0f} "
              f"| {reference['step']:.0f} | 1.00x |", flush=True)  # fmt: skip
        for n in args.sizes:
            for path in args.paths:
                if path == "chunked" and loss == "open_clip" and not open_clip_has_chunks():
                    continue
                name = f"micro-batches, {path}" + (
                    f" ({rows_per_block(n, args.chunk)} rows)" if path == "chunked" else ""
                )
                if path == "dense" and n > args.max_dense:
                    print(f"| {loss} | {n} | {name} | {_not_run(n)} | | | |", flush=True)
                    continue
                row = _run(spec | {"path": path, "n": n, "micro": args.micro}, args.threads)
                found[("step", loss, path, n)] = row
                print(f"| {loss} | {n} | {name} | {row['seconds']:.2f} | {row['peak']:.0f} | {row['step']:.0f} "
                      f"| {row['step'] / reference['step']:.2f}x |", flush=True)  # fmt: skip


def targets(args: argparse.Namespace, found: dict) -> None:
    """The issue's three targets, from what this run measured."""
    print()
    for loss in args.terms:
        cached, plain = found.get(("step", loss, "chunked", 4096)), found.get(("plain", loss, args.micro))
        if cached and plain:
            ratio = cached["step"] / plain["step"]
            print(f"target 1 ({loss}): cached chunked step at 4096 = {ratio:.2f}x a plain step at {args.micro} "
                  f"(memory; target <= 1.5x): {'met' if ratio <= 1.5 else 'MISSED'}")  # fmt: skip
        else:
            print(f"target 1 ({loss}): not measured in this run (needs --parts step --sizes 4096)")
    for loss in args.terms:
        row = found.get(("step", loss, "chunked", 65536))
        if row:
            print(f"target 2 ({loss}): cached chunked step at 65536 (micro-batches of {args.micro}) peaks at "
                  f"{row['peak'] / 1024:.2f} GiB (target < 8 GiB): {'met' if row['peak'] < 8192 else 'MISSED'}")  # fmt: skip
        else:
            print(f"target 2 ({loss}): not measured in this run (needs --parts step --sizes 65536)")
    for loss in [x for x in args.losses if x != "open_clip"]:
        chunked, dense = found.get(("loss", loss, "chunked", 4096)), found.get(("loss", loss, "dense", 4096))
        if chunked and dense:
            ratio = chunked["seconds"] / dense["seconds"]
            print(f"target 3 ({loss}): chunked loss at 4096 = {ratio:.2f}x the dense loss's time "
                  f"(target <= 1.3x): {'met' if ratio <= 1.3 else 'MISSED'}")  # fmt: skip
        else:
            print(f"target 3 ({loss}): not measured in this run (needs --parts loss --sizes 4096)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", nargs="+", choices=["loss", "step"], default=["loss", "step"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[4096, 16384, 65536], help="contrastive batches N")
    parser.add_argument("--losses", nargs="+", choices=["infonce", "sigmoid", "open_clip"],
                        default=["infonce", "sigmoid", "open_clip"], help="losses of the loss table")  # fmt: skip
    parser.add_argument("--terms", nargs="+", choices=["infonce", "sigmoid", "open_clip"], default=["infonce"],
                        help="terms of the step table (open_clip: Sigmoid with open_clip's SigLipLoss)")  # fmt: skip
    parser.add_argument("--paths", nargs="+", choices=["dense", "chunked"], default=["dense", "chunked"])
    parser.add_argument("--chunk", type=int, default=None, help="rows per block (default: the suite's choice)")
    parser.add_argument("--max-dense", type=int, default=16384, help="largest N run on a dense path")
    parser.add_argument("--repeats", type=int, default=3, help="timed loss runs after one untimed run")
    parser.add_argument("--single-above", type=int, default=16384, help="above this N, one timed loss run")
    parser.add_argument("--micro", type=int, default=128, help="micro-batch size of the cached steps")
    parser.add_argument("--steps", type=int, default=1, help="timed steps (0: one step, memory only)")
    parser.add_argument("--warmup", type=int, default=0)
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
        spec = json.loads(args.one)
        part = spec.pop("part")
        print(json.dumps(loss_run(**spec) if part == "loss" else step_run(**spec)))
        return
    import open_clip

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; float32; open_clip {open_clip.__version__} "
          f"(SigLipLoss chunk_size: {'yes' if open_clip_has_chunks() else 'no'})")  # fmt: skip
    found: dict = {}
    if "loss" in args.parts:
        loss_table(args, found)
    if "step" in args.parts:
        step_table(args, found)
    targets(args, found)


if __name__ == "__main__":
    main()
