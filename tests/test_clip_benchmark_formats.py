"""CLIP_benchmark's local formats as suites: a ``wds`` folder (classnames.txt, "{c}" templates, tar
shards of images and .cls labels) read without webdataset, its ``--custom_template_file`` /
``--custom_classname_file`` JSON files, "{c}" templates wherever templates are taken, and
``analysis zeroshot --suite clip_benchmark:DIR`` equal to CLIP_benchmark's own evaluator on the
same folder with the same model."""

from __future__ import annotations

import json
import tarfile
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from analysis.suite_specs import SuiteOptions, load_suites
from common.errors import UserError
from datamodules.image_text.classes import prompt_sets
from datamodules.suites import ClassificationSuite
from datamodules.suites.clip_benchmark import clip_benchmark_suite
from datamodules.suites.files import LabelledImages
from datamodules.suites.templates import (
    fill_template,
    read_classname_json,
    read_template_json,
    read_templates,
    template_problem,
)
from datamodules.tokenizer import WordTokenizer

from helpers.wds_folders import (
    COLORS,
    SHAPES,
    TEMPLATES,
    add_member,
    shape_image,
    shape_members,
    wds_folder,
)


def test_the_folder_is_read_as_clip_benchmark_reads_it(tmp_path: Path) -> None:
    members, images, labels = shape_members()
    suite = clip_benchmark_suite(wds_folder(tmp_path / "shapes", members, shards=2))
    assert suite.name == "shapes" and suite.classnames == list(SHAPES) and suite.train is None
    assert suite.class_prompts()[2] == ["a triangle", "a picture of a triangle"]  # "{c}" filled
    # shard 0 holds the even keys, shard 1 the odd ones: read shard by shard, in member order
    order = [*range(0, len(images), 2), *range(1, len(images), 2)]
    assert [suite.test[i]["label"] for i in range(len(suite.test))] == [labels[k] for k in order]
    for i, k in enumerate(order):  # decoded as webdataset's "pil" decoder decodes (RGB)
        image = suite.test[i]["image"]
        assert image.mode == "RGB" and np.array_equal(np.asarray(image), np.asarray(images[k]))


def test_what_the_export_writes_is_read_back_exactly(tmp_path: Path) -> None:
    """analysis.export.clip_benchmark writes a suite as a wds folder; reading it gives the same
    classes, prompts (its templates.json, per class), labels and pixels."""
    from analysis.export.clip_benchmark import export_suites

    images = [shape_image(c, s, 32) for s in SHAPES[:3] for c in COLORS]
    source = ClassificationSuite(
        "my/set", ["circle", "square", "triangle"], ["a {}", "one {}"], LabelledImages(images, [0, 0, 1, 1, 2, 2])
    )
    written = export_suites(SimpleNamespace(image_transform=None), [source], tmp_path)  # type: ignore[arg-type]
    folder = tmp_path / "my-set"
    assert written["commands"]["my/set"].count(str(folder)) == 2
    for template_file in (None, folder / "templates.json"):  # the folder's {c} templates, or the exact prompts
        suite = clip_benchmark_suite(folder, "my-set", template_file=template_file)
        assert suite.classnames == source.classnames and suite.class_prompts() == source.class_prompts()
        assert [suite.test[i]["label"] for i in range(6)] == [0, 0, 1, 1, 2, 2]
        for i in range(6):
            assert np.array_equal(np.asarray(suite.test[i]["image"]), np.asarray(images[i]))


