"""Linguistic probes of one checkpoint.

- Text-only: how similar the text tower finds synonym, antonym and negation pairs (and, as a
  reference, pairs that differ in one attribute). A tower that only learned bags of words puts
  "there is a circle" and "there is no circle" as close as two synonyms.
- Grounded: pick the true caption of an image among false ones that differ in one controlled
  way (attribute binding, relation order, negation, counting; or SugarCrepe/ARO-like files).
  Accuracy with a 95% Wilson interval against chance.
"""

from __future__ import annotations

import torch
from matplotlib.figure import Figure
from torch.utils.data import Dataset

from analysis.checkpoint import LoadedCheckpoint
from analysis.embed import DEFAULT_OPTIONS, EmbedOptions, dataset_length, embed_images, embed_texts
from analysis.stats import wilson_interval
from datamodules.suites import ProbeSuite
from variants.objectives.base import present
from variants.towers import Encoded

# General English pairs (the seed chapter's examples and a few more). A checkpoint trained on
# a closed vocabulary maps many of these words to <unk>; the result records how many.
ENGLISH_PAIRS = {
    "synonym": [
        ("a photo of a car", "a photo of an automobile"),
        ("a happy person", "a joyful person"),
        ("a big house", "a large house"),
        ("a small dog", "a little dog"),
    ],
    "antonym": [
        ("a big object", "a small object"),
        ("a hot day", "a cold day"),
        ("a full glass", "an empty glass"),
        ("an object on the left", "an object on the right"),
    ],
    "negation": [
        ("a red car", "not a red car"),
        ("a dog", "not a dog"),
        ("there is a cat", "there is no cat"),
        ("a photo with people", "a photo without people"),
    ],
}


@torch.inference_mode()
def text_pair_similarities(
    loaded: LoadedCheckpoint, pairs: dict[str, list[tuple[str, str]]], options: EmbedOptions = DEFAULT_OPTIONS
) -> dict[str, dict]:
    """Cosine similarity of the global text embeddings of each pair, summarised per kind."""
    unk_id = getattr(loaded.tokenizer, "unk_id", None)
    results = {}
    for kind, kind_pairs in pairs.items():
        firsts = present(embed_texts(loaded, [a for a, _ in kind_pairs], options=options, desc=kind), "text")
        seconds = present(embed_texts(loaded, [b for _, b in kind_pairs], options=options, desc=kind), "text")
        similarity = (firsts * seconds).sum(-1)
        entry = {
            "mean": float(similarity.mean()),
            "std": float(similarity.std()) if len(kind_pairs) > 1 else 0.0,
            "n": len(kind_pairs),
            "pairs": [[a, b, float(s)] for (a, b), s in zip(kind_pairs, similarity, strict=True)],
        }
        if unk_id is not None:
            ids = loaded.tokenizer([text for pair in kind_pairs for text in pair])
            words = (ids > 2).sum()  # ids 0-2 are <pad>, <start>, <end> in the word tokenizer
            entry["unknown_word_fraction"] = float((ids == unk_id).sum() / max(1, int(words)))
        results[kind] = entry
    return results


@torch.inference_mode()
def selection_probe(
    loaded: LoadedCheckpoint,
    suite: ProbeSuite,
    chunk: int = 64,
    examples: int = 5,
    options: EmbedOptions = DEFAULT_OPTIONS,
) -> dict:
    """Accuracy of choosing the positive caption (strictly highest score) over the negatives."""
    items = suite.items
    n = dataset_length(items)
    captions = [_captions(items, i) for i in range(n)]
    needs = loaded.model.scoring_needs
    images = embed_images(loaded, _ImagesOnly(items), tokens="image_tokens" in needs, desc=suite.name, options=options)
    flat = [text for item_captions in captions for text in item_captions]
    texts = embed_texts(loaded, flat, tokens="text_tokens" in needs, options=options, desc=f"{suite.name} captions")
    correct, ties, chance = 0, 0, 0.0
    mistakes: list[dict[str, str]] = []
    offsets = [0]
    for item_captions in captions:
        offsets.append(offsets[-1] + len(item_captions))
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        i2t, _ = loaded.model.score(
            _rows(images.encoded, slice(start, stop)), _rows(texts, slice(offsets[start], offsets[stop]))
        )
        for i in range(start, stop):
            scores = i2t[i - start, offsets[i] - offsets[start] : offsets[i + 1] - offsets[start]]
            right = bool(scores[0] > scores[1:].max())  # a tie is not a choice: counted wrong
            correct += right
            ties += bool(scores[0] == scores[1:].max())
            chance += 1 / len(scores)
            if not right and len(mistakes) < examples:
                chosen = int(scores[1:].argmax()) + 1
                mistakes.append({"positive": captions[i][0], "chosen": captions[i][chosen]})
    low, high = wilson_interval(correct, n)
    return {
        "acc": correct / n,
        "ci95": [low, high],
        "chance": chance / n,
        "n": n,
        "ties": ties,
        "above_chance": low > chance / n,
        "mistakes": mistakes,
    }


def _captions(items: Dataset, index: int) -> list[str]:
    """[positive, *negatives] of one item, read without decoding its image where possible."""
    if hasattr(items, "sample"):  # ShapesWorld probes: the captions without rendering
        _, positive, negatives = items.sample(index)
    else:
        item = items[index]
        positive, negatives = item["positive"], item["negatives"]
    return [positive, *negatives]


class _ImagesOnly(Dataset):
    def __init__(self, items: Dataset) -> None:
        self.items = items

    def __len__(self) -> int:
        return dataset_length(self.items)

    def __getitem__(self, index: int) -> dict:
        return {"image": self.items[index]["image"]}


def _rows(encoded: Encoded, rows: slice) -> Encoded:
    return Encoded(**{k: (v[rows] if v is not None else None) for k, v in vars(encoded).items()})


def selection_figure(results: dict[str, dict]) -> Figure:
    """Accuracy per probe with its 95% interval, and chance as a tick."""
    names = list(results)
    fig = Figure(figsize=(1.4 * len(names) + 2, 3.2), layout="constrained")
    ax = fig.add_subplot()
    acc = [results[n]["acc"] for n in names]
    low = [results[n]["acc"] - results[n]["ci95"][0] for n in names]
    high = [results[n]["ci95"][1] - results[n]["acc"] for n in names]
    ax.bar(range(len(names)), acc, yerr=[low, high], capsize=4, color="tab:blue", label="accuracy (95% CI)")
    ax.scatter(
        range(len(names)), [results[n]["chance"] for n in names], marker="_", s=600, color="k", label="chance", zorder=3
    )
    ax.set_xticks(range(len(names)), [n.split("/")[-1].replace("_", " ") for n in names], rotation=20)
    ax.set_ylim(0, 1)
    ax.set_ylabel("pick the true caption")
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncols=2, fontsize=8, frameon=False)
    return fig


def similarity_figure(results: dict[str, dict[str, dict]]) -> Figure:
    """Pair similarities per kind, one panel per pair set (e.g. ShapesWorld, English)."""
    fig = Figure(figsize=(4.2 * len(results), 3.2), layout="constrained")
    for k, (title, kinds) in enumerate(results.items()):
        ax = fig.add_subplot(1, len(results), k + 1)
        names = list(kinds)
        values = [[s for _, _, s in kinds[n]["pairs"]] for n in names]
        ax.boxplot(values, tick_labels=names)
        for x, v in enumerate(values, start=1):
            ax.scatter([x] * len(v), v, s=8, alpha=0.6, color="tab:orange", zorder=3)
        ax.set_title(title)
        ax.set_ylabel("cosine similarity")
    return fig
