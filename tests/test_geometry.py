"""analysis.geometry against naive float64 references written from the formulas, plus known cases."""

from __future__ import annotations

import io
import itertools
import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from matplotlib.legend import Legend

from analysis.geometry import (
    alignment,
    feature_statistics,
    gap_shift_curve,
    gap_shift_figure,
    gap_vector,
    geometry_report,
    modality_gap,
    modality_separability,
    pca_figure,
    pca_summary,
    plot_tsne,
    shift_embeddings,
    tsne_embedding,
    tsne_figure,
    uniformity,
)

from helpers import REPO


def sphere(n: int, d: int, seed: int = 0, offset: float = 0.0) -> torch.Tensor:
    """n unit vectors in d dims; `offset` pushes them towards +e_0, a cone like one CLIP modality."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=generator)
    x[:, 0] += offset
    return F.normalize(x, dim=-1)


# --- pca_summary --------------------------------------------------------------------------------


def naive_pca(x: np.ndarray) -> dict:
    centered = x - x.mean(0)
    eigenvalues = np.sort(np.linalg.eigvalsh(centered.T @ centered / (len(x) - 1)))[::-1][: min(x.shape)]
    eigenvalues = np.clip(eigenvalues, 0, None)
    ratio = eigenvalues / eigenvalues.sum()
    k, total = 0, 0.0
    while total < 0.95:
        total += ratio[k]
        k += 1
    sigma = np.linalg.svd(centered, compute_uv=False)
    entropy = -sum(s / sigma.sum() * math.log(s / sigma.sum()) for s in sigma if s > 0)
    return {
        "explained_variance_ratio": ratio,
        "components_95": k,
        "effective_rank": math.exp(entropy),
        "participation_ratio": eigenvalues.sum() ** 2 / (eigenvalues**2).sum(),
    }


@pytest.mark.parametrize("shape", [(40, 6), (5, 9)])  # N > D and N < D (only N components)
def test_pca_summary_matches_naive(shape: tuple[int, int]) -> None:
    x = sphere(*shape, offset=1.0) * torch.linspace(0.2, 2.0, shape[1])  # anisotropic
    got, want = pca_summary(x), naive_pca(x.double().numpy())
    assert len(got["explained_variance_ratio"]) == min(shape)
    np.testing.assert_allclose(got["explained_variance_ratio"], want["explained_variance_ratio"], atol=1e-6)
    assert got["components_95"] == want["components_95"]
    assert got["effective_rank"] == pytest.approx(want["effective_rank"], rel=1e-6)
    assert got["participation_ratio"] == pytest.approx(want["participation_ratio"], rel=1e-6)
    json.dumps(got)


def test_pca_summary_accepts_numpy() -> None:
    x = sphere(30, 5)
    from_numpy, from_torch = pca_summary(x.numpy()), pca_summary(x)
    np.testing.assert_allclose(from_numpy.pop("explained_variance_ratio"), from_torch.pop("explained_variance_ratio"))
    assert from_numpy == pytest.approx(from_torch)


def test_rank_one_data_has_effective_rank_and_participation_ratio_one() -> None:
    direction = F.normalize(torch.randn(8), dim=0)
    x = torch.randn(50, 1) * direction + 0.3  # a line (offset: centering must remove it)
    summary = pca_summary(x)
    assert summary["effective_rank"] == pytest.approx(1.0, abs=1e-4)
    assert summary["participation_ratio"] == pytest.approx(1.0, abs=1e-4)
    assert summary["components_95"] == 1


def test_isotropic_gaussian_has_effective_rank_close_to_dimension() -> None:
    d = 8
    summary = pca_summary(torch.randn(4000, d))
    assert summary["effective_rank"] > 0.98 * d
    assert summary["participation_ratio"] > 0.95 * d
    assert summary["components_95"] == d


# --- modality gap and the shift -----------------------------------------------------------------


def test_modality_gap_matches_naive() -> None:
    image, text = sphere(30, 5, seed=1, offset=2.0), sphere(20, 5, seed=2, offset=-1.0)
    mi = [sum(float(image[i, k]) for i in range(30)) / 30 for k in range(5)]
    mt = [sum(float(text[i, k]) for i in range(20)) / 20 for k in range(5)]
    gap = math.sqrt(sum((a - b) ** 2 for a, b in zip(mi, mt, strict=True)))
    cosine = sum(a * b for a, b in zip(mi, mt, strict=True)) / math.sqrt(
        sum(a * a for a in mi) * sum(b * b for b in mt)
    )
    got = modality_gap(image, text)
    assert got["gap"] == pytest.approx(gap, rel=1e-6)
    assert got["centroid_cosine"] == pytest.approx(cosine, rel=1e-6)
    assert got["gap"] > 0.5 and got["centroid_cosine"] < 0  # the two cones point apart
    np.testing.assert_allclose(gap_vector(image, text).numpy(), np.subtract(mi, mt), atol=1e-6)
    json.dumps(got)


def test_identical_modalities_have_no_gap() -> None:
    x = sphere(40, 6, offset=1.0)
    got = modality_gap(x, x.clone())
    assert got["gap"] == pytest.approx(0.0, abs=1e-12)
    assert got["centroid_cosine"] == pytest.approx(1.0)


def test_shift_zero_is_identity() -> None:
    image, text = sphere(10, 4, seed=1, offset=2.0), sphere(10, 4, seed=2)
    shifted_image, shifted_text = shift_embeddings(image, text, gap_vector(image, text), 0.0)
    torch.testing.assert_close(shifted_image, image)
    torch.testing.assert_close(shifted_text, text)


@pytest.mark.parametrize("lam", [1.0, 0.5, -1.0])
def test_shift_matches_definition(lam: float) -> None:
    image, text = sphere(12, 4, seed=1, offset=2.0).double(), sphere(9, 4, seed=2).double()
    gap = gap_vector(image, text)
    shifted_image, shifted_text = shift_embeddings(image, text, gap, lam)
    for i in range(12):  # I'_i = (I_i - lam gap/2) / ||.||, row by row
        row = [float(image[i, k] - lam * gap[k] / 2) for k in range(4)]
        norm = math.sqrt(sum(v * v for v in row))
        assert [float(v) for v in shifted_image[i]] == pytest.approx([v / norm for v in row])
    for j in range(9):
        row = [float(text[j, k] + lam * gap[k] / 2) for k in range(4)]
        norm = math.sqrt(sum(v * v for v in row))
        assert [float(v) for v in shifted_text[j]] == pytest.approx([v / norm for v in row])
    # The pre-normalisation centroids differ by (1 - lam) gap: equal at lam = 1.
    before = (image - lam * gap / 2).mean(0) - (text + lam * gap / 2).mean(0)
    torch.testing.assert_close(before, (1 - lam) * gap)
    # After renormalising: lam = 1 closes much of the gap (not all: renormalising moves the means), lam < 0 widens it.
    new_gap = modality_gap(shifted_image, shifted_text)["gap"]
    old_gap = modality_gap(image, text)["gap"]
    if lam == 1.0:
        assert new_gap < 0.5 * old_gap
    if lam < 0:
        assert new_gap > old_gap


def test_gap_shift_curve_matches_naive_zero_shot() -> None:
    classes, n, d = 4, 60, 6
    class_text = sphere(classes, d, seed=3, offset=-2.0)
    labels = torch.randint(0, classes, (n,))
    image = F.normalize(class_text[labels] + 0.8 * torch.randn(n, d) + torch.tensor([3.0] + [0.0] * (d - 1)), dim=-1)
    gap = gap_vector(image, sphere(n, d, seed=4, offset=-2.0))  # estimated from "captions", as in the paper
    lambdas = [-0.5, 0.0, 0.5, 1.0]
    curve = gap_shift_curve(image, labels.tolist(), class_text, gap, lambdas)
    assert [point["lambda"] for point in curve] == lambdas
    json.dumps(curve)

    def naive_top1(im: torch.Tensor, te: torch.Tensor) -> float:
        correct = 0
        for i in range(n):
            scores = [sum(float(im[i, k]) * float(te[c, k]) for k in range(d)) for c in range(classes)]
            correct += int(max(range(classes), key=lambda c: scores[c]) == int(labels[i]))
        return correct / n

    assert curve[1]["top1"] == pytest.approx(naive_top1(image, class_text))  # lam = 0: plain zero-shot
    for lam, point in zip(lambdas, curve, strict=True):
        shifted_image = F.normalize(image - lam * gap / 2, dim=-1)
        shifted_text = F.normalize(class_text + lam * gap / 2, dim=-1)
        assert point["top1"] == pytest.approx(naive_top1(shifted_image, shifted_text))
        want_gap = (shifted_image.mean(0) - shifted_text.mean(0)).norm()
        assert point["gap"] == pytest.approx(float(want_gap), rel=1e-5)
    assert curve[3]["gap"] < curve[1]["gap"] < curve[0]["gap"]


# --- alignment and uniformity -------------------------------------------------------------------


@pytest.mark.parametrize("alpha", [2.0, 1.0])
def test_alignment_matches_naive(alpha: float) -> None:
    x, y = sphere(15, 5, seed=1), sphere(15, 5, seed=2)
    naive = (
        sum(math.sqrt(sum((float(x[i, k]) - float(y[i, k])) ** 2 for k in range(5))) ** alpha for i in range(15)) / 15
    )
    assert alignment(x, y, alpha) == pytest.approx(naive, rel=1e-6)
    assert alignment(x, x.clone()) == 0.0
    with pytest.raises(ValueError):
        alignment(x, y[:-1])


@pytest.mark.parametrize("t", [2.0, 0.5])
def test_uniformity_matches_naive(t: float) -> None:
    x = sphere(25, 4, seed=1)
    pairs = list(itertools.combinations(range(25), 2))
    total = sum(math.exp(-t * sum((float(x[i, k]) - float(x[j, k])) ** 2 for k in range(4))) for i, j in pairs)
    assert uniformity(x, t=t) == pytest.approx(math.log(total / len(pairs)), rel=1e-6)


def test_uniformity_known_cases_and_stability() -> None:
    collapsed = F.normalize(torch.ones(30, 5), dim=-1)
    assert uniformity(collapsed) == pytest.approx(0.0, abs=1e-12)
    spread = sphere(30, 5)
    assert uniformity(spread) < -0.5
    # exp(-1000 d^2) underflows to 0 for every pair: a naive log(mean(exp)) gives -inf, logsumexp does not.
    assert math.isfinite(uniformity(spread, t=1000.0))
    # Subsampling is seeded: the same seed gives the same number, another seed a (slightly) different one.
    big = sphere(300, 5)
    assert uniformity(big, max_points=100, seed=1) == uniformity(big, max_points=100, seed=1)
    assert uniformity(big, max_points=100, seed=1) != uniformity(big, max_points=100, seed=2)
    assert uniformity(big, max_points=100, seed=1) == pytest.approx(uniformity(big), abs=0.15)


# --- separability and feature statistics --------------------------------------------------------


def test_identical_modalities_are_not_separable() -> None:
    x = sphere(200, 8)
    got = modality_separability(x, x.clone())
    assert abs(got["accuracy"] - 0.5) < 0.15
    json.dumps(got)


def test_far_apart_clusters_are_separable() -> None:
    image, text = sphere(120, 8, seed=1, offset=6.0), sphere(80, 8, seed=2, offset=-6.0)  # unbalanced on purpose
    got = modality_separability(image, text)
    assert got["accuracy"] == 1.0
    assert got["accuracy_std"] == 0.0


def test_separability_is_seeded() -> None:
    image, text = sphere(60, 8, seed=1, offset=0.3), sphere(90, 8, seed=2)
    assert modality_separability(image, text, seed=3) == modality_separability(image, text, seed=3)


def test_feature_statistics_matches_naive() -> None:
    x = sphere(20, 6, offset=1.0)
    x[:, 5] = 0.0  # a dead dimension: sparsity and min std see it
    x[0, 4] = 5e-7  # below the 1e-6 threshold: counts as zero
    got = feature_statistics(x)
    a = x.double().numpy()
    n, d = a.shape
    means = [sum(a[i, k] for i in range(n)) / n for k in range(d)]
    stds = [math.sqrt(sum((a[i, k] - means[k]) ** 2 for i in range(n)) / n) for k in range(d)]
    distances = [math.dist(a[i], a[j]) for i in range(n) for j in range(n) if i < j]
    dist_mean = sum(distances) / len(distances)
    assert got["mean_abs_dim_mean"] == pytest.approx(sum(abs(m) for m in means) / d, rel=1e-6)
    assert got["mean_dim_std"] == pytest.approx(sum(stds) / d, rel=1e-6)
    assert got["min_dim_std"] == 0.0
    assert got["max_dim_std"] == pytest.approx(max(stds), rel=1e-6)
    assert got["sparsity"] == pytest.approx((20 + 1) / 120)
    assert got["distance_mean"] == pytest.approx(dist_mean, rel=1e-6)
    assert got["distance_std"] == pytest.approx(
        math.sqrt(sum((v - dist_mean) ** 2 for v in distances) / len(distances)), rel=1e-6
    )
    assert got["distance_min"] == pytest.approx(min(distances), rel=1e-6)  # > 0: the diagonal is excluded
    assert got["distance_max"] == pytest.approx(max(distances), rel=1e-6)
    json.dumps(got)


def test_feature_statistics_subsamples_distances() -> None:
    x = sphere(500, 6)
    small = feature_statistics(x, max_points=50, seed=0)
    assert small["mean_dim_std"] == feature_statistics(x)["mean_dim_std"]  # per-dim stats use every row
    assert small == feature_statistics(x, max_points=50, seed=0)


# --- the report ---------------------------------------------------------------------------------


@pytest.mark.parametrize("paired", [True, False])
def test_geometry_report_shape_and_json(paired: bool) -> None:
    image, text = sphere(40, 6, seed=1, offset=2.0), sphere(40 if paired else 30, 6, seed=2, offset=-2.0)
    report = geometry_report(image.numpy(), text, paired=paired)
    assert set(report) == {"image", "text", "joint", "modality_gap", "separability"} | (
        {"alignment"} if paired else set()
    )
    for side in ("image", "text"):
        assert set(report[side]) == {"n", "pca", "stats", "uniformity"}
    assert report["image"]["n"] == 40
    assert len(report["joint"]["pca"]["explained_variance_ratio"]) == 6
    assert report["modality_gap"] == modality_gap(image, text)
    assert report["separability"]["accuracy"] > 0.9
    if paired:
        assert report["alignment"] == pytest.approx(alignment(image, text))
    assert json.loads(json.dumps(report)) == report  # plain python types all the way down


# --- t-SNE and figures --------------------------------------------------------------------------


def test_tsne_embedding_keeps_clusters_apart() -> None:
    labels = torch.arange(200) % 2
    x = F.normalize(torch.randn(200, 64) * 0.2 + torch.where(labels[:, None] == 0, 1.0, -1.0) * torch.ones(64), dim=-1)
    xy = tsne_embedding(x, seed=0)
    assert xy.shape == (200, 2) and np.isfinite(xy).all()
    # The nearest 2-D neighbour of every point is in its own cluster.
    distances = np.linalg.norm(xy[:, None] - xy[None], axis=-1) + np.diag([np.inf] * 200)
    assert (labels.numpy()[distances.argmin(1)] == labels.numpy()).all()


def test_tsne_embedding_tiny_input_clips_perplexity() -> None:
    xy = tsne_embedding(sphere(6, 70), seed=0)  # perplexity 30 > 5 neighbours; dim > 50 -> PCA to 6
    assert xy.shape == (6, 2) and np.isfinite(xy).all()


def _saves(figure: Figure) -> None:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")  # no pyplot, no backend switch needed
    assert buffer.getvalue()[:4] == b"\x89PNG"


def test_tsne_figure() -> None:
    classes = ["a", "b", "c"]
    image_labels, text_labels = torch.arange(30) % 3, torch.arange(12) % 3
    image = sphere(30, 8, seed=1, offset=2.0)
    text = sphere(12, 8, seed=2, offset=-2.0)
    figure = tsne_figure(image, text, image_labels, text_labels, classes, title="toy")
    assert isinstance(figure, Figure) and len(figure.axes) == 1
    ax = figure.axes[0]
    assert [len(c.get_offsets()) for c in ax.collections] == [30, 12]  # dots, then crosses
    assert [t.get_text() for t in ax.get_legend().get_texts()] == classes
    (modalities,) = [a for a in ax.artists if isinstance(a, Legend)]
    assert [t.get_text() for t in modalities.get_texts()] == ["image", "text"]
    assert ax.get_title() == "toy"
    _saves(figure)

    many = [str(c) for c in range(25)]  # > 20 classes: no class legend, but the marker legend stays
    figure = tsne_figure(image, text, torch.arange(30) % 25, torch.arange(12) % 25, many)
    legend = figure.axes[0].get_legend()
    assert [t.get_text() for t in legend.get_texts()] == ["image", "text"] and not figure.axes[0].artists

    panel = Figure()  # a panel of several maps: no legends when asked
    axes = [panel.add_subplot(1, 2, k + 1) for k in range(2)]
    for k, ax in enumerate(axes):
        plot_tsne(ax, image, text, image_labels, text_labels, classes, legend=k == 1)
    assert axes[0].get_legend() is None and axes[1].get_legend() is not None


def test_pca_figure() -> None:
    image, text = sphere(30, 6, seed=1), sphere(30, 6, seed=2)
    report = geometry_report(image, text, paired=True)
    figure = pca_figure({"image": report["image"]["pca"], "text": report["text"], "joint": report["joint"]})
    assert isinstance(figure, Figure) and len(figure.axes) == 1
    lines = figure.axes[0].get_lines()
    assert len(lines) == 4  # three curves and the 95% line
    np.testing.assert_allclose(lines[0].get_ydata(), np.cumsum(report["image"]["pca"]["explained_variance_ratio"]))
    assert list(lines[3].get_ydata()) == [0.95, 0.95]
    _saves(figure)


def test_gap_shift_figure() -> None:
    curve = [{"lambda": lam, "top1": 0.5 + lam / 10, "gap": 1 - lam / 2} for lam in (-1.0, 0.0, 1.0)]
    figure = gap_shift_figure(curve, title="shift")
    assert isinstance(figure, Figure) and len(figure.axes) == 2  # accuracy and the twin gap axis
    accuracy_ax, gap_ax = figure.axes
    assert list(accuracy_ax.get_lines()[0].get_ydata()) == [0.4, 0.5, 0.6]
    assert list(accuracy_ax.get_lines()[1].get_xdata()) == [0.0, 0.0]  # the lambda = 0 marker
    assert list(gap_ax.get_lines()[0].get_ydata()) == [1.5, 1.0, 0.5]
    _saves(figure)


@pytest.mark.cli
def test_module_does_not_import_pyplot() -> None:
    code = "import sys, analysis.geometry; assert 'matplotlib.pyplot' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=120)
