"""ShapesWorld as evaluation suites: the run's own zero-shot tasks, retrieval set and probes.

Built from the same seed and streams as ``ShapesWorldDataModule``'s test (or val) tasks, so a
checkpoint's analysis numbers reproduce the run's own test table.
"""

from __future__ import annotations

from datamodules.shapesworld.datasets import TASKS, CaptionedScenes, ZeroShotScenes
from datamodules.shapesworld.probes import PROBES, ProbeScenes
from datamodules.suites.base import ClassificationSuite, ProbeSuite, RetrievalSuite


def shapesworld_suites(
    seed: int = 0,
    image_size: int = 64,
    max_objects: int = 3,
    samples: int = 1000,
    stage: str = "test",
    probe_train_samples: int = 2000,
) -> list[ClassificationSuite | RetrievalSuite]:
    """The zero-shot tasks (shape, color, color+shape on seen and on held-out combinations,
    count) with a linear-probe training split from a stream of its own, and the retrieval set."""
    suites: list[ClassificationSuite | RetrievalSuite] = []
    for name, task in TASKS.items():
        suites.append(
            ClassificationSuite(
                name=f"shapesworld/{name}",
                classnames=list(task.classes),
                templates=list(task.templates),
                test=ZeroShotScenes(name, seed, stage, samples, image_size),
                train=ZeroShotScenes(name, seed, "linear_probe", probe_train_samples, image_size),
                prompts=task.prompts(),
            )
        )
    retrieval = CaptionedScenes(seed, f"{stage}/retrieval", samples, image_size, 1, max_objects)
    captions = [[retrieval.caption(i)] for i in range(len(retrieval))]
    suites.append(RetrievalSuite("shapesworld", retrieval, captions))
    return suites


def shapesworld_probes(seed: int = 0, image_size: int = 64, samples: int = 500) -> list[ProbeSuite]:
    """The grounded probes: attribute binding, relation order, negation, counting."""
    return [ProbeSuite(f"shapesworld/{kind}", ProbeScenes(kind, seed, samples, image_size)) for kind in PROBES]
