"""Prompt templates and the readers for a user's templates and class-name files.

A template marks the class name with "{}" (this suite's placeholder) or "{c}" (CLIP_benchmark's,
filled as it fills them: ``template.format(c=name)``). A templates file has one template per line;
blank lines and "#" comments are skipped:

    # my prompts
    a photo of a {}.
    a blurry photo of a {c}.

CLIP_benchmark's ``--custom_template_file`` and ``--custom_classname_file`` are JSON files keyed
by dataset name (``read_template_json``, ``read_classname_json``):

    {"wds/pets": ["a photo of a {c}.", "a {c}, a type of pet."]}      templates, or per class:
    {"wds/pets": {"beagle": ["a beagle, a small hound."], ...}}       prompts written out
    {"wds/pets": ["beagle", "tabby cat"]}                              class names in label order
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from common.errors import UserError
from datamodules.suites.files import read_json

# CLIP's 80-prompt ImageNet ensemble, in order: mlfoundations/open_clip
# src/open_clip/zero_shot_metadata.py OPENAI_IMAGENET_TEMPLATES (identical to the "imagenet1k"
# entry of LAION-AI/CLIP_benchmark clip_benchmark/datasets/en_zeroshot_classification_templates.json).
IMAGENET_TEMPLATES: tuple[str, ...] = (
    "a bad photo of a {}.",
    "a photo of many {}.",
    "a sculpture of a {}.",
    "a photo of the hard to see {}.",
    "a low resolution photo of the {}.",
    "a rendering of a {}.",
    "graffiti of a {}.",
    "a bad photo of the {}.",
    "a cropped photo of the {}.",
    "a tattoo of a {}.",
    "the embroidered {}.",
    "a photo of a hard to see {}.",
    "a bright photo of a {}.",
    "a photo of a clean {}.",
    "a photo of a dirty {}.",
    "a dark photo of the {}.",
    "a drawing of a {}.",
    "a photo of my {}.",
    "the plastic {}.",
    "a photo of the cool {}.",
    "a close-up photo of a {}.",
    "a black and white photo of the {}.",
    "a painting of the {}.",
    "a painting of a {}.",
    "a pixelated photo of the {}.",
    "a sculpture of the {}.",
    "a bright photo of the {}.",
    "a cropped photo of a {}.",
    "a plastic {}.",
    "a photo of the dirty {}.",
    "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.",
    "a photo of the {}.",
    "a good photo of the {}.",
    "a rendering of the {}.",
    "a {} in a video game.",
    "a photo of one {}.",
    "a doodle of a {}.",
    "a close-up photo of the {}.",
    "a photo of a {}.",
    "the origami {}.",
    "the {} in a video game.",
    "a sketch of a {}.",
    "a doodle of the {}.",
    "a origami {}.",
    "a low resolution photo of a {}.",
    "the toy {}.",
    "a rendition of the {}.",
    "a photo of the clean {}.",
    "a photo of a large {}.",
    "a rendition of a {}.",
    "a photo of a nice {}.",
    "a photo of a weird {}.",
    "a blurry photo of a {}.",
    "a cartoon {}.",
    "art of a {}.",
    "a sketch of the {}.",
    "a embroidered {}.",
    "a pixelated photo of a {}.",
    "itap of the {}.",
    "a jpeg corrupted photo of the {}.",
    "a good photo of a {}.",
    "a plushie {}.",
    "a photo of the nice {}.",
    "a photo of the small {}.",
    "a photo of the weird {}.",
    "the cartoon {}.",
    "art of the {}.",
    "a drawing of the {}.",
    "a photo of the large {}.",
    "a black and white photo of a {}.",
    "the plushie {}.",
    "a dark photo of a {}.",
    "itap of a {}.",
    "graffiti of the {}.",
    "a toy {}.",
    "itap of my {}.",
    "a photo of a cool {}.",
    "a photo of a small {}.",
    "a tattoo of the {}.",
)

# CLIP's 18-prompt CIFAR-10/100 ensemble: the "cifar10" / "cifar100" entries (the same list) of
# LAION-AI/CLIP_benchmark clip_benchmark/datasets/en_zeroshot_classification_templates.json.
CIFAR_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "a blurry photo of a {}.",
    "a black and white photo of a {}.",
    "a low contrast photo of a {}.",
    "a high contrast photo of a {}.",
    "a bad photo of a {}.",
    "a good photo of a {}.",
    "a photo of a small {}.",
    "a photo of a big {}.",
    "a photo of the {}.",
    "a blurry photo of the {}.",
    "a black and white photo of the {}.",
    "a low contrast photo of the {}.",
    "a high contrast photo of the {}.",
    "a bad photo of the {}.",
    "a good photo of the {}.",
    "a photo of the small {}.",
    "a photo of the big {}.",
)


def fill_template(template: str, classname: str) -> str:
    """The prompt for one class: "{c}" filled as CLIP_benchmark's ``zero_shot_classifier`` does
    (``str.format(c=name)``, so "{{" is a literal brace), else every "{}" replaced by the name."""
    if "{c}" in template:
        return template.format(c=classname)
    return template.replace("{}", classname)


def template_problem(template: str) -> str | None:
    """Why ``template`` cannot take a class name (a phrase for an error message), or None."""
    if "{c}" in template:
        try:
            filled = template.format(c="\0")
        except (KeyError, IndexError, ValueError):
            return (
                "has braces other than '{c}' (CLIP_benchmark fills '{c}' templates with str.format(c=name): "
                "write a literal brace as '{{' or '}}')"
            )
        return None if "\0" in filled else "has no '{c}' outside escaped braces"
    return None if "{}" in template else "has no '{}' where the class name goes (or CLIP_benchmark's '{c}')"


def read_templates(path: str | Path) -> list[str]:
    """The templates in a text file, one per line (blank lines and "#" comments skipped); each must
    contain "{}" or "{c}" where the class name goes."""
    path = Path(path)
    if not path.is_file():
        raise UserError(
            f"templates file {path} does not exist; pass a text file with one template per line, e.g. "
            "'a photo of a {c}.', or a CLIP_benchmark templates JSON file"
        )
    templates = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        problem = template_problem(line)
        if problem:
            raise UserError(f"templates file {path}, line {number}: {line!r} {problem}")
        templates.append(line)
    if not templates:
        raise UserError(f"templates file {path} has no templates; write one per line, e.g. 'a photo of a {{c}}.'")
    return templates


def dataset_keys(name: str) -> list[str]:
    """The keys CLIP_benchmark looks a wds dataset up by in its JSON files: "wds/<name>", "<name>"."""
    short = name.removeprefix("wds/")
    return [f"wds/{short}", short]


def _entry(data: Any, path: Path, name: str, what: str, fallback: str | None = None) -> Any:
    if not isinstance(data, dict):
        raise UserError(f'{what} {path}: expected a JSON object keyed by dataset name, e.g. {{"wds/{name}": [...]}}')
    keys = dataset_keys(name) + ([fallback] if fallback else [])
    found = next((k for k in keys if k in data), None)
    if found is None:
        raise UserError(
            f"{what} {path} has no entry for dataset {name!r}: looked for {', '.join(map(repr, keys))}, found "
            f"{', '.join(map(repr, list(data)[:10])) or 'none'}; key the entry by one of the former"
        )
    return data[found]


def _strings(values: Any) -> bool:
    return isinstance(values, list) and bool(values) and all(isinstance(v, str) and v for v in values)


def read_template_json(path: str | Path, name: str) -> list[str] | dict[str, list[str]]:
    """Dataset ``name``'s entry in a CLIP_benchmark ``--custom_template_file``: a list of templates
    with "{c}" (or "{}"), or {class name: its prompts}. Looked up as CLIP_benchmark does
    (``datasets/builder.py``): "wds/<name>", then "<name>", then its "imagenet1k" fallback."""
    path, what = Path(path), "templates file"
    entry = _entry(read_json(path, what), path, name, what, fallback="imagenet1k")
    if isinstance(entry, dict):
        bad = next((c for c, prompts in entry.items() if not _strings(prompts)), None)
        if bad is not None or not entry:
            raise UserError(f"{what} {path}: class {bad!r} of {name!r} needs a non-empty list of prompt strings")
        return {str(c): list(prompts) for c, prompts in entry.items()}
    if not _strings(entry):
        raise UserError(
            f"{what} {path}: the entry for {name!r} must be a non-empty list of templates, or {{class: prompts}}"
        )
    for template in entry:
        problem = template_problem(template)
        if problem:
            raise UserError(f"{what} {path}, dataset {name!r}: template {template!r} {problem}")
    return list(entry)


def read_classname_json(path: str | Path, name: str) -> list[str]:
    """Dataset ``name``'s class names (label order) in a CLIP_benchmark ``--custom_classname_file``,
    looked up by "wds/<name>", then "<name>"."""
    path, what = Path(path), "class names file"
    entry = _entry(read_json(path, what), path, name, what)
    if not _strings(entry):
        raise UserError(f"{what} {path}: the entry for {name!r} must be a non-empty list of class names")
    return list(entry)