def test_bad_members_are_skipped_and_counted_in_one_warning(tmp_path: Path) -> None:
    members, _, _ = shape_members()
    good = members[0][1]
    members += [
        ("s0100.png", b"not an image at all" * 5),
        ("s0100.cls", b"1"),  # unreadable image
        ("s0101.jpg", good),  # an image without a label
        ("s0102.cls", b"2"),  # a label without an image
        ("s0103.png", good),
        ("s0103.cls", b"two"),  # a label that is not an integer
        ("s0104.txt", b"a caption"),
        ("s0104.png", good),
        ("s0104.cls", b" 3 \n"),  # kept: other members ignored, the label stripped
    ]
    with pytest.warns(UserWarning) as caught:
        suite = clip_benchmark_suite(wds_folder(tmp_path / "set", members))
    (warning,) = [w for w in caught if "clip_benchmark" in str(w.message)]
    message = str(warning.message)
    assert len(suite.test) == 13 and suite.test[12]["label"] == 3
    assert "skipped 1 unreadable images in test/ of 17: test/0.tar:s0100.png" in message
    assert "skipped 1 samples without a .cls label in test/ of 17: test/0.tar:s0101.jpg" in message
    assert "skipped 1 samples without an image in test/ of 17: test/0.tar:s0102" in message
    assert "skipped 1 unreadable .cls labels in test/ of 17: test/0.tar:s0103.cls" in message


def test_a_train_split_feeds_the_linear_probe_and_shards_without_a_count_are_found(tmp_path: Path) -> None:
    members, _, _ = shape_members()
    root = wds_folder(tmp_path / "set", members)
    (root / "train").mkdir()
    for i, start in enumerate((0, 12)):  # two shards, no nshards.txt: every .tar of the folder, in order
        with tarfile.open(root / "train" / f"{i}.tar", "w") as tar:
            for name, data in members[start : start + 12]:
                add_member(tar, name, data)
    suite = clip_benchmark_suite(root)
    assert suite.train is not None and len(suite.train) == 12 and len(suite.test) == 12
    assert clip_benchmark_suite(root, train_split=None).train is None


def _error_case(tmp_path: Path, case: str) -> Path:
    members, _, _ = shape_members()
    root = wds_folder(tmp_path / "set", members[:6])
    if case == "classnames.txt":
        (root / "classnames.txt").unlink()
    elif case == "templates.txt":
        (root / "zeroshot_classification_templates.txt").unlink()
    elif case == "no split":
        for path in (root / "test").iterdir():
            path.unlink()
        (root / "test").rmdir()
    elif case == "no shards":
        (root / "test" / "0.tar").unlink()
        (root / "test" / "nshards.txt").unlink()
    elif case == "shard count":
        (root / "test" / "nshards.txt").write_text("2\n")
    elif case == "braces":
        (root / "zeroshot_classification_templates.txt").write_text("a {c}\na photo of a {}.\n")
    elif case == "other braces":
        (root / "zeroshot_classification_templates.txt").write_text("a {c} {x}\n")
    elif case == "label":
        (root / "classnames.txt").write_text("circle\n")
    elif case == "blank class":
        (root / "classnames.txt").write_text("circle\n\nsquare\n\n")
    elif case == "retrieval":
        (root / "dataset_type.txt").write_text("retrieval\n")
    elif case == "compressed":
        data = (root / "test" / "0.tar").read_bytes()
        import gzip

        (root / "test" / "0.tar").write_bytes(gzip.compress(data))
    elif case == "nothing readable":
        with tarfile.open(root / "test" / "0.tar", "w") as tar:
            add_member(tar, "a.png", b"broken")
            add_member(tar, "a.cls", b"0")
    return root


ERRORS = {
    "folder": r"clip_benchmark .*missing: not a directory; expected ROOT/classnames.txt",
    "classnames.txt": r"no classnames.txt; write one class name per line, in label order .* or pass --classnames",
    "templates.txt": r"no zeroshot_classification_templates.txt; write one template per line with '\{c\}'",
    "no split": r"no test/ folder of .tar shards",
    "no shards": r"no .tar shards in .*test",
    "shard count": r"nshards.txt says 2 shards but 1.tar is missing from .*test; fix the count or add the shards",
    "braces": r"zeroshot_classification_templates.txt, line 2: 'a photo of a \{\}.' has no '\{c\}' where the class",
    "other braces": r"line 1: 'a \{c\} \{x\}' has braces other than '\{c\}'",
    "label": r"0.tar: s0002.cls holds label 1, outside 0..0 \(the 1 class names, in label order\); add the missing",
    "blank class": r"classnames.txt, line 2: blank, but every line is one class name; remove it or fill it in",
    "retrieval": r"dataset_type.txt says 'retrieval'; only classification folders",
    "compressed": r"0.tar is not a readable, uncompressed tar file",
    "nothing readable": r"no readable image with a .cls label in .*test",
}


