"""ShapesWorld as evaluation suites: the run's own zero-shot tasks, retrieval set and probes.

Built from the same seed and streams as ``ShapesWorldDataModule``'s test (or val) tasks, so a
checkpoint's analysis numbers reproduce the run's own test table. ``language`` is the run's
("en", "zh" or "both"): Chinese suites carry the Chinese prompts and probe captions of the same
images and are named with a "_zh" suffix, as the run's Chinese zero-shot tasks are.
"""

from __future__ import annotations

from datamodules.shapesworld.datasets import CaptionedScenes, Language, ZeroShotScenes, check_language, tasks_in
from datamodules.shapesworld.probes import PROBES, ProbeScenes
from datamodules.suites.base import ClassificationSuite, ProbeSuite, RetrievalSuite


def shapesworld_suites(
    seed: int = 0,
    image_size: int = 64,
    max_objects: int = 3,
    samples: int = 1000,
    stage: str = "test",
    probe_train_samples: int = 2000,
    language: Language = "en",
) -> list[ClassificationSuite | RetrievalSuite]:
    """The zero-shot tasks (shape, color, color+shape on seen and on held-out combinations,
    count) with a linear-probe training split from a stream of its own, and the retrieval set
    (captions in ``language``; "both": each in one of the two, as the run's)."""
    suites: list[ClassificationSuite | RetrievalSuite] = []
    for suffix, task in tasks_in(language):
        suites.append(
            ClassificationSuite(
                name=f"shapesworld/{task.name}{suffix}",
                classnames=list(task.classes),
                templates=list(task.templates),
                test=ZeroShotScenes(task.name, seed, stage, samples, image_size),
                train=ZeroShotScenes(task.name, seed, "linear_probe", probe_train_samples, image_size),
                prompts=task.prompts(),
                language="zh" if suffix else "en",
            )
        )
    retrieval = CaptionedScenes(seed, f"{stage}/retrieval", samples, image_size, 1, max_objects, language=language)
    captions = [[retrieval.caption(i)] for i in range(len(retrieval))]
    suites.append(RetrievalSuite("shapesworld", retrieval, captions, language=language))
    return suites


def shapesworld_probes(
    seed: int = 0, image_size: int = 64, samples: int = 500, language: Language = "en"
) -> list[ProbeSuite]:
    """The grounded probes: attribute binding, relation order, negation, counting; in Chinese
    ("shapesworld/<probe>_zh") for "zh", in both languages for "both"."""
    check_language(language)
    languages = {"en": ["en"], "zh": ["zh"], "both": ["en", "zh"]}[language]
    return [
        ProbeSuite(
            f"shapesworld/{kind}{'_zh' if lang == 'zh' else ''}", ProbeScenes(kind, seed, samples, image_size, lang)
        )
        for lang in languages
        for kind in PROBES
    ]
