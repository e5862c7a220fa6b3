"""``python -m analysis explain``: the pointing game on ShapesWorld, or one image-caption pair.

python -m analysis explain --ckpt RUN                              # pointing game -> OUT/explain.json
python -m analysis explain --ckpt RUN --image cat.png --text "a cat"  # one pair -> OUT/explain/<caption>.png
"""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError

from analysis.checkpoint import LoadedCheckpoint
from analysis.commands import slug
from analysis.explain.alignment import word_patch_similarities
from analysis.explain.figures import examples_figure, pair_figure
from analysis.explain.maps import available_methods, query_maps
from analysis.explain.pointing import pointing_game, upsample
from analysis.explain.words import check_caption, word_importance, word_spans
from analysis.suite_specs import shapesworld_world
from common.errors import UserError
from common.files import save_figure, write_json
from datamodules.shapesworld.pointing import PointingScenes

OVERLAYS = 4  # pointing-game items drawn one by one, with their words' importance


def explain_pointing(
    loaded: LoadedCheckpoint,
    out: Path,
    methods: list[str] | None = None,
    samples: int | None = None,
    batch_size: int = 64,
    examples: int = 8,
) -> dict:
    """The pointing game of every applicable method on the run's ShapesWorld (its seed and image
    size) -> ``out/explain.json``, the examples grid ``out/figures/explain.png`` and one overlay per
    item ``out/explain/pointing-<index>.png`` for the first few."""
    methods = available_methods(loaded.model, methods)
    if not methods:
        raise UserError(
            f"no explanation method applies to {loaded.name}'s towers (a timm CNN or ViT vision tower is needed)"
        )
    world = shapesworld_world(loaded, samples)
    scenes = PointingScenes(world["seed"], world["samples"], world["image_size"], max(2, world["max_objects"]))
    game = pointing_game(loaded, methods, scenes, batch_size=batch_size, examples=examples)
    results = game["results"]
    figures = {
        "explain": save_figure(
            examples_figure(game["examples"], methods, f"{loaded.name}: pointing game (green: the named object)"),
            out / "figures" / "explain.png",
        )
    }
    for example in game["examples"][:OVERLAYS]:
        image = loaded.image_transform(example["image"])
        importance = word_importance(loaded.model, loaded.tokenizer, image, example["query"])
        figure = pair_figure(example["image"], example["maps"], example["query"], importance, example["box"])
        figures[f"explain_{example['index']}"] = save_figure(
            figure, out / "explain" / f"pointing-{example['index']}.png"
        )
    metrics = {}
    for method, kinds in results.items():
        metrics[f"explain/{method}/pointing"] = kinds["query"]["pointing"]
        metrics[f"explain/{method}/heat_inside"] = kinds["query"]["heat_inside"]
        metrics[f"explain/{method}/pointing_shape_query"] = kinds["shape_query"]["pointing"]
        metrics |= {
            f"explain/{method}/pointing_{kind}": r["pointing"] for kind, r in kinds.items() if kind.startswith("word_")
        }
    result = {
        "model": loaded.name, "checkpoint": str(loaded.path), "step": loaded.global_step,
        "world": world | {"samples": len(scenes)}, "methods": methods, "pointing": results, "metrics": metrics,
        "figures": {name: str(path) for name, path in figures.items()},
    }  # fmt: skip
    write_json(out / "explain.json", result)
    return result


def explain_pair(
    loaded: LoadedCheckpoint, image_path: str, text: str, out: Path, methods: list[str] | None = None
) -> dict:
    """Every applicable method's map of one image with one caption, and each word's importance ->
    ``out/explain/<caption>.png`` and ``.json``."""
    methods = available_methods(loaded.model, methods)
    words = check_caption(loaded.tokenizer, text)
    path = Path(image_path)
    if not path.exists():
        raise UserError(f"--image {image_path} does not exist")
    if not path.is_file():
        raise UserError(f"--image {image_path} is not a file: give one image")
    try:
        with Image.open(path) as opened:
            raw = opened.convert("RGB")
    except (UnidentifiedImageError, OSError) as error:
        raise UserError(f"--image {image_path} is not an image PIL can read ({error})") from None
    image = loaded.image_transform(raw)
    size = image.shape[-1]
    spans = word_spans(loaded.tokenizer, words)
    ids = loaded.tokenizer([text], pad_to_context=False)
    maps = {
        m: upsample(
            query_maps(loaded.model, m, image[None], ids, [{"query": (spans[0][0], spans[-1][1])}])["query"], size
        )[0]
        for m in methods
    }
    importance = word_importance(loaded.model, loaded.tokenizer, image, text)
    shown = _unnormalise(image, loaded)
    stem = slug(text.lower())[:60] or "caption"
    figure_path = save_figure(pair_figure(shown, maps, text, importance), out / "explain" / f"{stem}.png")
    result = {
        "model": loaded.name, "checkpoint": str(loaded.path), "image": str(path), "text": text,
        "words": [{"word": w, "importance": v} for w, v in importance],
        "peaks": {m: [int(i) for i in divmod(int(heat.argmax()), size)] for m, heat in maps.items()},
        "figure": str(figure_path),
    }  # fmt: skip
    if "alignment" in methods:  # the patch (row, column of the patch grid) each word's alignment picks
        rows = word_patch_similarities(loaded.model, image[None], ids)[0]
        result["word_patches"] = [
            {"word": word, "patch": [int(i) for i in divmod(int(rows[a:b].mean(dim=0).argmax()), rows.shape[-1])]}
            for word, (a, b) in zip(words, spans, strict=True)
        ]
    write_json(out / "explain" / f"{stem}.json", result)
    return result


def _unnormalise(image: torch.Tensor, loaded: LoadedCheckpoint) -> torch.Tensor:
    """The model's input as uint8 [3, H, W], for display."""
    mean, std = loaded.normalisation()
    return ((image * std + mean).clamp(0, 1) * 255).round().to(torch.uint8)
