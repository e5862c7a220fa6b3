"""Classes in a user's image-caption files: a label column, zero-shot prompts, linear-probe rows.

With ``label_column`` (an integer class per row, 0 .. classes - 1) the image-text datamodule
evaluates more than retrieval: zero-shot classification of its evaluation images with the prompts
of ``zeroshot`` (``{task: {"classnames": [...], "templates": ["a photo of a {}", ...]}}``, one task
per language or prompt set), retrieval whose positives are the captions of the same class
(``retrieval_positives: label``, for class-level captions), and a linear probe fitted on
``probe_train_rows`` training images (``variants.probe``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from common.errors import UserError
from datamodules.image_text.sources import Segment
from datamodules.suites.templates import fill_template, template_problem


@dataclass(frozen=True)
class PromptSet:
    """The prompts of one zero-shot task: ``templates`` filled with each class name."""

    name: str
    classnames: list[str]
    templates: list[str]

    def prompts(self) -> list[list[str]]:
        """[class][template] prompt strings."""
        return [[fill_template(t, c) for t in self.templates] for c in self.classnames]


def prompt_sets(spec: dict | None, label_column: str | None) -> list[PromptSet]:
    """``data.init_args.zeroshot`` checked: each task a non-empty list of class names and of
    templates holding "{}" or CLIP_benchmark's "{c}"; a label column to score them with."""
    if not spec:
        return []
    where = "data.init_args.zeroshot"
    if label_column is None:
        raise UserError(f"{where} needs each row's class: set data.init_args.label_column (integer classes 0..n-1)")
    sets = []
    for name, task in spec.items():
        if not isinstance(task, dict) or set(task) != {"classnames", "templates"}:
            raise UserError(f"{where}.{name} must give exactly classnames (a list) and templates (a list)")
        classnames, templates = task["classnames"], task["templates"]
        for key, values in (("classnames", classnames), ("templates", templates)):
            if not isinstance(values, list) or not values or not all(isinstance(v, str) and v for v in values):
                raise UserError(f"{where}.{name}.{key} must be a non-empty list of non-empty strings")
        problems = [(t, template_problem(t)) for t in templates if template_problem(t)]
        if problems:
            raise UserError(f"{where}.{name}: template {problems[0][0]!r} {problems[0][1]}")
        if len(set(classnames)) != len(classnames):
            raise UserError(f"{where}.{name}: class names repeat, so two classes would have the same prompts")
        sets.append(PromptSet(str(name), list(classnames), list(templates)))
    counts = {len(s.classnames) for s in sets}
    if len(counts) > 1:
        raise UserError(f"{where}: every task must name the same classes (one per label), got {sorted(counts)} names")
    return sets


def read_labels(segment: Segment, label_column: str, classes: int | None, source: str) -> np.ndarray:
    """The integer labels of the segment's kept rows; a UserError naming the first row whose label is
    not an integer, or outside 0 .. classes - 1 (``classes`` from the zero-shot class names)."""
    column = segment.rows.data.column(label_column)
    values = column.take(pa.array(segment.keep, type=pa.int64())).to_pylist()
    labels = np.empty(len(values), dtype=np.int64)
    for i, value in enumerate(values):
        label = _integer(value)
        if label is None:
            raise UserError(
                f"{source}: label_column {label_column!r} must hold integer classes; row {int(segment.keep[i])} "
                f"holds {value!r}"
            )
        if classes is not None and not 0 <= label < classes:
            raise UserError(
                f"{source}: row {int(segment.keep[i])} has label {label}, outside 0..{classes - 1} "
                f"(the {classes} class names of data.init_args.zeroshot)"
            )
        labels[i] = label
    return labels


def _integer(value: object) -> int | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return value
    try:
        return int(str(value).strip())
    except ValueError:
        return None


def distinct_images(segments: Sequence[Segment], image_column: str) -> list[int]:
    """Positions (over the segments' kept rows) of the first row of each distinct image, where rows
    name their images by path (csv, imagefolder); rows holding bytes count as distinct."""
    first: set[str] = set()
    out, position = [], 0
    for segment in segments:
        column = segment.rows.data.column(image_column).take(pa.array(segment.keep, type=pa.int64()))
        for value in column.to_pylist():
            key = value.get("path") if isinstance(value, dict) and not value.get("bytes") else value
            if not (isinstance(key, str) and key in first):
                out.append(position)
                if isinstance(key, str):
                    first.add(key)
            position += 1
    return out


def evenly_spaced(positions: list[int], count: int) -> list[int]:
    """``count`` positions spread evenly over ``positions`` (all of them when there are fewer)."""
    if count >= len(positions):
        return list(positions)
    return [positions[int(i * len(positions) / count)] for i in range(count)]
