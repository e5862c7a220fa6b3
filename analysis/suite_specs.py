"""Suite specs on the command line -> evaluation suites.

    shapesworld            the run's own ShapesWorld test tasks and retrieval set (its seed and language)
    digits                 scikit-learn's bundled 8x8 digits (a small real-image suite)
    faces                  scikit-image's 200 real face / non-face crops (a linear probe; the `real` extra)
    photos                 fourteen real photographs with captions written in the repo (retrieval; `real`)
    imagefolder:DIR        DIR/<class>/<image> (or DIR/train/... and DIR/test/...)
    clip_benchmark:DIR     a CLIP_benchmark wds folder: classnames.txt, zeroshot_classification_templates.txt
                           ({c}), test/<n>.tar shards of <key>.<webp|png|jpg> + <key>.cls (train/ for the probe)
    cifar10:DIR            the python-pickle CIFAR-10 directory (cifar-10-batches-py)
    cifar100:DIR           the python-pickle CIFAR-100 directory (cifar-100-python)
    coco:JSON              Karpathy-split JSON (dataset_coco.json) for retrieval
    flickr30k:JSON         Karpathy-split JSON (dataset_flickr30k.json) for retrieval

Probe specs: ``shapesworld`` (the four grounded probes) or a JSON file of probe items.

``--templates FILE`` (a text file, one template per line with "{}" or "{c}", or CLIP_benchmark's
``--custom_template_file`` JSON) and ``--classnames FILE.json`` (its ``--custom_classname_file``)
replace the prompts and class names of the imagefolder and clip_benchmark suites; the JSON files
are looked up by the suite's name (the folder's): "wds/<name>", then "<name>".
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from analysis.checkpoint import LoadedCheckpoint
from common.errors import UserError
from datamodules.suites import ClassificationSuite, ProbeSuite, RetrievalSuite
from datamodules.suites.cifar import cifar_suite
from datamodules.suites.clip_benchmark import clip_benchmark_suite, set_classnames, set_templates
from datamodules.suites.digits import digits_suite
from datamodules.suites.imagefolder import imagefolder_suite
from datamodules.suites.karpathy import karpathy_suite
from datamodules.suites.photos import faces_suite, photos_suite
from datamodules.suites.probe_files import probe_file_suite
from datamodules.suites.shapesworld import shapesworld_probes, shapesworld_suites
from datamodules.tokenizer.coverage import check_prompts

SPECS = (
    "shapesworld",
    "digits",
    "faces",
    "photos",
    "imagefolder:DIR",
    "clip_benchmark:DIR",
    "cifar10:DIR",
    "cifar100:DIR",
    "coco:JSON",
    "flickr30k:JSON",
)


@dataclass
class SuiteOptions:
    samples: int | None = None  # ShapesWorld images per task and items per probe (None: the run's test_samples)
    templates: str | None = None  # a templates file (text or CLIP_benchmark JSON) for imagefolder/clip_benchmark suites
    classnames: str | None = None  # a CLIP_benchmark class names JSON file for imagefolder/clip_benchmark suites
    images_root: str | None = None  # where Karpathy-JSON and probe-file image paths start
    seed: int = 0


def shapesworld_world(loaded: LoadedCheckpoint, samples: int | None) -> dict:
    """The run's world (seed, image size, objects, test size) when it trained on ShapesWorld, so
    the numbers reproduce its test table; defaults otherwise."""
    h = getattr(loaded.datamodule, "hparams", {})
    return {
        "seed": h.get("seed", 0),
        "image_size": h.get("image_size", getattr(loaded.image_transform, "image_size", 64)),
        "max_objects": h.get("max_objects", 3),
        "samples": samples or h.get("test_samples", 1000),
        "language": h.get("language", "en"),  # the run's captions, prompts and probes ("en", "zh", "both")
    }


def load_suites(
    specs: list[str], loaded: LoadedCheckpoint, options: SuiteOptions
) -> list[ClassificationSuite | RetrievalSuite]:
    suites: list[ClassificationSuite | RetrievalSuite] = []
    for spec in specs:
        kind, _, path = spec.partition(":")
        needs_path = kind in ("imagefolder", "clip_benchmark", "cifar10", "cifar100", "coco", "flickr30k")
        if needs_path and not path:
            raise UserError(
                f"suite {kind!r} needs a path: --suite {kind}:{'JSON' if kind in ('coco', 'flickr30k') else 'DIR'}"
            )
        if kind == "shapesworld":
            world = shapesworld_world(loaded, options.samples)
            suites += shapesworld_suites(probe_train_samples=2 * world["samples"], **world)
        elif kind == "digits":
            suites.append(digits_suite(seed=options.seed))
        elif kind == "faces":
            suites.append(faces_suite(seed=options.seed))
        elif kind == "photos":
            suites.append(photos_suite())
        elif kind == "imagefolder":
            folder = imagefolder_suite(path)
            if options.classnames:
                set_classnames(folder, options.classnames)
            if options.templates:
                set_templates(folder, options.templates)
            if options.templates or options.classnames:
                _check_templates(folder, loaded, _prompt_source(options))
            suites.append(folder)
        elif kind == "clip_benchmark":
            wds = clip_benchmark_suite(path, template_file=options.templates, classname_file=options.classnames)
            _check_templates(wds, loaded, _prompt_source(options) or f"--suite {spec}")
            suites.append(wds)
        elif kind in ("cifar10", "cifar100"):
            suites.append(cifar_suite(path, kind))
        elif kind in ("coco", "flickr30k"):
            suites.append(karpathy_suite(path, images_root=options.images_root, name=kind))
        else:
            raise UserError(f"unknown suite {spec!r}; known: {', '.join(SPECS)}")
    return suites


def _prompt_source(options: SuiteOptions) -> str:
    return " ".join(
        f"--{k} {v}" for k, v in (("templates", options.templates), ("classnames", options.classnames)) if v
    )


def _check_templates(suite: ClassificationSuite, loaded: LoadedCheckpoint, source: str) -> None:
    """Refuse the user's templates or class names when a class prompt is mostly unknown to the
    checkpoint's tokenizer (before any image is embedded): its classes would be told apart by a
    few known words at most. Built-in suites' prompts only warn (``analysis.zeroshot``)."""
    prompts = [
        (f"class {name}", prompt)
        for name, class_prompts in zip(suite.classnames, suite.class_prompts(), strict=True)
        for prompt in class_prompts
    ]
    fix = "write the templates (and the class names) in the language and words the checkpoint was trained on"
    check_prompts(loaded.tokenizer, prompts, source, fix)


def load_probe_suites(specs: list[str], loaded: LoadedCheckpoint, options: SuiteOptions) -> list[ProbeSuite]:
    suites: list[ProbeSuite] = []
    for spec in specs:
        if spec == "shapesworld":
            world = shapesworld_world(loaded, options.samples)
            suites += shapesworld_probes(world["seed"], world["image_size"], world["samples"], world["language"])
        elif spec.endswith(".json") or Path(spec).exists():
            suites.append(probe_file_suite(spec, images_root=options.images_root))
        else:
            raise UserError(f"unknown probe suite {spec!r}; use 'shapesworld' or a probe JSON file")
    return suites
