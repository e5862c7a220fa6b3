"""The analysis commands as Python functions (the CLI and the notebooks both call these).

Each takes a loaded checkpoint and suites, writes its JSON (and figures) atomically under
``out`` and returns what it wrote as a dict.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import torch

from analysis import geometry, probes, zeroshot
from analysis.checkpoint import LoadedCheckpoint
from analysis.embed import DEFAULT_OPTIONS, EmbedOptions, dataset_length, embed_images, embed_texts
from common.errors import UserError
from common.files import save_figure, save_torch, write_json
from datamodules.shapesworld.probes import text_pairs, text_pairs_zh
from datamodules.suites import ClassificationSuite, ProbeSuite, RetrievalSuite
from variants.metrics import class_embeddings
from variants.objectives.base import present

MIN_GEOMETRY_POINTS = 10
GAP_SHIFTS = tuple(float(x) for x in np.round(np.linspace(-1.0, 1.5, 11), 2))


def slug(name: str) -> str:
    """ "shapesworld/color_shape" -> "shapesworld-color_shape" (a file name)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-")


def embed(
    loaded: LoadedCheckpoint, suites: list, out: Path, tokens: bool = False, options: EmbedOptions = DEFAULT_OPTIONS
) -> dict[str, str]:
    """Save each suite's embeddings with their metadata to ``out/embeddings/<suite>.pt``.

    Classification suites: test images (+ labels) and the class prompts; retrieval suites:
    images and all captions (+ which image each belongs to). Load with
    ``torch.load(path, weights_only=True)``.
    """
    written = {}
    for suite in suites:
        if isinstance(suite, ClassificationSuite):
            images = embed_images(loaded, suite.test, tokens=tokens, desc=suite.name, options=options)
            prompts = suite.class_prompts()
            texts = [p for class_prompts in prompts for p in class_prompts]
            meta = {
                "labels": images.labels,
                "classnames": suite.classnames,
                "text_labels": torch.arange(len(prompts)).repeat_interleave(len(prompts[0])),
            }
        else:
            images = embed_images(loaded, suite.images, tokens=tokens, desc=suite.name, options=options)
            texts = [text for captions in suite.captions for text in captions]
            meta = {"text_image": torch.tensor([i for i, c in enumerate(suite.captions) for _ in c])}
        encoded_texts = embed_texts(loaded, texts, tokens=tokens, options=options, desc=f"{suite.name} texts")
        payload = {
            "suite": suite.name,
            "model": loaded.name,
            "checkpoint": str(loaded.path),
            "step": loaded.global_step,
            "image": images.image,
            "image_ids": torch.arange(len(images.image)),
            "text": encoded_texts.text,
            "texts": texts,
            **meta,
        }
        if tokens:
            payload |= {
                "image_tokens": images.encoded.image_tokens,
                "text_tokens": encoded_texts.text_tokens,
                "text_mask": encoded_texts.text_mask,
            }
        path = out / "embeddings" / f"{slug(suite.name)}.pt"
        save_torch(path, payload)
        written[suite.name] = str(path)
    return written


def zeroshot_benchmarks(
    loaded: LoadedCheckpoint,
    suites: list,
    out: Path,
    linear_probe: bool = True,
    seed: int = 0,
    options: EmbedOptions = DEFAULT_OPTIONS,
) -> dict:
    """Zero-shot classification, retrieval and linear probes -> ``out/zeroshot.json``."""
    records = []
    for suite in suites:
        if isinstance(suite, ClassificationSuite):
            records.append(zeroshot.zeroshot_classification(loaded, suite, options=options))
            if linear_probe and suite.train is not None:
                records.append(zeroshot.linear_probe(loaded, suite, seed=seed, options=options))
        elif isinstance(suite, RetrievalSuite):
            records.append(zeroshot.zeroshot_retrieval(loaded, suite, options=options))
    result = {"records": records, "metrics": zeroshot.metric_names(records)}
    write_json(out / "zeroshot.json", result)
    return result


