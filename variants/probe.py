"""The linear probe: a logistic regression on frozen image embeddings (CLIP appendix A.3), one
method for a run's evaluation (``ContrastiveModule``'s "linear_probe" tasks) and the analysis
(``analysis.zeroshot.linear_probe``), so their numbers mean the same thing.

scikit-learn is imported when a probe is fitted, not with the module (training never needs it).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from common.errors import UserError

PROBE_C = tuple(float(c) for c in np.logspace(-3, 3, 7))  # inverse L2 strengths tried


def fit_linear_probe(
    train_x: np.ndarray,
    train_y: np.ndarray,
    seed: int = 0,
    val_fraction: float = 0.2,
    fix: str = "raise --samples",
) -> tuple[Any, dict]:
    """Logistic regression whose L2 strength is chosen on a held-out part of the training set,
    then refitted on all of it (CLIP appendix A.3 sweeps the same parameter). ``fix`` ends the
    message when the set is too small."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split

    counts = np.bincount(train_y)[np.unique(train_y)]
    # Stratify when every class can have a member on both sides (tiny sets cannot).
    can_stratify = counts.min() >= 2 and int(np.ceil(val_fraction * len(train_y))) >= len(counts)
    stratify = train_y if can_stratify else None
    fit_x, val_x, fit_y, val_y = train_test_split(
        train_x, train_y, test_size=val_fraction, random_state=seed, stratify=stratify
    )
    if len(np.unique(fit_y)) < 2:
        raise UserError(f"the linear probe's {len(train_y)} training images are too few to fit 2 classes: {fix}")
    val_accuracy = {}
    for c in PROBE_C:
        probe = LogisticRegression(C=c, max_iter=2000).fit(fit_x, fit_y)
        val_accuracy[c] = float(probe.score(val_x, val_y))
    best = max(PROBE_C, key=lambda c: (val_accuracy[c], -c))  # ties: the stronger regulariser
    probe = LogisticRegression(C=best, max_iter=2000).fit(train_x, train_y)
    return probe, {
        "C": best,
        "val_acc1": val_accuracy[best],
        "val_acc1_by_C": {str(c): a for c, a in val_accuracy.items()},
    }


def probe_accuracy(
    train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray, seed: int = 0, fix: str = ""
) -> float:
    """Top-1 accuracy on (test_x, test_y) of the probe fitted on (train_x, train_y)."""
    probe, _ = fit_linear_probe(train_x, train_y, seed, fix=fix)
    return float(probe.score(test_x, test_y))
