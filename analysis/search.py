"""``python -m analysis search --ckpt RUN --images DIR (--text "..." | --image PATH) [--k 10]``: the
images of a folder ranked by a text or an image, through a FAISS index of their embeddings.

The folder (recursively, the usual image extensions) is embedded once and cached in
``<out>/index/<folder hash>.pt`` with a stamp of the checkpoint file and of every image's path,
size and modification time; a change to either rebuilds it. Unreadable images are skipped,
counted and named in the result. The index is exact inner product (``faiss.IndexFlatIP``) over the
L2-normalised global embeddings, so the scores are cosines and the top k are a brute-force cosine
ranking's. Results: ``<out>/search.json`` (the query, the top k with scores) and ``<out>/search.html``
(the query and the top k as thumbnails, embedded in the page). Needs faiss-cpu
(``pip install -e '.[search]'``).
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from analysis.checkpoint import LoadedCheckpoint
from analysis.embed import DEFAULT_OPTIONS, EmbedOptions, embed_images, embed_texts
from common.errors import UserError
from common.files import save_torch, write_json, write_text
from datamodules.suites.files import ImageFiles, readable_images, warn_skipped
from variants.objectives.base import present

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
THUMBNAIL = 160  # px, the longer side in the HTML page


@dataclass
class ImageIndex:
    folder: Path
    paths: list[str]  # relative to the folder, the rows of ``embeddings``
    embeddings: torch.Tensor  # [N, D] float32, L2-normalised
    skipped: list[str]  # unreadable images, relative to the folder
    rebuilt: bool  # embedded now (False: read from the cache)


def list_images(folder: Path) -> list[Path]:
    """Every image file under ``folder``, sorted; one-line errors for a missing or empty folder."""
    if not folder.exists():
        raise UserError(f"--images {folder} does not exist: give a folder of images")
    if not folder.is_dir():
        raise UserError(f"--images {folder} is a file, not a folder: give the folder that holds the images")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise UserError(f"--images {folder} holds no image files ({', '.join(IMAGE_EXTENSIONS)})")
    return files


def stamp(checkpoint: Path, folder: Path, files: list[Path]) -> str:
    """What the cached embeddings depend on: the checkpoint file and each image's path, size and time."""
    digest = hashlib.sha256()
    for path in (checkpoint, *files):
        info = path.stat()
        name = str(path.resolve()) if path == checkpoint else str(path.relative_to(folder))
        digest.update(f"{name}\0{info.st_size}\0{info.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def image_index(
    loaded: LoadedCheckpoint, folder: Path, cache: Path, options: EmbedOptions = DEFAULT_OPTIONS
) -> ImageIndex:
    """The folder's embeddings, from the cache when its stamp matches, else embedded and cached."""
    list_images(folder)  # its errors name the folder as the user gave it
    folder = folder.resolve()
    files = list_images(folder)
    key = stamp(loaded.path, folder, files)
    path = cache / f"{hashlib.sha256(str(folder).encode()).hexdigest()[:16]}.pt"
    saved: dict = {}
    if path.is_file():
        try:
            saved = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # noqa: BLE001 - a damaged or foreign cache file is rebuilt, not trusted
            saved = {}
        if isinstance(saved, dict) and saved.get("stamp") == key:
            return ImageIndex(folder, saved["paths"], saved["embeddings"], saved["skipped"], rebuilt=False)
    ok, bad = readable_images(files)
    skipped = [str(p.relative_to(folder)) for p in bad]
    warn_skipped(f"--images {folder}", [("unreadable images", skipped, len(files))])
    if not ok:
        raise UserError(f"--images {folder}: none of its {len(files)} image files can be read")
    embedded = embed_images(loaded, ImageFiles(ok), options=options, desc=f"index {folder.name}").image
    paths = [str(p.relative_to(folder)) for p in ok]
    save_torch(path, {"stamp": key, "folder": str(folder), "paths": paths, "embeddings": embedded, "skipped": skipped})
    return ImageIndex(folder, paths, embedded, skipped, rebuilt=True)