@pytest.mark.parametrize("case", list(ERRORS))
def test_each_mistake_is_one_line_naming_the_file_and_the_fix(case: str, tmp_path: Path) -> None:
    root = tmp_path / "missing" if case == "folder" else _error_case(tmp_path, case)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(UserError, match=ERRORS[case]) as error:
            clip_benchmark_suite(root)
    assert "\n" not in str(error.value)


def test_c_templates_are_taken_wherever_templates_are() -> None:
    assert fill_template("a photo of a {c}.", "cat") == "a photo of a cat."
    assert fill_template("a photo of a {}.", "cat") == "a photo of a cat."  # the suite's own placeholder
    assert fill_template("{{literal}} {c}", "cat") == "{literal} cat"  # str.format, as CLIP_benchmark fills it
    assert template_problem("a {c}") is None and template_problem("a {}") is None
    assert template_problem("a photo") == "has no '{}' where the class name goes (or CLIP_benchmark's '{c}')"
    assert "braces other than '{c}'" in template_problem("a {c} and a {}")
    suite = ClassificationSuite("x", ["cat", "dog"], ["a {c}", "one {}"], LabelledImages([], []))
    assert suite.class_prompts() == [["a cat", "one cat"], ["a dog", "one dog"]]
    # a training run's own zero-shot prompts (data.init_args.zeroshot of the image-text data)
    (prompt_set,) = prompt_sets({"en": {"classnames": ["cat", "dog"], "templates": ["a {c}", "one {}"]}}, "label")
    assert prompt_set.prompts() == [["a cat", "one cat"], ["a dog", "one dog"]]
    with pytest.raises(UserError, match=r"zeroshot.en: template 'a \{c\} \{\}' has braces other than '\{c\}'"):
        prompt_sets({"en": {"classnames": ["cat"], "templates": ["a {c} {}"]}}, "label")


def test_templates_files_and_clip_benchmark_json_files_are_read(tmp_path: Path) -> None:
    text = tmp_path / "templates.txt"
    text.write_text("# mine\na photo of a {c}.\n\na drawing of a {}.\n")
    assert read_templates(text) == ["a photo of a {c}.", "a drawing of a {}."]
    templates = tmp_path / "custom_templates.json"
    templates.write_text(json.dumps({
        "wds/pets": ["a photo of a {c}, a pet."],
        "birds": {"robin": ["a robin, a bird."], "crow": ["a crow, a black bird."]},
        "imagenet1k": ["itap of a {c}."],
    }))  # fmt: skip
    assert read_template_json(templates, "pets") == ["a photo of a {c}, a pet."]
    assert read_template_json(templates, "wds/pets") == ["a photo of a {c}, a pet."]
    assert read_template_json(templates, "birds") == {"robin": ["a robin, a bird."], "crow": ["a crow, a black bird."]}
    assert read_template_json(templates, "cars") == ["itap of a {c}."]  # CLIP_benchmark's fallback
    classnames = tmp_path / "custom_classnames.json"
    classnames.write_text(json.dumps({"pets": ["beagle", "tabby cat"]}))
    assert read_classname_json(classnames, "pets") == ["beagle", "tabby cat"]
    with pytest.raises(
        UserError, match=r"has no entry for dataset 'cars': looked for 'wds/cars', 'cars', found 'pets'"
    ):
        read_classname_json(classnames, "cars")
    (tmp_path / "bad.json").write_text(json.dumps({"pets": ["a photo of a pet"]}))
    with pytest.raises(
        UserError,
        match=r"template 'a photo of a pet' has no '\{\}' where the class name goes \(or CLIP_benchmark's '\{c\}'\)",
    ):
        read_template_json(tmp_path / "bad.json", "pets")
    (tmp_path / "list.json").write_text(json.dumps(["a {c}"]))
    with pytest.raises(UserError, match="expected a JSON object keyed by dataset name"):
        read_template_json(tmp_path / "list.json", "pets")


