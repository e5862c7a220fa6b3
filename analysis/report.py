"""One checkpoint's full analysis: zero-shot, geometry, probes and (on ShapesWorld) the
explanations' pointing game into a report directory (JSON, PNG figures, a markdown summary) and
into the run's TensorBoard (scalars, figures and overlays as images, the embedding projector)."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from analysis.checkpoint import LoadedCheckpoint, run_directory
from analysis.commands import geometry_analysis, probe_analysis, zeroshot_benchmarks
from analysis.embed import DEFAULT_OPTIONS, EmbedOptions, dataset_length, embed_images, embed_texts
from analysis.explain import available_methods
from analysis.explain.command import explain_pointing
from common.errors import UserError
from common.files import write_json, write_text
from datamodules.suites import ClassificationSuite
from variants.objectives.base import present


def write_report(
    loaded: LoadedCheckpoint,
    suites: list,
    probe_suites: list,
    out: Path,
    tensorboard: bool = True,
    linear_probe: bool = True,
    tsne_points: int = 2000,
    seed: int = 0,
    projector_points: int = 500,
    options: EmbedOptions = DEFAULT_OPTIONS,
    explain_samples: int | None = None,
) -> dict:
    """Run every analysis, write ``out/report.md`` and ``out/report.json``; returns the latter.
    The pointing game runs when the suites include ShapesWorld and a method applies to the towers
    (``explain_samples`` items: default the run's test_samples)."""
    (out / "report.json").unlink(missing_ok=True)  # never left beside results of another pass
    zeroshot = zeroshot_benchmarks(loaded, suites, out, linear_probe=linear_probe, seed=seed, options=options)
    geometry = geometry_analysis(loaded, suites, out, tsne_points=tsne_points, seed=seed, options=options)
    probes = probe_analysis(loaded, probe_suites, out, options=options)
    explained = None
    if any(s.name.startswith("shapesworld") for s in suites) and available_methods(loaded.model):
        try:
            explained = explain_pointing(loaded, out, samples=explain_samples, batch_size=min(options.batch_size, 64))
        except UserError as error:  # a tower the methods cannot read: the rest of the report still stands
            warnings.warn(f"report: no pointing game: {error}", stacklevel=2)
    metrics = zeroshot["metrics"] | geometry["metrics"] | probes["metrics"] | (explained or {}).get("metrics", {})
    summary = {"model": loaded.name, "checkpoint": str(loaded.path), "step": loaded.global_step, "metrics": metrics}
    write_json(out / "report.json", summary)
    write_text(out / "report.md", markdown(loaded, zeroshot, geometry, probes, out, explained))
    if tensorboard:
        log_dir = run_directory(loaded.path) or out / "tensorboard"
        figures = geometry["figures"] | probes["figures"] | (explained or {}).get("figures", {})
        to_tensorboard(loaded, log_dir, metrics, figures, suites, projector_points, options)
        summary["tensorboard"] = str(log_dir)
    return summary


def to_tensorboard(
    loaded: LoadedCheckpoint,
    log_dir: Path,
    metrics: dict[str, float],
    figures: dict[str, str],
    suites: list,
    projector_points: int,
    options: EmbedOptions = DEFAULT_OPTIONS,
) -> None:
    """Scalars at the checkpoint's step, the figures as images, and the first classification
    suite's images and class prompts in the embedding projector (with thumbnails)."""
    from torch.utils.tensorboard import SummaryWriter  # tensorboard is slow to import

    step = loaded.global_step
    with SummaryWriter(log_dir=str(log_dir)) as writer:
        for name, value in metrics.items():
            if value is not None:
                writer.add_scalar(name, value, step)
        for name, path in figures.items():
            with Image.open(path) as image:
                array = torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1)
            writer.add_image(f"analysis/{name}", array, step)
        suite = next((s for s in suites if isinstance(s, ClassificationSuite)), None)
        if suite is not None and projector_points > 0:
            subset = torch.utils.data.Subset(suite.test, range(min(projector_points, dataset_length(suite.test))))
            images = embed_images(loaded, subset, desc="projector", options=options)
            assert images.labels is not None, "a classification suite's items carry their label"
            prompts = suite.class_prompts()
            texts = present(embed_texts(loaded, [p[0] for p in prompts], options=options), "text")
            labels = [f"image: {suite.classnames[int(y)]}" for y in images.labels] + [f"text: {p[0]}" for p in prompts]
            thumbnails = torch.stack([_thumbnail(subset[i]["image"], loaded) for i in range(len(subset))])
            blank = torch.ones(len(prompts), *thumbnails.shape[1:])
            writer.add_embedding(
                torch.cat([images.image, texts]),
                metadata=labels,
                label_img=torch.cat([thumbnails, blank]),
                global_step=step,
                tag=f"analysis/{suite.name}",
            )


def _thumbnail(image, loaded: LoadedCheckpoint, size: int = 32) -> torch.Tensor:
    """A raw suite image as a float [3, size, size] in [0, 1] for the projector."""
    mean, std = loaded.normalisation()
    tensor = loaded.image_transform(image) * std + mean
    return torch.nn.functional.interpolate(tensor[None], size=(size, size), mode="bilinear", antialias=True)[0].clamp(
        0, 1
    )


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}"


