"""Zero-shot benchmarks of one checkpoint: classification with prompt ensembles, image-text
retrieval, and a linear probe on frozen image features.

Results are records shaped like CLIP_benchmark's output ({dataset, model, pretrained, task,
metrics}), so they can sit beside published numbers. Scoring is the checkpoint's own: cosine
of the global embeddings, or the scoring term's (FILIP's token-wise similarity).
"""

from __future__ import annotations

import warnings
from collections import Counter

import numpy as np
import torch

from analysis.checkpoint import LoadedCheckpoint
from analysis.embed import DEFAULT_OPTIONS, EmbedOptions, ImageEmbeddings, dataset_length, embed_images, embed_texts
from common.errors import UserError
from datamodules.suites import ClassificationSuite, RetrievalSuite
from datamodules.tokenizer.coverage import describe, mostly_unknown, unknown_counts
from variants.metrics import mean_per_class_recall, recall_at_k, topk_accuracy
from variants.probe import fit_linear_probe

RECALL_AT = (1, 5, 10)


def record(loaded: LoadedCheckpoint, dataset: str, task: str, metrics: dict, language: str | None = None) -> dict:
    """One CLIP_benchmark-style result record."""
    return {
        "dataset": dataset,
        "model": loaded.name,
        "pretrained": str(loaded.path),
        "step": loaded.global_step,
        "task": task,
        "metrics": metrics,
        "language": language,  # the suite's (None where its source does not say)
    }


def classification_metrics(scores: torch.Tensor, labels: torch.Tensor) -> dict:
    """acc1, acc5 (None below 5 classes, as in CLIP_benchmark) and mean per-class recall."""
    classes = scores.shape[1]
    return {
        "acc1": float(topk_accuracy(scores, labels, 1)),
        "acc5": float(topk_accuracy(scores, labels, 5)) if classes >= 5 else None,
        "mean_per_class_recall": float(mean_per_class_recall(scores, labels, classes)),
    }


@torch.inference_mode()
def zeroshot_classification(
    loaded: LoadedCheckpoint, suite: ClassificationSuite, options: EmbedOptions = DEFAULT_OPTIONS
) -> dict:
    """Classify ``suite.test`` by its prompt ensembles (CLIP section 3.1.4)."""
    needs = loaded.model.scoring_needs
    images = embed_images(loaded, suite.test, tokens="image_tokens" in needs, desc=suite.name, options=options)
    if images.labels is None:
        raise UserError(f"suite {suite.name}: test items carry no 'label'")
    prompts = suite.class_prompts()
    flat = [prompt for class_prompts in prompts for prompt in class_prompts]
    texts = embed_texts(loaded, flat, tokens="text_tokens" in needs, options=options, desc=f"{suite.name} prompts")
    scores = loaded.model.zeroshot_scores(images.encoded, texts, len(prompts[0]))
    metrics = classification_metrics(scores, images.labels)
    result = record(loaded, suite.name, "zeroshot_classification", metrics, suite.language)
    result["prompt_check"] = prompt_check(loaded, prompts)
    if result["prompt_check"]["indistinguishable_classes"]:
        warnings.warn(
            f"{suite.name}: {result['prompt_check']['indistinguishable_classes']} classes have prompts that "
            "tokenise identically to another class's (unknown words?): they can only tie",
            stacklevel=2,
        )
    if result["prompt_check"].get("mostly_unknown_prompts"):
        # A warning, not a refusal: a built-in suite's prompts are not the user's to rewrite, and the
        # command's other numbers (the linear probe) stay meaningful. A user's --templates file is
        # refused instead, when the suites are built (analysis.suite_specs).
        warnings.warn(
            f"{suite.name}: {result['prompt_check']['mostly_unknown_prompts']} class prompts are mostly unknown "
            f"tokens to the checkpoint's tokenizer ({describe(loaded.tokenizer)}), so its zero-shot accuracy says "
            "little: use prompts in the language and vocabulary the checkpoint was trained on",
            stacklevel=2,
        )
    return result


def prompt_check(loaded: LoadedCheckpoint, prompts: list[list[str]]) -> dict:
    """How many classes the tokenizer cannot tell apart (identical ids for every template), and,
    when the tokenizer has an <unk> id, the share of unknown words and how many prompts are mostly
    unknown (``datamodules.tokenizer.coverage``)."""
    ids = [tuple(map(tuple, loaded.tokenizer(class_prompts).tolist())) for class_prompts in prompts]
    counts = Counter(ids)
    check: dict = {"indistinguishable_classes": sum(counts[i] for i in counts if counts[i] > 1)}
    flat = [p for class_prompts in prompts for p in class_prompts]
    # Words and word pieces: every id but <pad>/<start>/<end> (BERT's [PAD]/[CLS]/[SEP]/[MASK]); an
    # unknown word counts as a word, and a character missing from a BERT vocabulary is one [UNK].
    unknown = unknown_counts(loaded.tokenizer, flat)
    if unknown is not None:
        check["unknown_word_fraction"] = float(unknown[0].sum() / unknown[1].sum().clamp(min=1))
        check["mostly_unknown_prompts"] = len(mostly_unknown(loaded.tokenizer, flat))
    return check


def caption_positives(captions: list[list[str]]) -> tuple[list[str], torch.Tensor]:
    """All captions flattened, and positives [images, texts]: text j is a positive of image i
    when its string is one of image i's captions (identical strings score identically, so a
    duplicate caption of another image counts as the same answer)."""
    flat = [text for image_captions in captions for text in image_captions]
    text_ids: dict[str, list[int]] = {}
    for j, text in enumerate(flat):
        text_ids.setdefault(text, []).append(j)
    positives = torch.zeros(len(captions), len(flat), dtype=torch.bool)
    for i, image_captions in enumerate(captions):
        for text in image_captions:
            positives[i, text_ids[text]] = True
    return flat, positives