def test_the_command_line_sources_replace_the_folders_prompts_and_names(tmp_path: Path) -> None:
    """--templates (text or JSON, "{c}") and --classnames (JSON) for clip_benchmark and imagefolder
    suites, as load_suites builds them; the prompts are checked against the checkpoint's tokenizer."""
    members, _, _ = shape_members()
    root = wds_folder(tmp_path / "shapes", members, classnames=[f"class{i}" for i in range(6)], templates=["x {c}"])
    (tmp_path / "classnames.json").write_text(json.dumps({"wds/shapes": list(SHAPES), "folder": ["star", "ring"]}))
    (tmp_path / "templates.json").write_text(json.dumps({"shapes": TEMPLATES, "folder": {"star": ["a star"], "ring": ["a ring"]}}))  # fmt: skip
    for label, name in enumerate(("a", "b")):
        (tmp_path / "folder" / name).mkdir(parents=True)
        shape_image("red", SHAPES[label]).save(tmp_path / "folder" / name / "0.png")
    loaded = SimpleNamespace(tokenizer=WordTokenizer(["a", "picture", "of", *SHAPES, "ring"], context_length=8))
    options = SuiteOptions(templates=str(tmp_path / "templates.json"), classnames=str(tmp_path / "classnames.json"))
    ours, folder = load_suites(
        [f"clip_benchmark:{root}", f"imagefolder:{tmp_path / 'folder'}"],
        loaded,
        options,  # type: ignore[arg-type]
    )
    assert ours.classnames == list(SHAPES) and ours.class_prompts()[0] == ["a circle", "a picture of a circle"]
    assert folder.classnames == ["star", "ring"] and folder.class_prompts() == [["a star"], ["a ring"]]
    with pytest.raises(UserError, match=r"--suite clip_benchmark:.*maps the class prompt 'x class0'"):
        load_suites([f"clip_benchmark:{root}"], loaded, SuiteOptions())  # type: ignore[arg-type]
    with pytest.raises(UserError, match=r"suite 'clip_benchmark' needs a path: --suite clip_benchmark:DIR"):
        load_suites(["clip_benchmark"], loaded, SuiteOptions())  # type: ignore[arg-type]
    (tmp_path / "three.json").write_text(json.dumps({"folder": ["a", "b", "c"]}))
    with pytest.raises(UserError, match=r"3 names for 'folder', which has 2 classes; give one name per label"):
        load_suites([f"imagefolder:{tmp_path / 'folder'}"], loaded, SuiteOptions(classnames=str(tmp_path / "three.json")))  # type: ignore[arg-type]  # fmt: skip
    (tmp_path / "some.json").write_text(json.dumps({"folder": {"star": ["a star"]}}))
    with pytest.raises(
        UserError, match=r"the prompts of 'folder' name no class 'a' \(and 1 more\); key them by the class names"
    ):
        load_suites([f"imagefolder:{tmp_path / 'folder'}"], loaded, SuiteOptions(templates=str(tmp_path / "some.json")))  # type: ignore[arg-type]  # fmt: skip


