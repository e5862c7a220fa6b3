"""Geometry of a CLIP-style joint embedding space, measured from extracted L2-normalised embeddings.

Inputs are [N, D] float tensors on CPU (numpy arrays are converted). Metrics return plain python
floats/ints/lists so results go straight into JSON; figure functions return a
`matplotlib.figure.Figure` built without pyplot (no global state) and never save anything.

What is measured:

- Spectrum / dimensionality (`pca_summary`): PCA explained variance, the number of components
  reaching 95% of the variance, the effective rank (Roy & Vetterli 2007, "The effective rank: a
  measure of effective dimensionality", EUSIPCO) and the participation ratio of the covariance
  eigenvalues (e.g. Gao et al. 2017, "A theory of multineuronal dimensionality, dynamics and
  measurement"). A low value means the embeddings occupy a narrow cone / few directions.
- Modality gap (`modality_gap`, `gap_vector`, `shift_embeddings`, `gap_shift_curve`): the distance
  between the image and text centroids and Mind the Gap's experiment of shifting both modalities
  along the gap vector and re-measuring zero-shot accuracy (Liang et al. 2022, "Mind the Gap:
  Understanding the Modality Gap in Multi-modal Contrastive Representation Learning",
  arXiv 2203.02053).
- Alignment and uniformity on the hypersphere (`alignment`, `uniformity`): Wang & Isola 2020,
  "Understanding Contrastive Representation Learning through Alignment and Uniformity on the
  Hypersphere", arXiv 2005.10242.
- Modality separability (`modality_separability`): cross-validated accuracy of a linear probe
  telling image from text embeddings; a linear-probe view of the gap/cone of Liang et al. 2022.
- Feature statistics (`feature_statistics`): per-dimension mean/std, sparsity and pairwise-distance
  spread, the usual "feature analyzer" summary (collapsed or dead dimensions show up here).
- t-SNE views (`tsne_embedding`, `tsne_figure`): van der Maaten & Hinton 2008, JMLR 9, with PCA to
  50 dims first (their recommendation) and the "auto" learning rate (Belkina et al. 2019,
  Kobak & Berens 2019).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib import colormaps  # the colormap registry, read only: no pyplot state
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.manifold import TSNE
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

Array = torch.Tensor | np.ndarray


def _tensor(x: Array, dtype: torch.dtype | None = torch.float64) -> torch.Tensor:
    """A CPU float tensor. Metrics use float64 (cheap at analysis sizes, avoids cancellation in
    means of nearly-equal vectors); `dtype=None` keeps a float input's own dtype."""
    t = torch.as_tensor(x).detach().cpu()
    if dtype is not None:
        return t.to(dtype)
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


def _subsample(x: torch.Tensor, max_points: int, seed: int) -> torch.Tensor:
    """At most `max_points` rows, chosen by a seeded generator so reruns give the same numbers."""
    if x.shape[0] <= max_points:
        return x
    generator = torch.Generator().manual_seed(seed)
    return x[torch.randperm(x.shape[0], generator=generator)[:max_points]]


def _floats(values: np.ndarray | torch.Tensor) -> list[float]:
    return [float(v) for v in np.asarray(values).ravel()]


# --- spectrum ---------------------------------------------------------------------------------


def pca_summary(x: Array) -> dict:
    """PCA of the rows of x [N, D], all min(N, D) components.

    - explained_variance_ratio: λ_k / Σ λ, λ the covariance eigenvalues, largest first.
    - components_95: smallest k with Σ_{j<=k} ratio_j >= 0.95.
    - effective_rank (Roy & Vetterli 2007): exp(-Σ p_k log p_k), p_k = σ_k / Σ σ, σ the singular
      values of the centered matrix. 1 for rank-1 data, D for isotropic data.
    - participation_ratio: (Σ λ)^2 / Σ λ^2 over covariance eigenvalues (λ = σ^2 / (N-1)).
    """
    data = _tensor(x).numpy()
    pca = PCA(n_components=min(data.shape), svd_solver="full").fit(data)
    ratio = pca.explained_variance_ratio_
    cumulative = np.cumsum(ratio)
    # A hair of tolerance: a cumulative sum meant to be exactly 0.95 may round to 0.9499999.
    components_95 = int(min(np.searchsorted(cumulative, 0.95 - 1e-9) + 1, len(ratio)))
    sigma = pca.singular_values_
    p = sigma / sigma.sum()
    p = p[p > 0]  # 0 log 0 = 0
    eigenvalues = pca.explained_variance_
    return {
        "explained_variance_ratio": _floats(ratio),
        "components_95": components_95,
        "effective_rank": float(np.exp(-(p * np.log(p)).sum())),
        "participation_ratio": float(eigenvalues.sum() ** 2 / (eigenvalues**2).sum()),
    }


