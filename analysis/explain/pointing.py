"""The pointing game (Zhang et al. 2016, "Top-down Neural Attention by Excitation Backprop") on
ShapesWorld, whose scene records say where every object is.

A heat map is upsampled (bilinear) to the image; it scores a hit when its maximum lies in the
named object's box. Tied maxima share the hit (a hit of k/n when k of n tied pixels are inside), so a
flat map scores exactly the chance rate, the box's share of the image. Also reported: the share
of the map's positive mass inside the box (Grad-CAM and relevance are non-negative; FILIP's
cosines are clipped at 0). Accuracy comes with a 95% Wilson interval.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm import tqdm

from analysis.checkpoint import LoadedCheckpoint
from analysis.explain.maps import query_maps
from analysis.explain.words import word_spans
from analysis.stats import wilson_interval
from datamodules.shapesworld.pointing import PointingScenes

QUERIES = ("query", "shape_query")  # "a red circle", "a circle"


def upsample(maps: torch.Tensor, size: int) -> torch.Tensor:
    """[B, h, w] -> [B, size, size], bilinear (what the overlays show)."""
    return F.interpolate(maps[:, None].float(), size=(size, size), mode="bilinear", align_corners=False)[:, 0]


def score_map(heat: torch.Tensor, box: tuple[int, int, int, int]) -> tuple[float, float, float]:
    """(hit, heat share inside, chance) of one [H, W] map against a (top, left, bottom, right) box."""
    inside = torch.zeros_like(heat, dtype=torch.bool)
    top, left, bottom, right = box
    inside[top:bottom, left:right] = True
    chance = float(inside.float().mean())
    heat = torch.nan_to_num(heat.float(), nan=float("-inf"))
    peaks = heat == heat.max()
    hit = float((peaks & inside).sum()) / float(peaks.sum())
    mass = heat.clamp(min=0).nan_to_num(0.0)
    total = float(mass.sum())
    share = float(mass[inside].sum()) / total if total > 0 else chance
    return hit, share, chance


@dataclass
class Tally:
    """Hits, heat shares and chance rates of one (method, query) over the items."""

    hits: list[float] = field(default_factory=list)
    shares: list[float] = field(default_factory=list)
    chances: list[float] = field(default_factory=list)

    def add(self, heat: torch.Tensor, box: tuple[int, int, int, int]) -> None:
        hit, share, chance = score_map(heat, box)
        self.hits.append(hit)
        self.shares.append(share)
        self.chances.append(chance)

    def summary(self) -> dict:
        n = max(1, len(self.hits))
        low, high = wilson_interval(sum(self.hits), len(self.hits))
        return {
            "pointing": sum(self.hits) / n, "ci95": [low, high], "chance": sum(self.chances) / n,
            "heat_inside": sum(self.shares) / n, "n": len(self.hits),
        }  # fmt: skip


def _collate(transform):
    def collate(items: list[dict]) -> dict:
        return {
            "image": torch.stack([transform(item["image"]) for item in items]),
            "raw": torch.stack([item["image"] for item in items]),
            "box": torch.stack([item["box"] for item in items]),
            **{key: [item[key] for item in items] for key in ("query", "shape_query", "words", "index")},
        }

    return collate


def pointing_game(
    loaded: LoadedCheckpoint, methods: list[str], scenes: PointingScenes, batch_size: int = 64, examples: int = 8
) -> dict:
    """Every method on every item: {"results": {method: {query kind: summary}}, "examples": [...]}.

    Query kinds: "query" ("a red circle"), "shape_query" ("a circle"), and for alignment
    "word_color" and "word_shape" (the map of that word alone, within "a red circle"). Gradient
    methods explain the logit of the whole query; alignment maps average the naming words' rows
    ("red circle", "circle").
    ``examples``: the first items with their maps, for the figures.
    """
    model, tokenizer = loaded.model, loaded.tokenizer
    tallies: dict[str, dict[str, Tally]] = {m: {} for m in methods}
    kept: list[dict] = []
    loader = DataLoader(scenes, batch_size=batch_size, collate_fn=_collate(loaded.image_transform))
    for batch in tqdm(loader, desc="pointing game", unit="batch", leave=False, disable=None):
        size = batch["image"].shape[-1]
        for kind in QUERIES:
            texts = batch[kind]
            spans = [
                _roles(tokenizer, text, words if kind == "query" else {"shape": words["shape"]}, kind == "query")
                for text, words in zip(texts, batch["words"], strict=True)
            ]
            ids = tokenizer(texts, pad_to_context=False)
            for method in methods:
                maps = query_maps(model, method, batch["image"], ids, spans)
                for role, low_res in maps.items():
                    name = kind if role == "query" else f"word_{role}"
                    heat = upsample(low_res, size)
                    tally = tallies[method].setdefault(name, Tally())
                    for b in range(len(heat)):
                        x0, y0, x1, y1 = (int(v) for v in batch["box"][b])
                        tally.add(heat[b], (x0, y0, x1, y1))
                    if kind == "query" and role == "query":
                        _keep(kept, batch, method, heat, examples)
    results = {method: {name: tally.summary() for name, tally in kinds.items()} for method, kinds in tallies.items()}
    return {"results": results, "examples": kept[:examples], "n": len(scenes)}


def _roles(tokenizer, text: str, words: dict[str, str], each: bool) -> dict[str, tuple[int, int]]:
    """Token spans of the words that name the object ("query": from the first to the last of
    ``words``, so "red circle" in "a red circle": the article names nothing) and, with ``each``, of
    every one of them by its role ("color", "shape")."""
    parts = text.split()
    spans = word_spans(tokenizer, parts)
    named = {role: spans[parts.index(word)] for role, word in words.items()}
    roles = {"query": (min(a for a, _ in named.values()), max(b for _, b in named.values()))}
    return roles | (named if each else {})


def _keep(kept: list[dict], batch: dict, method: str, heat: torch.Tensor, examples: int) -> None:
    """Store the first ``examples`` items' query maps for the figures (one entry per item)."""
    by_index = {item["index"]: item for item in kept}
    for b, index in enumerate(batch["index"]):
        if index not in by_index:
            if len(kept) >= examples:
                return
            by_index[index] = {
                "index": index, "image": batch["raw"][b], "query": batch["query"][b],
                "box": tuple(int(v) for v in batch["box"][b]), "maps": {},
            }  # fmt: skip
            kept.append(by_index[index])
        by_index[index]["maps"][method] = heat[b]