def markdown(
    loaded: LoadedCheckpoint, zeroshot: dict, geometry: dict, probes: dict, out: Path, explained: dict | None = None
) -> str:
    """The human summary of a report directory, figures linked relatively."""
    lines = [f"# Analysis of {loaded.name} (step {loaded.global_step})", "", f"Checkpoint: `{loaded.path}`", ""]
    if loaded.global_note:
        lines += [f"Note: {loaded.global_note} (the linear probe, geometry and text-only probes use them).", ""]
    records = zeroshot["records"]
    probe_by_suite = {r["dataset"]: r["metrics"] for r in records if r["task"] == "linear_probe"}
    classification = [r for r in records if r["task"] == "zeroshot_classification"]
    if classification:
        lines += ["## Zero-shot classification (%)", "", "| suite | top-1 | top-5 | mean per-class recall | linear probe top-1 |",
                  "| --- | ---: | ---: | ---: | ---: |"]  # fmt: skip
        for r in classification:
            m, lp = r["metrics"], probe_by_suite.get(r["dataset"], {})
            lines.append(
                f"| {r['dataset']} | {_pct(m['acc1'])} | {_pct(m['acc5'])} | {_pct(m['mean_per_class_recall'])} | {_pct(lp.get('lp_acc1'))} |"
            )
        lines.append("")
    retrieval = [r for r in records if r["task"] == "zeroshot_retrieval"]
    if retrieval:
        lines += ["## Retrieval recall (%)", "", "| suite | I->T R@1 | R@5 | R@10 | T->I R@1 | R@5 | R@10 |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]  # fmt: skip
        for r in retrieval:
            m = r["metrics"]
            cells = [_pct(m[f"{side}_retrieval_recall@{k}"]) for side in ("text", "image") for k in (1, 5, 10)]
            lines.append(f"| {r['dataset']} | " + " | ".join(cells) + " |")
        lines.append("")
    if geometry["metrics"]:
        lines += ["## Geometry", "", "| measure | value |", "| --- | ---: |"]
        lines += [f"| {name.removeprefix('geometry/')} | {value:.4g} |" for name, value in geometry["metrics"].items()]
        lines.append("")
    if probes["grounded"]:
        lines += ["## Grounded probes (pick the true caption)", "", "| probe | accuracy % | 95% CI | chance % | n |",
                  "| --- | ---: | --- | ---: | ---: |"]  # fmt: skip
        for name, r in probes["grounded"].items():
            low, high = r["ci95"]
            lines.append(f"| {name} | {_pct(r['acc'])} | {_pct(low)}-{_pct(high)} | {_pct(r['chance'])} | {r['n']} |")
        lines.append("")
    lines += [
        "## Text-only pair similarity (mean cosine)",
        "",
        "| pairs | " + " | ".join(probes["text"]["shapesworld"]) + " |",
    ]
    lines.append("| --- |" + " ---: |" * len(probes["text"]["shapesworld"]))
    for pairs, kinds in probes["text"].items():
        lines.append(
            f"| {pairs} | "
            + " | ".join(f"{kinds[k]['mean']:.3f}" if k in kinds else "" for k in probes["text"]["shapesworld"])
            + " |"
        )
    lines.append("")
    if explained:
        lines += _explain_section(explained)
    figures = (
        geometry["figures"] | probes["figures"] | ({"explain": explained["figures"]["explain"]} if explained else {})
    )
    if figures:
        lines += ["## Figures", ""]
        lines += [f"![{name}]({os.path.relpath(path, out)})" for name, path in figures.items()]
        lines.append("")
    return "\n".join(lines)


def _explain_section(explained: dict) -> list[str]:
    """The pointing game's table: one row per method and query."""
    world = explained["world"]
    lines = [
        "## Pointing game (explanations against ShapesWorld's object positions)",
        "",
        f"{world['samples']} scenes of 2-{max(2, world['max_objects'])} objects; a hit when the heat map's maximum lies in "
        "the named object's box (ties share the hit); chance: the box's share of the image. "
        "`python -m analysis explain` (`explain.json`, overlays in `explain/`).",
        "",
        "| method | query | pointing % | 95% CI | chance % | heat inside % | n |",
        "| --- | --- | ---: | --- | ---: | ---: | ---: |",
    ]
    queries = {
        "query": "a <color> <shape>",
        "shape_query": "a <shape>",
        "word_color": "its <color> word",
        "word_shape": "its <shape> word",
    }
    for method, kinds in explained["pointing"].items():
        for kind, r in kinds.items():
            low, high = r["ci95"]
            lines.append(
                f"| {method} | {queries.get(kind, kind)} | {_pct(r['pointing'])} | {_pct(low)}-{_pct(high)} | "
                f"{_pct(r['chance'])} | {_pct(r['heat_inside'])} | {r['n']} |"
            )
    return [*lines, ""]