# --- modality gap -----------------------------------------------------------------------------


def gap_vector(image: Array, text: Array) -> torch.Tensor:
    """Δ = mean_i(I_i) - mean_j(T_j), the [D] vector from the text centroid to the image centroid."""
    image, text = _tensor(image, None), _tensor(text, None)
    return image.mean(0) - text.to(image.dtype).mean(0)


def modality_gap(image: Array, text: Array) -> dict:
    """Liang et al. 2022: gap = ||mean(I) - mean(T)||_2 and centroid_cosine = cos(mean(I), mean(T)).

    For unit-norm embeddings spread over the sphere both centroids sit near 0; a large gap and
    centroid norms near 1 mean each modality lives in its own narrow cone.
    """
    image_mean, text_mean = _tensor(image).mean(0), _tensor(text).mean(0)
    return {
        "gap": float((image_mean - text_mean).norm()),
        "centroid_cosine": float(F.cosine_similarity(image_mean, text_mean, dim=0)),
    }


def shift_embeddings(image: Array, text: Array, gap: torch.Tensor, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Mind the Gap's shift: I' = normalize(I - λ Δ/2), T' = normalize(T + λ Δ/2).

    Before renormalising the centroids become mean(I) - λΔ/2 and mean(T) + λΔ/2, whose difference
    is (1 - λ) Δ: λ = 0 changes nothing, λ = 1 makes the means equal (if Δ = mean(I) - mean(T)),
    λ < 0 widens the gap. Returns tensors in the input's float dtype.
    """
    image, text = _tensor(image, None), _tensor(text, None)
    half = lam * _tensor(gap, image.dtype) / 2
    return F.normalize(image - half, dim=-1), F.normalize(text.to(image.dtype) + half, dim=-1)


def gap_shift_curve(
    image: Array, labels: Array | Sequence[int], class_text: Array, gap: torch.Tensor, lambdas: Sequence[float]
) -> list[dict]:
    """Zero-shot accuracy along the gap shift (Liang et al. 2022, Table 2 / Fig. 4).

    For each λ: I', T' = shift_embeddings(image [N, D], class_text [C, D], gap, λ);
    top1 = mean_i [argmax_c (I'_i · T'_c) == labels_i]; gap = ||mean_i I'_i - mean_c T'_c||.
    """
    labels_t = torch.as_tensor(np.asarray(labels)).long()
    curve = []
    for lam in lambdas:
        shifted_image, shifted_text = shift_embeddings(image, class_text, gap, float(lam))
        predictions = (shifted_image @ shifted_text.T).argmax(dim=1)
        curve.append(
            {
                "lambda": float(lam),
                "top1": float((predictions == labels_t).double().mean()),
                "gap": float((shifted_image.mean(0) - shifted_text.mean(0)).norm()),
            }
        )
    return curve


# --- alignment and uniformity -----------------------------------------------------------------


def alignment(x: Array, y: Array, alpha: float = 2) -> float:
    """Wang & Isola 2020: (1/N) Σ_i ||x_i - y_i||_2^α over positive pairs (x_i, y_i). Lower = better aligned."""
    x, y = _tensor(x), _tensor(y)
    if x.shape != y.shape:
        raise ValueError(f"alignment needs paired rows, got shapes {tuple(x.shape)} and {tuple(y.shape)}")
    return float((x - y).norm(dim=1).pow(alpha).mean())


def uniformity(x: Array, t: float = 2, max_points: int = 5000, seed: int = 0) -> float:
    """Wang & Isola 2020: log( (2 / (N(N-1))) Σ_{i<j} exp(-t ||x_i - x_j||^2) ).

    0 when all points coincide, more negative the more evenly the points cover the sphere.
    Rows beyond `max_points` are subsampled (seeded): the pairwise matrix is O(N^2) memory.
    """
    x = _subsample(_tensor(x), max_points, seed)
    if x.shape[0] < 2:
        raise ValueError("uniformity needs at least 2 points")
    exponents = -t * torch.pdist(x).pow(2)
    # logsumexp - log(#pairs) = log mean exp, without underflow for spread points / large t.
    return float(torch.logsumexp(exponents, dim=0) - math.log(exponents.numel()))


# --- separability and feature statistics ------------------------------------------------------


def modality_separability(image: Array, text: Array, seed: int = 0) -> dict:
    """How linearly separable the modalities are: 5-fold stratified CV accuracy of a logistic
    regression predicting image (0) vs text (1) from an embedding.

    The larger modality is subsampled (seeded) to the smaller one's size so chance is exactly 0.5;
    features are standardised first so the default L2 penalty does not depend on the embedding scale.
    accuracy ≈ 1: a hyperplane separates the modalities (a gap / two cones); ≈ 0.5: mixed.
    """
    image_np, text_np = _tensor(image).numpy(), _tensor(text).numpy()
    n = min(len(image_np), len(text_np))
    rng = np.random.default_rng(seed)
    image_np = image_np[rng.choice(len(image_np), n, replace=False)] if len(image_np) > n else image_np
    text_np = text_np[rng.choice(len(text_np), n, replace=False)] if len(text_np) > n else text_np
    features = np.concatenate([image_np, text_np])
    modality = np.repeat([0, 1], n)
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    folds = StratifiedKFold(n_splits=5, shuffle=True, random_state=seed)
    scores = cross_val_score(probe, features, modality, cv=folds)
    return {"accuracy": float(scores.mean()), "accuracy_std": float(scores.std())}


def feature_statistics(x: Array, max_points: int = 2000, seed: int = 0) -> dict:
    """Per-dimension and pairwise summaries of x [N, D].

    With m_d = mean_i x_id and s_d = sqrt(mean_i (x_id - m_d)^2) (population std):
    mean_abs_dim_mean = mean_d |m_d|; mean/min/max_dim_std = mean/min/max_d s_d;
    sparsity = fraction of entries with |x_id| < 1e-6;
    distance_* = mean / population std / min / max of ||x_i - x_j|| over pairs i < j
    (the diagonal excluded) of a seeded subsample of at most `max_points` rows.
    """
    x = _tensor(x)
    dim_mean, dim_std = x.mean(0), x.std(0, correction=0)
    distances = torch.pdist(_subsample(x, max_points, seed))
    if distances.numel() == 0:
        raise ValueError("feature_statistics needs at least 2 points")
    return {
        "mean_abs_dim_mean": float(dim_mean.abs().mean()),
        "mean_dim_std": float(dim_std.mean()),
        "min_dim_std": float(dim_std.min()),
        "max_dim_std": float(dim_std.max()),
        "sparsity": float((x.abs() < 1e-6).double().mean()),
        "distance_mean": float(distances.mean()),
        "distance_std": float(distances.std(correction=0)),
        "distance_min": float(distances.min()),
        "distance_max": float(distances.max()),
    }


def geometry_report(image: Array, text: Array, paired: bool) -> dict:
    """Every metric above in one JSON-able dict:
    {"image": {"n", "pca", "stats", "uniformity"}, "text": {...}, "joint": {"pca"},
     "modality_gap", "separability", "alignment" (only when paired: image[i], text[i] a positive pair)}.
    """
    image, text = _tensor(image), _tensor(text)

    def single(x: torch.Tensor) -> dict:
        return {
            "n": int(x.shape[0]),
            "pca": pca_summary(x),
            "stats": feature_statistics(x),
            "uniformity": uniformity(x),
        }

    report: dict[str, dict | float] = {
        "image": single(image),
        "text": single(text),
        "joint": {"pca": pca_summary(torch.cat([image, text]))},
        "modality_gap": modality_gap(image, text),
        "separability": modality_separability(image, text),
    }
    if paired:
        report["alignment"] = alignment(image, text)
    return report


# --- t-SNE and figures ------------------------------------------------------------------------


def tsne_embedding(points: Array, seed: int = 0, perplexity: float = 30.0) -> np.ndarray:
    """2-D t-SNE of points [N, D] -> numpy [N, 2]: PCA to at most 50 dims (denoises and speeds up
    the neighbour search), then sklearn TSNE(init="pca", learning_rate="auto", random_state=seed).
    Perplexity is clipped to (N - 1) / 3, the most the N - 1 neighbours of a tiny input can support.
    Runs on one OpenMP thread (see below), so a busy neighbour on the machine cannot stall it.
    """
    data = _tensor(points, torch.float32).numpy()
    n, dim = data.shape
    if dim > 50:
        data = PCA(n_components=min(50, n), random_state=seed).fit_transform(data)
    tsne = TSNE(
        n_components=2,
        perplexity=min(perplexity, (n - 1) / 3),
        init="pca",
        learning_rate="auto",
        random_state=seed,
    )
    # One OpenMP thread: sklearn's Barnes-Hut syncs threads ~1000 times, and on a shared machine
    # a descheduled thread stalls every barrier (benchmarks/RESULTS.md, "Analysis: t-SNE").
    with threadpool_limits(limits=1, user_api="openmp"):
        return np.asarray(tsne.fit_transform(data))


def _class_colors(num_classes: int) -> list:
    # Class colours; > 20 classes repeat (and get no legend).
    cmap = colormaps["tab10" if num_classes <= 10 else "tab20"]
    return [cmap(c % cmap.N) for c in range(num_classes)]


def plot_tsne(
    ax: Axes,
    image: Array,
    text: Array,
    image_labels: Array | Sequence[int],
    text_labels: Array | Sequence[int],
    class_names: Sequence[str],
    seed: int = 0,
    legend: bool = True,
) -> None:
    """One t-SNE of images and texts together (a shared map, so the gap is visible) drawn on
    ``ax``: images as filled dots, texts as crosses, coloured by class; with ``legend``, a marker
    legend for the two modalities and, for <= 20 classes, a class legend right of the axes."""
    image, text = _tensor(image, torch.float32), _tensor(text, torch.float32)
    xy = tsne_embedding(torch.cat([image, text]), seed=seed)
    image_xy, text_xy = xy[: len(image)], xy[len(image) :]
    colors = _class_colors(len(class_names))
    image_colors = [colors[int(c)] for c in np.asarray(image_labels)]
    text_colors = [colors[int(c)] for c in np.asarray(text_labels)]
    ax.scatter(image_xy[:, 0], image_xy[:, 1], c=image_colors, marker="o", s=12, alpha=0.7, linewidths=0)
    ax.scatter(text_xy[:, 0], text_xy[:, 1], c=text_colors, marker="x", s=30, alpha=0.9, linewidths=1.2)
    ax.set_xticks([])
    ax.set_yticks([])
    if not legend:
        return
    modality_handles = [
        Line2D([], [], marker="o", linestyle="", color="0.3", label="image"),
        Line2D([], [], marker="x", linestyle="", color="0.3", label="text"),
    ]
    modality_legend = ax.legend(handles=modality_handles, loc="upper left", fontsize="small")
    if len(class_names) <= 20:
        ax.add_artist(modality_legend)  # keep it: a second ax.legend() call replaces the first
        class_handles = [
            Line2D([], [], marker="s", linestyle="", color=colors[c], label=str(name))
            for c, name in enumerate(class_names)
        ]
        ax.legend(handles=class_handles, loc="upper left", bbox_to_anchor=(1.01, 1), fontsize="small", title="class")


def tsne_figure(
    image: Array,
    text: Array,
    image_labels: Array | Sequence[int],
    text_labels: Array | Sequence[int],
    class_names: Sequence[str],
    seed: int = 0,
    title: str = "",
) -> Figure:
    """:func:`plot_tsne` as a figure of its own."""
    figure = Figure(figsize=(7, 6), layout="constrained")
    ax = figure.add_subplot()
    plot_tsne(ax, image, text, image_labels, text_labels, class_names, seed=seed)
    ax.set_title(title or "t-SNE of image and text embeddings")
    return figure


def pca_figure(reports: dict[str, dict]) -> Figure:
    """Cumulative explained variance Σ_{j<=k} ratio_j against k, one curve per entry of `reports`
    (e.g. {"image": ..., "text": ..., "joint": ...}); each value is a `pca_summary` output or a
    dict holding one under "pca" (a `geometry_report` section). A dashed line marks 95%."""
    figure = Figure(figsize=(6, 4), layout="constrained")
    ax = figure.add_subplot()
    for name, report in reports.items():
        summary = report.get("pca", report)
        cumulative = np.cumsum(summary["explained_variance_ratio"])
        ax.plot(np.arange(1, len(cumulative) + 1), cumulative, label=f"{name} (95% at {summary['components_95']})")
    ax.axhline(0.95, color="0.5", linestyle="--", linewidth=1)
    ax.set_xscale("log")  # the interesting part (a few dominant directions) is at small k
    ax.set_xlabel("principal components k")
    ax.set_ylabel("cumulative explained variance")
    ax.set_ylim(0, 1.02)
    ax.legend()
    return figure


def gap_shift_figure(curve: list[dict], title: str = "") -> Figure:
    """Zero-shot top-1 against the shift λ (left axis) and the resulting centroid gap (right, twin
    axis), from a `gap_shift_curve` output; a vertical line marks λ = 0 (the trained model)."""
    lambdas = [point["lambda"] for point in curve]
    figure = Figure(figsize=(6, 4), layout="constrained")
    ax = figure.add_subplot()
    ax.plot(lambdas, [point["top1"] for point in curve], marker="o", color="C0", label="top-1")
    ax.axvline(0.0, color="0.5", linestyle=":", linewidth=1)
    ax.set_xlabel("shift λ along the gap vector (1 = centroids together)")
    ax.set_ylabel("zero-shot top-1", color="C0")
    gap_ax = ax.twinx()
    gap_ax.plot(lambdas, [point["gap"] for point in curve], marker="s", color="C1", label="gap")
    gap_ax.set_ylabel("||mean(I') - mean(T')||", color="C1")
    ax.set_title(title or "Zero-shot accuracy along the modality-gap shift")
    return figure
