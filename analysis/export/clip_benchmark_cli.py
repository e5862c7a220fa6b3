"""``python -m analysis.export.clip_benchmark_cli eval ...``: CLIP_benchmark's own command line
(``clip_benchmark.cli.main``, the same arguments), with one upstream bug fixed when it is present.

CLIP_benchmark 1.6.2's ``metrics.zeroshot_classification.accuracy`` converts a one-element 1-D
array with ``float()``, which NumPy 2 refuses ("only 0-dimensional arrays can be converted to
Python scalars"; LAION-AI/CLIP_benchmark issue 147, open). Where that happens, the function is
replaced by the same computation summed to a 0-d tensor; the model loading, datasets, prompts,
classifier, evaluation loop and result file are all CLIP_benchmark's.
"""

from __future__ import annotations

import sys

import numpy as np
import torch


def _accuracy(output: torch.Tensor, target: torch.Tensor, topk: tuple[int, ...] = (1,)) -> list[float]:
    """CLIP_benchmark's top-k accuracy, with ``sum(0)`` instead of ``sum(0, keepdim=True)``."""
    pred = output.topk(max(topk), 1, True, True)[1].t()
    correct = pred.eq(target.view(1, -1).expand_as(pred))
    return [float(correct[:k].reshape(-1).float().sum(0).cpu()) / len(target) for k in topk]


def needs_fix() -> bool:
    """Whether this NumPy refuses what CLIP_benchmark's accuracy does."""
    try:
        float(np.zeros(1))
    except TypeError:
        return True
    return False


def main() -> None:
    from clip_benchmark import cli
    from clip_benchmark.metrics import zeroshot_classification

    if needs_fix():
        zeroshot_classification.accuracy = _accuracy
    sys.argv[0] = "clip_benchmark"
    cli.main()


if __name__ == "__main__":
    main()