def _clip_benchmarks_evaluate(loaded, root: Path, templates: Path | None, classnames: Path | None) -> dict:
    """CLIP_benchmark's own wds builder and zero-shot evaluator (webdataset reading the shards), with
    the checkpoint's model, tokenizer and image transform; its NumPy 2 accuracy bug fixed as the
    export's CLI fixes it (analysis.export.clip_benchmark_cli). Returns its metrics and what its
    dataset held: the model input, labels and prompts."""
    from clip_benchmark.datasets.builder import build_dataset
    from clip_benchmark.metrics import zeroshot_classification

    from analysis.export.clip_benchmark_cli import _accuracy, needs_fix

    with warnings.catch_warnings():  # webdataset's own note on its shardshuffle default
        warnings.simplefilter("ignore")
        dataset = build_dataset(
            f"wds/{root.name}", root=str(root), transform=loaded.image_transform, split="test",
            task="zeroshot_classification", custom_template_file=str(templates) if templates else None,
            custom_classname_file=str(classnames) if classnames else None,
        )  # fmt: skip
        loader = torch.utils.data.DataLoader(dataset.batched(5), batch_size=None, shuffle=False, num_workers=0)
        batches = list(loader)
    original = zeroshot_classification.accuracy
    if needs_fix():
        zeroshot_classification.accuracy = _accuracy
    try:
        metrics = zeroshot_classification.evaluate(
            loaded.model, loader, loaded.tokenizer, dataset.classes, dataset.templates, device="cpu", amp=False
        )
    finally:
        zeroshot_classification.accuracy = original
    by_class = isinstance(dataset.templates, dict)
    prompts = [
        dataset.templates[c] if by_class else [t.format(c=c) for t in dataset.templates] for c in dataset.classes
    ]
    return {
        "metrics": metrics,
        "pixels": torch.cat([x for x, _ in batches]),
        "labels": torch.cat([y for _, y in batches]).tolist(),
        "prompts": prompts,
    }


@pytest.mark.parametrize("source", ["folder", "json lists", "json per class"])
def test_analysis_zeroshot_equals_clip_benchmarks_evaluate_on_the_folder(
    source: str, trained_run, tmp_path: Path
) -> None:
    """``analysis zeroshot --suite clip_benchmark:DIR`` against CLIP_benchmark's
    ``zeroshot_classification.evaluate`` on the same folder, model and prompts: the folder's own
    files, or its --custom_template_file / --custom_classname_file JSON (lists, or per-class prompts).
    The smoke checkpoint is near chance, so the suite's reading is also compared item by item with
    webdataset's: the same model input in the same order, the same labels and prompts."""
    pytest.importorskip("clip_benchmark")
    pytest.importorskip("webdataset")
    from analysis.__main__ import run
    from analysis.checkpoint import load_checkpoint

    members, _, _ = shape_members()
    folder_names = list(SHAPES) if source == "folder" else [f"shape{i}" for i in range(6)]
    root = wds_folder(tmp_path / "shapes", members, classnames=folder_names, shards=2)
    templates = classnames = None
    if source != "folder":
        classnames, templates = tmp_path / "classnames.json", tmp_path / "templates.json"
        classnames.write_text(json.dumps({"wds/shapes": list(SHAPES)}))
        per_class = {s: [f"a {s}", f"a picture of a {s}", s] for s in SHAPES}
        entry = per_class if source == "json per class" else ["a picture of a {c}", "a {c}", "{c}"]
        templates.write_text(json.dumps({"shapes": entry}))
    ckpt = str(trained_run("clip"))
    extra = [] if source == "folder" else ["--templates", str(templates), "--classnames", str(classnames)]
    out = tmp_path / "out"
    run(["zeroshot", "--ckpt", ckpt, "--suite", f"clip_benchmark:{root}", "--no-linear-probe", *extra,
         "--batch-size", "5", "--out", str(out)])  # fmt: skip
    (record,) = json.loads((out / "zeroshot.json").read_text())["records"]
    ours = record["metrics"]
    loaded = load_checkpoint(ckpt)
    theirs = _clip_benchmarks_evaluate(loaded, root, templates, classnames)
    print(f"{source}: ours {ours} theirs {theirs['metrics']}")
    assert record["dataset"] == "shapes" and record["task"] == "zeroshot_classification"
    # equal counts of right answers among 12 images (ours are float32 fractions: 1e-6 is far below 1/12)
    for metric in ("acc1", "acc5", "mean_per_class_recall"):
        assert ours[metric] == pytest.approx(theirs["metrics"][metric], abs=1e-6), metric
    suite = clip_benchmark_suite(root, template_file=templates, classname_file=classnames)
    assert suite.class_prompts() == theirs["prompts"]
    assert [suite.test[i]["label"] for i in range(len(suite.test))] == theirs["labels"]
    pixels = torch.stack([loaded.image_transform(suite.test[i]["image"]) for i in range(len(suite.test))])
    assert torch.equal(pixels, theirs["pixels"])