def query_embedding(loaded: LoadedCheckpoint, text: str | None, image: str | None) -> torch.Tensor:
    """[1, D] normalised embedding of the query text or image."""
    if (text is None) == (image is None):
        raise UserError('search: give exactly one query, --text "..." or --image PATH')
    if text is not None:
        if not text.strip():
            raise UserError("search: --text is empty; give words to search for")
        return present(embed_texts(loaded, [text.strip()]), "text")
    path = Path(str(image))
    if not path.is_file():
        raise UserError(f"search: --image {path} is not a file")
    if readable_images([path])[1]:
        raise UserError(f"search: --image {path} is not an image PIL can read")
    return embed_images(loaded, ImageFiles([path]), desc="query").image


def top_k(embeddings: torch.Tensor, query: torch.Tensor, k: int) -> tuple[list[int], list[float]]:
    """Rows of ``embeddings`` with the highest inner product with ``query``, exact (FAISS IndexFlatIP)."""
    try:
        import faiss
    except ImportError:
        raise UserError("search needs FAISS: pip install -e '.[search]' (faiss-cpu)") from None
    index = faiss.IndexFlatIP(embeddings.shape[1])
    index.add(embeddings.float().contiguous().numpy())
    scores, rows = index.search(query.float().contiguous().numpy(), min(k, embeddings.shape[0]))
    return [int(r) for r in rows[0]], [float(s) for s in scores[0]]


def search(
    loaded: LoadedCheckpoint, images: str, out: Path, text: str | None = None, image: str | None = None,
    k: int = 10, options: EmbedOptions = DEFAULT_OPTIONS,
) -> dict:  # fmt: skip
    """Rank the images of ``images`` by the query; writes ``out/search.{json,html}``."""
    query = query_embedding(loaded, text, image)
    if loaded.global_note:
        warnings.warn(f"search: {loaded.global_note}", stacklevel=2)
    index = image_index(loaded, Path(images), out / "index", options)
    rows, scores = top_k(index.embeddings, query, k)
    result = {
        "checkpoint": str(loaded.path),
        "folder": str(index.folder),
        "query": {"text": text} if text is not None else {"image": str(Path(str(image)).resolve())},
        "indexed": len(index.paths),
        "skipped": {"count": len(index.skipped), "files": index.skipped},
        "index_rebuilt": index.rebuilt,
        "results": [
            {"rank": rank + 1, "path": str(index.folder / index.paths[row]), "score": score}
            for rank, (row, score) in enumerate(zip(rows, scores, strict=True))
        ],
    }
    write_json(out / "search.json", result)
    write_text(out / "search.html", page(result))
    result["html"] = str(out / "search.html")
    return result


def _thumbnail(path: str) -> str:
    with Image.open(path) as file:
        image = file.convert("RGB")
    scale = THUMBNAIL / max(image.size)
    if scale < 1 or max(image.size) < 64:  # shrink large images, enlarge tiny ones (8x8 digits)
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        image = image.resize(size, Image.Resampling.NEAREST if scale > 1 else Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def page(result: dict) -> str:
    """A self-contained HTML page: the query and the top k as thumbnails with their scores."""
    query = result["query"]
    if "text" in query:
        shown = f"<p class=q>“{html.escape(query['text'])}”</p>"
    else:
        shown = f"<img src='{_thumbnail(query['image'])}'><p>{html.escape(query['image'])}</p>"
    cells = "".join(
        f"<figure><img src='{_thumbnail(r['path'])}' title='{html.escape(r['path'])}'>"
        f"<figcaption>{r['rank']}. {r['score']:.3f}<br>{html.escape(Path(r['path']).name)}</figcaption></figure>"
        for r in result["results"]
    )
    skipped = result["skipped"]["count"]
    note = f" ({skipped} unreadable skipped)" if skipped else ""
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>search</title><style>"
        "body{font-family:sans-serif;margin:1em} figure{display:inline-block;margin:.4em;text-align:center}"
        "img{image-rendering:pixelated;max-width:160px;max-height:160px} .q{font-size:1.4em}</style></head><body>"
        f"<h2>Query</h2>{shown}<h2>Top {len(result['results'])} of {result['indexed']} images{note}</h2>{cells}"
        f"<p><small>{html.escape(result['folder'])} · {html.escape(result['checkpoint'])}</small></p>"
        f"<script type='application/json' id='result'>{html.escape(json.dumps(result['results']))}</script>"
        "</body></html>\n"
    )
