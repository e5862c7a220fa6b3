"""The three kinds of evaluation suite, as plain records the analysis consumes.

Dataset items hold raw images: a PIL image (any mode) or a uint8 [3, H, W] tensor; the
analysis applies the checkpoint's image transform (resize, normalise) in its loader.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch.utils.data import Dataset

from common.errors import UserError
from datamodules.suites.templates import fill_template


@dataclass
class ClassificationSuite:
    """Zero-shot classification (prompt ensembles) and linear-probe data.

    Args:
        name: dataset name in results, e.g. "cifar10" or "shapesworld/shape".
        classnames: one name per label, in label order.
        templates: prompt templates with "{}" or CLIP_benchmark's "{c}" for the class name (the
            prompt ensemble; ``templates.fill_template``).
        test: items {"image": PIL.Image | uint8 tensor [3, H, W], "label": int}.
        train: the same item form; the linear probe trains on it (None: no linear probe).
        prompts: explicit [class][template] prompt strings, used instead of filling
            ``templates`` when a language needs articles or grammar (ShapesWorld does).
        language: the language of the prompts ("en", "zh"), None where the source does not say.
    """

    name: str
    classnames: list[str]
    templates: list[str]
    test: Dataset
    train: Dataset | None = None
    prompts: list[list[str]] | None = None
    language: str | None = None

    def class_prompts(self) -> list[list[str]]:
        """[class][template] prompt strings; every class has the same number of templates."""
        prompts = self.prompts or [[fill_template(t, c) for t in self.templates] for c in self.classnames]
        if len(prompts) != len(self.classnames) or len({len(p) for p in prompts}) != 1 or not prompts[0]:
            raise UserError(f"suite {self.name}: every class needs the same, non-zero number of prompts")
        return prompts


@dataclass
class RetrievalSuite:
    """Image-text retrieval data.

    Args:
        name: dataset name in results, e.g. "coco" or "shapesworld".
        images: items {"image": PIL.Image | uint8 tensor [3, H, W]}.
        captions: captions[i] lists the (one or more) captions of image i.
        language: the captions' language ("en", "zh", "both" for mixed), None where the source
            does not say.
    """

    name: str
    images: Dataset
    captions: list[list[str]]
    language: str | None = None


@dataclass
class ProbeSuite:
    """Image-caption selection probes: pick the true caption among controlled false ones.

    Args:
        name: probe name in results, e.g. "shapesworld/attribute_binding".
        items: items {"image": PIL.Image | uint8 tensor, "positive": str, "negatives": list[str]}.
    """

    name: str
    items: Dataset


Suite = ClassificationSuite | RetrievalSuite | ProbeSuite