@torch.inference_mode()
def zeroshot_retrieval(
    loaded: LoadedCheckpoint, suite: RetrievalSuite, options: EmbedOptions = DEFAULT_OPTIONS
) -> dict:
    """Recall@k both ways, CLIP-style: a query is a hit when any positive is in its top k.
    CLIP_benchmark's names: text retrieval = image -> text, image retrieval = text -> image."""
    if len(suite.captions) != dataset_length(suite.images):
        raise UserError(
            f"suite {suite.name}: {dataset_length(suite.images)} images but {len(suite.captions)} caption lists"
        )
    needs = loaded.model.scoring_needs
    images = embed_images(loaded, suite.images, tokens="image_tokens" in needs, desc=suite.name, options=options)
    flat, positives = caption_positives(suite.captions)
    texts = embed_texts(loaded, flat, tokens="text_tokens" in needs, options=options, desc=f"{suite.name} captions")
    i2t, t2i = loaded.model.score(images.encoded, texts)
    positives = positives.to(i2t.device)
    metrics = {}
    n_images, n_texts = positives.shape
    for k in RECALL_AT:  # None where k reaches every candidate (trivially 1)
        metrics[f"text_retrieval_recall@{k}"] = float(recall_at_k(i2t, positives, k)) if k < n_texts else None
        metrics[f"image_retrieval_recall@{k}"] = float(recall_at_k(t2i.T, positives.T, k)) if k < n_images else None
    result = record(loaded, suite.name, "zeroshot_retrieval", metrics, suite.language)
    return result | {"n_images": n_images, "n_texts": n_texts}


@torch.inference_mode()
def linear_probe(
    loaded: LoadedCheckpoint,
    suite: ClassificationSuite,
    seed: int = 0,
    options: EmbedOptions = DEFAULT_OPTIONS,
    trunk: bool = False,
) -> dict:
    """Linear probe on the frozen, normalised global image embeddings; with ``trunk``, on the
    vision backbone's pooled features before the projection (SLIP's protocol, Mu et al. 2021,
    section 4: a linear classifier on the frozen image encoder), standardised with the training
    split's mean and std. Records task "linear_probe" or "linear_probe_trunk"."""
    if suite.train is None:
        raise UserError(f"suite {suite.name} has no training split for a linear probe")
    train = embed_images(loaded, suite.train, desc=f"{suite.name} train", options=options, trunk=trunk)
    test = embed_images(loaded, suite.test, desc=f"{suite.name} test", options=options, trunk=trunk)
    train_labels, test_labels = _labels(train, suite.name), _labels(test, suite.name)
    train_y = train_labels.cpu().numpy()
    if len(np.unique(train_y)) < 2:
        raise UserError(f"suite {suite.name}: the linear probe needs at least 2 classes in the training split")
    train_x, test_x = train.image.cpu().numpy(), test.image.cpu().numpy()
    if trunk:  # unnormalised features at the backbone's scale: standardise on the training split
        mean, std = train_x.mean(axis=0), train_x.std(axis=0) + 1e-6
        train_x, test_x = (train_x - mean) / std, (test_x - mean) / std
    probe, chosen = fit_linear_probe(train_x, train_y, seed)
    classes = len(suite.classnames)
    scores = torch.full((len(test_labels), classes), -np.inf, dtype=torch.float64)
    log_proba = probe.predict_log_proba(test_x)
    scores[:, torch.as_tensor(probe.classes_)] = torch.as_tensor(log_proba, dtype=torch.float64)
    metrics = {f"lp_{key}": value for key, value in classification_metrics(scores, test_labels.cpu()).items()}
    result = record(
        loaded, suite.name, "linear_probe_trunk" if trunk else "linear_probe", metrics | chosen, suite.language
    )
    if loaded.global_note:
        result["note"] = loaded.global_note
    return result


def _labels(embeddings: ImageEmbeddings, suite: str) -> torch.Tensor:
    if embeddings.labels is None:
        raise UserError(f"suite {suite}: its items carry no 'label'")
    return embeddings.labels


def metric_names(records: list[dict]) -> dict[str, float]:
    """Records -> the suite's stable scalar names (zeroshot/<suite>/top1, retrieval/<suite>/i2t_R@1,
    linear_probe/<suite>/top1, linear_probe_trunk/<suite>/top1) for TensorBoard and tables."""
    flat: dict[str, float] = {}
    for rec in records:
        m, name = rec["metrics"], rec["dataset"]
        if rec["task"] == "zeroshot_classification":
            flat |= {
                f"zeroshot/{name}/top1": m["acc1"],
                f"zeroshot/{name}/mean_per_class_recall": m["mean_per_class_recall"],
            }
            if m["acc5"] is not None:
                flat[f"zeroshot/{name}/top5"] = m["acc5"]
        elif rec["task"] == "zeroshot_retrieval":
            for k in RECALL_AT:
                for ours, theirs in (("i2t", "text"), ("t2i", "image")):
                    if m[f"{theirs}_retrieval_recall@{k}"] is not None:
                        flat[f"retrieval/{name}/{ours}_R@{k}"] = m[f"{theirs}_retrieval_recall@{k}"]
        elif rec["task"] in ("linear_probe", "linear_probe_trunk"):
            flat[f"{rec['task']}/{name}/top1"] = m["lp_acc1"]
    return flat