def geometry_analysis(
    loaded: LoadedCheckpoint,
    suites: list,
    out: Path,
    tsne_points: int = 2000,
    seed: int = 0,
    options: EmbedOptions = DEFAULT_OPTIONS,
) -> dict:
    """Embedding-space geometry -> ``out/geometry.json`` and figures under ``out/figures``.

    Paired measures (gap, alignment, uniformity, PCA, separability) use the first retrieval
    suite (each image with its first caption); the gap-shift experiment and the t-SNE figure
    use the first classification suite (images against their class prompts).
    """
    paired = next((s for s in suites if isinstance(s, RetrievalSuite)), None)
    classes = next((s for s in suites if isinstance(s, ClassificationSuite)), None)
    if paired is None and classes is None:
        raise UserError("geometry needs a retrieval or a classification suite (e.g. --suite shapesworld)")
    sizes = ([(paired.name, dataset_length(paired.images))] if paired is not None else []) + (
        [(classes.name, dataset_length(classes.test))] if classes is not None else []
    )
    for name, size in sizes:
        if size < MIN_GEOMETRY_POINTS:  # 5-fold separability, t-SNE
            raise UserError(
                f"geometry needs >= {MIN_GEOMETRY_POINTS} images per suite, {name} has {size}: raise --samples"
            )
    result: dict = {"model": loaded.name, "checkpoint": str(loaded.path), "step": loaded.global_step}
    if loaded.global_note:
        result["note"] = loaded.global_note
        warnings.warn(loaded.global_note, stacklevel=2)
    figures = {}
    gap = None
    if paired is not None:
        image = embed_images(loaded, paired.images, desc=paired.name, options=options).image
        text = present(embed_texts(loaded, [c[0] for c in paired.captions], options=options), "text")
        result["paired"] = {"suite": paired.name, **geometry.geometry_report(image, text, paired=True)}
        gap = geometry.gap_vector(image, text)
        figures["pca"] = geometry.pca_figure(
            {side: result["paired"][side]["pca"] for side in ("image", "text", "joint")}
        )
    if classes is not None:
        images = embed_images(loaded, classes.test, desc=classes.name, options=options)
        image, labels = images.image, images.labels
        assert labels is not None, "a classification suite's items carry their label"
        prompts = classes.class_prompts()
        prompt_text = present(embed_texts(loaded, [p for ps in prompts for p in ps], options=options), "text")
        classifier = class_embeddings(prompt_text.view(len(prompts), len(prompts[0]), -1))
        if gap is None:  # no paired set: images against their own class text
            gap = geometry.gap_vector(image, classifier[labels])
        curve = geometry.gap_shift_curve(image, labels, classifier, gap, list(GAP_SHIFTS))
        result["gap_shift"] = {"suite": classes.name, "curve": curve}
        figures["gap_shift"] = geometry.gap_shift_figure(curve, title=f"{loaded.name}: {classes.name}")
        keep = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))[:tsne_points]
        text_labels = torch.arange(len(prompts)).repeat_interleave(len(prompts[0]))
        figures["tsne"] = geometry.tsne_figure(
            image[keep], prompt_text, labels[keep], text_labels, classes.classnames,
            seed=seed, title=f"{loaded.name}: {classes.name}",
        )  # fmt: skip
    result["figures"] = {name: str(save_figure(fig, out / "figures" / f"{name}.png")) for name, fig in figures.items()}
    result["metrics"] = _geometry_metrics(result)
    write_json(out / "geometry.json", result)
    return result


def _geometry_metrics(result: dict) -> dict[str, float]:
    metrics: dict[str, float] = {}
    if "paired" in result:
        p = result["paired"]
        metrics |= {
            "geometry/modality_gap": p["modality_gap"]["gap"],
            "geometry/centroid_cosine": p["modality_gap"]["centroid_cosine"],
            "geometry/separability": p["separability"]["accuracy"],
            "geometry/alignment": p["alignment"],
            "geometry/uniformity_image": p["image"]["uniformity"],
            "geometry/uniformity_text": p["text"]["uniformity"],
            "geometry/effective_rank_image": p["image"]["pca"]["effective_rank"],
            "geometry/effective_rank_text": p["text"]["pca"]["effective_rank"],
        }
    return metrics


def probe_analysis(
    loaded: LoadedCheckpoint, suites: list[ProbeSuite], out: Path, options: EmbedOptions = DEFAULT_OPTIONS
) -> dict:
    """Text-only pair similarities and grounded selection probes -> ``out/probes.json``."""
    text = {
        "shapesworld": probes.text_pair_similarities(loaded, text_pairs(), options),
        "english": probes.text_pair_similarities(loaded, probes.ENGLISH_PAIRS, options),
    }
    if getattr(loaded.datamodule, "hparams", {}).get("language", "en") != "en":  # a Chinese ShapesWorld run
        text["shapesworld_zh"] = probes.text_pair_similarities(loaded, text_pairs_zh(), options)
    grounded = {suite.name: probes.selection_probe(loaded, suite, options=options) for suite in suites}
    figures = {"text_similarity": probes.similarity_figure(text)}
    if grounded:
        figures["probes"] = probes.selection_figure(grounded)
    result = {
        "model": loaded.name,
        "checkpoint": str(loaded.path),
        "step": loaded.global_step,
        **({"text_note": loaded.global_note} if loaded.global_note else {}),
        "text": text,
        "grounded": grounded,
        "figures": {name: str(save_figure(fig, out / "figures" / f"{name}.png")) for name, fig in figures.items()},
    }
    result["metrics"] = {f"probes/{name}/acc": r["acc"] for name, r in grounded.items()} | {
        f"probes/text/{pairs}/{kind}_similarity": r["mean"]
        for pairs, kinds in text.items()
        for kind, r in kinds.items()
    }
    write_json(out / "probes.json", result)
    return result


def consistency_analysis(
    loaded: LoadedCheckpoint, suites: list, out: Path, options: EmbedOptions = DEFAULT_OPTIONS
) -> dict[str, float]:
    """CyCLIP's consistency scores on every classification suite with a train split (the labelled
    k-NN references) -> ``out/consistency.json``."""
    from analysis.consistency import suite_consistency

    metrics = suite_consistency(loaded, [s for s in suites if isinstance(s, ClassificationSuite)], options=options)
    write_json(
        out / "consistency.json",
        {"model": loaded.name, "checkpoint": str(loaded.path), "step": loaded.global_step, "metrics": metrics},
    )
    return metrics
