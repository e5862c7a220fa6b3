"""Analysis of real (smoke-trained) checkpoints: every metric against a naive loop over the
public encoders, the run's own test numbers reproduced, the CLI end to end, and bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from torch.utils.data import Dataset

from analysis.checkpoint import load_checkpoint
from analysis.embed import EmbedOptions, embed_images, embed_texts
from analysis.probes import selection_probe, text_pair_similarities
from analysis.stats import wilson_interval
from analysis.zeroshot import fit_linear_probe, linear_probe, metric_names, zeroshot_classification, zeroshot_retrieval
from common.errors import UserError
from common.files import write_atomic, write_json
from datamodules.shapesworld import render, sample_scene
from datamodules.suites import ClassificationSuite, ProbeSuite, RetrievalSuite
from datamodules.suites.shapesworld import shapesworld_suites

from helpers import REPO
from helpers.cli import FP32
from helpers.cli_cases import run_cases


class Items(Dataset):
    def __init__(self, items: list[dict]) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        return self.items[index]


def scenes(n: int, seed: int = 0) -> list[torch.Tensor]:
    rng = __import__("random").Random(seed)
    return [render(sample_scene(rng, 64, rng.randint(1, 3)), 64) for _ in range(n)]


def pair_score(loaded, image: torch.Tensor, text: str, direction: int = 0) -> float:
    """The checkpoint's score of one image-text pair, through the public encoders: direction 0
    image->text, 1 text->image (they differ for token-wise FILIP)."""
    model, needs = loaded.model, loaded.model.scoring_needs
    with torch.no_grad():
        images = model.image_record(loaded.image_transform(image)[None], tokens="image_tokens" in needs)
        texts = model.text_record(loaded.tokenizer([text]), tokens="text_tokens" in needs)
        return float(model.score(images, texts)[direction][0, 0])


@pytest.fixture(scope="module")
def clip(trained_run):
    return load_checkpoint(trained_run("clip", *FP32))


@pytest.fixture(scope="module")
def filip(trained_run):
    return load_checkpoint(trained_run("filip", *FP32))


def test_shapesworld_suites_reproduce_the_runs_own_test_numbers(clip) -> None:
    run_metrics = json.loads((clip.path.parent.parent / "metrics.json").read_text())
    h = clip.datamodule.hparams
    for suite in shapesworld_suites(h.seed, h.image_size, h.max_objects, h.test_samples, probe_train_samples=8):
        if isinstance(suite, ClassificationSuite):
            task = suite.name.split("/")[1]
            got = zeroshot_classification(clip, suite)["metrics"]["acc1"]
            assert got == pytest.approx(run_metrics[f"zeroshot/shapesworld_test/{task}/top1"], abs=1e-6), task
        else:
            got = zeroshot_retrieval(clip, suite)["metrics"]
            assert got["text_retrieval_recall@1"] == pytest.approx(
                run_metrics["retrieval/shapesworld_test/i2t_R@1"], abs=1e-6
            )
            assert got["image_retrieval_recall@1"] == pytest.approx(
                run_metrics["retrieval/shapesworld_test/t2i_R@1"], abs=1e-6
            )


@pytest.mark.slow
@pytest.mark.parametrize("which", ["clip", "filip"])
def test_zeroshot_classification_matches_a_naive_loop(which: str, request) -> None:
    loaded = request.getfixturevalue(which)
    images, labels = scenes(12), [i % 6 for i in range(12)]
    classnames = ["circle", "square", "triangle", "star", "ring", "cross"]
    templates = ["a {}", "a picture of a {}"]
    suite = ClassificationSuite(
        "toy", classnames, templates, Items([{"image": x, "label": y} for x, y in zip(images, labels, strict=True)])
    )
    got = zeroshot_classification(loaded, suite, options=EmbedOptions(batch_size=5))["metrics"]
    # Naive: per image and class, the ensemble score (cosine to the renormalised mean of the
    # template embeddings; for a scoring term, the mean of its template scores).
    scores = np.zeros((12, 6))
    for i, image in enumerate(images):
        for c, name in enumerate(classnames):
            prompts = [t.format(name) for t in templates]
            if loaded.model.scorer is None:
                with torch.no_grad():
                    text = loaded.model.encode_text(loaded.tokenizer(prompts)).mean(0)
                    image_embedding = loaded.model.encode_image(loaded.image_transform(image)[None])[0]
                scores[i, c] = float(image_embedding @ (text / text.norm()))
            else:
                scores[i, c] = np.mean([pair_score(loaded, image, p) for p in prompts])
    ranking = np.argsort(-scores, axis=1)
    assert got["acc1"] == pytest.approx(np.mean([ranking[i, 0] == labels[i] for i in range(12)]), abs=1e-6)
    assert got["acc5"] == pytest.approx(np.mean([labels[i] in ranking[i, :5] for i in range(12)]), abs=1e-6)
    per_class = [np.mean([ranking[i, 0] == c for i in range(12) if labels[i] == c]) for c in range(6)]
    assert got["mean_per_class_recall"] == pytest.approx(np.mean(per_class), abs=1e-6)


def test_top5_is_not_reported_below_five_classes(clip) -> None:
    suite = ClassificationSuite(
        "two", ["circle", "square"], ["a {}"], Items([{"image": x, "label": 0} for x in scenes(3)])
    )
    metrics = zeroshot_classification(clip, suite)["metrics"]
    assert metrics["acc5"] is None and 0 <= metrics["acc1"] <= 1


@pytest.mark.parametrize("which", ["clip", "filip"])
def test_retrieval_recall_with_several_captions_matches_a_naive_loop(which: str, request) -> None:
    loaded = request.getfixturevalue(which)
    images = scenes(7, seed=1)
    captions = [
        ["a red circle", "a circle"],
        ["a blue square"],
        ["two objects", "a picture of two objects", "a green star"],
        ["a circle"],  # the same string as one of image 0's captions
        ["a yellow ring"],
        ["three objects", "a white cross"],
        ["a small purple diamond"],
    ]
    suite = RetrievalSuite("toy", Items([{"image": x} for x in images]), captions)
    got = zeroshot_retrieval(loaded, suite, options=EmbedOptions(batch_size=3))["metrics"]
    texts = [t for c in captions for t in c]
    i2t_scores = np.array([[pair_score(loaded, image, t, 0) for t in texts] for image in images])
    t2i_scores = np.array([[pair_score(loaded, image, t, 1) for t in texts] for image in images])
    for k in (1, 5):
        i2t = np.mean([any(texts[j] in captions[i] for j in np.argsort(-i2t_scores[i])[:k]) for i in range(7)])
        t2i = np.mean(
            [any(texts[j] in captions[i] for i in np.argsort(-t2i_scores[:, j])[:k]) for j in range(len(texts))]
        )
        assert got[f"text_retrieval_recall@{k}"] == pytest.approx(i2t, abs=1e-6), k
        assert got[f"image_retrieval_recall@{k}"] == pytest.approx(t2i, abs=1e-6), k
    i2t = np.mean([any(texts[j] in captions[i] for j in np.argsort(-i2t_scores[i])[:10]) for i in range(7)])
    assert got["text_retrieval_recall@10"] == pytest.approx(i2t, abs=1e-6)  # 11 texts > 10
    assert got["image_retrieval_recall@10"] is None  # only 7 images: every one is in the top 10


@pytest.mark.parametrize("which", ["clip", "filip"])
def test_selection_probe_matches_a_naive_loop(which: str, request) -> None:
    loaded = request.getfixturevalue(which)
    images = scenes(9, seed=2)
    items = [
        {"image": x, "positive": p, "negatives": n}
        for x, p, n in zip(
            images,
            ["a red circle", "two objects", "there is no star"] * 3,
            [["a blue circle"], ["one object", "three objects"], ["there is no circle", "there is no ring", "a ring"]]
            * 3,
            strict=True,
        )
    ]
    got = selection_probe(loaded, ProbeSuite("toy", Items(items)), chunk=4)
    correct = [
        pair_score(loaded, item["image"], item["positive"])
        > max(pair_score(loaded, item["image"], n) for n in item["negatives"])
        for item in items
    ]
    assert got["acc"] == pytest.approx(np.mean(correct))
    assert got["chance"] == pytest.approx(np.mean([1 / (1 + len(item["negatives"])) for item in items]))
    assert got["n"] == 9 and got["ci95"][0] <= got["acc"] <= got["ci95"][1]


def test_wilson_interval_known_values() -> None:
    low, high = wilson_interval(8, 10)
    assert (round(low, 4), round(high, 4)) == (0.4902, 0.9433)
    assert wilson_interval(0, 20)[0] == 0.0 and wilson_interval(20, 20)[1] == 1.0


def test_text_pair_similarity_is_the_cosine_of_the_two_texts(clip) -> None:
    pairs = {"synonym": [("a red circle", "a red disk"), ("a big box", "a large box")]}
    got = text_pair_similarities(clip, pairs)["synonym"]
    with torch.no_grad():
        expected = [
            float(clip.model.encode_text(clip.tokenizer([a])) @ clip.model.encode_text(clip.tokenizer([b])).T)
            for a, b in pairs["synonym"]
        ]
    assert [s for _, _, s in got["pairs"]] == pytest.approx(expected, abs=1e-5)
    assert got["mean"] == pytest.approx(np.mean(expected), abs=1e-5) and got["unknown_word_fraction"] == 0.0
    english = text_pair_similarities(clip, {"synonym": [("a photo of a car", "a photo of an automobile")]})["synonym"]
    assert english["unknown_word_fraction"] > 0  # "car", "automobile" are not ShapesWorld words


def test_linear_probe_picks_the_regularisation_with_the_best_validation_accuracy() -> None:
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 16)) * 3
    y = rng.integers(0, 4, 400)
    x = centres[y] + rng.normal(size=(400, 16))
    probe, chosen = fit_linear_probe(x, y, seed=0)
    # Validation accuracy of each C, recomputed on the same split by hand.
    fit_x, val_x, fit_y, val_y = train_test_split(x, y, test_size=0.2, random_state=0, stratify=y)
    for c, accuracy in chosen["val_acc1_by_C"].items():
        assert accuracy == LogisticRegression(C=float(c), max_iter=2000).fit(fit_x, fit_y).score(val_x, val_y)
    best = max(chosen["val_acc1_by_C"].values())
    assert chosen["C"] == min(float(c) for c, a in chosen["val_acc1_by_C"].items() if a == best)  # ties: stronger L2
    # Refitted on all of the training data with the chosen C.
    refit = LogisticRegression(C=chosen["C"], max_iter=2000).fit(x, y)
    np.testing.assert_allclose(probe.coef_, refit.coef_)
    assert probe.score(x, y) > 0.9


@pytest.mark.slow
def test_trunk_linear_probe_reads_the_backbone_before_the_projection(clip) -> None:
    """SLIP's protocol: the probe sees the trunk's pooled features (the backbone's width, not the
    embedding's), standardised on the training split; its metric has its own name."""
    images = scenes(40, seed=3)
    items = Items([{"image": x, "label": i % 2} for i, x in enumerate(images)])
    suite = ClassificationSuite("toy", ["a", "b"], ["{}"], items, train=items)
    trunk = embed_images(clip, suite.test, trunk=True).encoded.image
    with torch.no_grad():
        batch = torch.stack([clip.image_transform(x) for x in images])
        expected = clip.model.vision_tower.pooled(batch)
    torch.testing.assert_close(trunk, expected, rtol=1e-4, atol=1e-5)
    assert trunk.shape[1] == clip.model.vision_tower.feature_dim != clip.model.encode_image(batch[:1]).shape[1]
    result = linear_probe(clip, suite, trunk=True)
    assert result["task"] == "linear_probe_trunk"
    names = metric_names([result, linear_probe(clip, suite)])
    assert set(names) == {"linear_probe_trunk/toy/top1", "linear_probe/toy/top1"}


# ---- the command line ----------------------------------------------------------------------
def analysis_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO), CLIP_VARIANTS_TRACEBACK="")
    return subprocess.run(
        [sys.executable, "-m", "analysis", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


@pytest.mark.cli
def test_report_writes_json_figures_markdown_and_tensorboard(trained_run, tmp_path: Path) -> None:
    run = trained_run("clip")
    result = analysis_cli("report", "--ckpt", str(run.parent), "--samples", "16", "--tsne-points", "40", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    out = run / "analysis"
    for name in ("zeroshot.json", "geometry.json", "probes.json", "report.json", "report.md"):
        assert (out / name).is_file(), name
    for figure in ("tsne", "pca", "gap_shift", "probes", "text_similarity"):
        assert (out / "figures" / f"{figure}.png").stat().st_size > 1000, figure
    records = json.loads((out / "zeroshot.json").read_text())["records"]
    assert {"dataset", "model", "task", "metrics"} <= set(records[0])
    assert {r["task"] for r in records} == {"zeroshot_classification", "linear_probe", "zeroshot_retrieval"}
    report = json.loads((out / "report.json").read_text())["metrics"]
    assert "geometry/modality_gap" in report and "probes/shapesworld/negation/acc" in report
    assert "zeroshot/shapesworld/color_shape_heldout/top1" in report
    assert "![tsne](figures/tsne.png)" in (out / "report.md").read_text()
    # The pointing game of the ResNet tower's Grad-CAM (its section, metrics, figure and overlays).
    assert 0.0 <= report["explain/gradcam/pointing"] <= 1.0 and "explain/relevance/pointing" not in report
    assert "## Pointing game" in (out / "report.md").read_text() and (out / "figures" / "explain.png").is_file()
    assert not list(out.rglob("*.tmp"))
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run), size_guidance={"images": 0, "scalars": 0}).Reload()
    assert "analysis/tsne" in events.Tags()["images"] and "analysis/explain" in events.Tags()["images"]
    assert any(tag.startswith("analysis/explain_") for tag in events.Tags()["images"])  # one overlay per item
    assert "geometry/modality_gap" in events.Tags()["scalars"]
    assert (run / "projector_config.pbtxt").is_file()


@pytest.mark.cli
def test_embed_saves_embeddings_with_metadata(trained_run, tmp_path: Path) -> None:
    run = trained_run("clip")
    result = analysis_cli(
        "embed",
        "--ckpt",
        str(run),
        "--samples",
        "6",
        "--suite",
        "shapesworld",
        "--out",
        str(tmp_path / "e"),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    saved = torch.load(tmp_path / "e" / "embeddings" / "shapesworld-shape.pt", weights_only=True)
    loaded = load_checkpoint(run)
    suite = shapesworld_suites(0, 64, 3, 6)[0]
    with torch.no_grad():
        expected = loaded.model.encode_image(
            torch.stack([loaded.image_transform(suite.test[i]["image"]) for i in range(6)])
        )
    torch.testing.assert_close(saved["image"], expected, atol=1e-5, rtol=1e-5)
    assert saved["labels"].tolist() == [suite.test[i]["label"] for i in range(6)]
    assert len(saved["texts"]) == saved["text"].shape[0] == len(saved["text_labels"])
    retrieval = torch.load(tmp_path / "e" / "embeddings" / "shapesworld.pt", weights_only=True)
    assert retrieval["texts"][0] == shapesworld_suites(0, 64, 3, 6)[-1].captions[0][0]


@pytest.mark.cli
def test_digits_suite_through_the_cli(trained_run, tmp_path: Path) -> None:
    result = analysis_cli(
        "zeroshot", "--ckpt", str(trained_run("clip")), "--suite", "digits", "--out", str(tmp_path), cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "zeroshot.json").read_text())["metrics"]
    assert (
        0 <= metrics["zeroshot/digits/top1"] <= 1 and metrics["linear_probe/digits/top1"] > 0.5
    )  # pixels are decodable


ANALYSIS_BAD_INPUT = [
    (["zeroshot", "--ckpt", "missing.ckpt"], "checkpoint not found: missing.ckpt"),
    (["zeroshot", "--ckpt", "corrupt.ckpt"], "cannot read checkpoint"),
    (["zeroshot", "--ckpt", "RUN", "--suite", "imagenet"], "unknown suite 'imagenet'"),
    (["zeroshot", "--ckpt", "RUN", "--suite", "cifar10"], "needs a path"),
    (["zeroshot", "--ckpt", "RUN", "--suite", "imagefolder:nowhere"], "nowhere"),
    (["explain", "--ckpt", "RUN", "--image", "scene.png"], "give --image and --text together"),
    (["explain", "--ckpt", "RUN", "--suite", "digits"], "only ShapesWorld records"),
    (
        ["explain", "--ckpt", "RUN", "--image", "scene.png", "--text", "zebra giraffe"],
        "unknown to the checkpoint's tokenizer",
    ),
    (
        ["explain", "--ckpt", "RUN", "--image", "missing.png", "--text", "a red circle"],
        "--image missing.png does not exist",
    ),
    (["explain", "--ckpt", "RUN", "--image", ".", "--text", "a red circle"], "--image . is not a file"),
    (["explain", "--ckpt", "RUN", "--image", "scene.png", "--text", ""], "--text is empty"),
    (["explain", "--ckpt", "RUN", "--method", "relevance"], "relevance needs a ViT vision tower"),
    (["explain", "--ckpt", "RUN", "--image", "corrupt.ckpt", "--text", "a red circle"], "not an image PIL can read"),
    (  # Chinese templates for an English word-level checkpoint: refused before any image is embedded
        ["zeroshot", "--ckpt", "RUN", "--suite", "imagefolder:classes", "--templates", "zh.txt"],
        "--templates zh.txt: the tokenizer (WordTokenizer) maps the class prompt '一张circle的图片' (class circle) "
        "mostly to its unknown token",
    ),
    (  # a committed per-run CSV edited by hand
        ["claims", "committed"],
        "committed/runs/alignment-terms.csv: line 3, column 'zeroshot/shapesworld_test/shape/top1': 'n/a' is not a number",
    ),
    (
        ["claims", "committed", "--registry", "list_registry.yaml"],
        "'experiments' maps each experiment's id to its entry",
    ),
    # search and export (issue 32)
    (["search", "--ckpt", "RUN", "--images", "nowhere", "--text", "a red circle"], "--images nowhere does not exist"),
    (
        ["search", "--ckpt", "RUN", "--images", "zh.txt", "--text", "a red circle"],
        "--images zh.txt is a file, not a folder",
    ),
    (["search", "--ckpt", "RUN", "--images", "committed", "--text", "a red circle"], "holds no image files"),
    (["search", "--ckpt", "RUN", "--images", "classes", "--text", " "], "search: --text is empty"),
    (
        ["search", "--ckpt", "RUN", "--images", "classes"],
        'search: give exactly one query, --text "..." or --image PATH',
    ),
    (
        ["export", "--ckpt", "RUN", "--format", "clip_benchmark", "--suite", "photos"],
        "--format clip_benchmark writes classification suites",
    ),
]


@pytest.fixture(scope="module")
def analysis_bad_input(trained_run, tmp_path_factory: pytest.TempPathFactory) -> list[tuple[dict, Path]]:
    """Every case of ANALYSIS_BAD_INPUT, run by ``python -m analysis``'s entry point in one
    interpreter (helpers/cli_cases.py), each in its own folder."""
    run, cases, folders = str(trained_run("clip")), [], []
    for args, _ in ANALYSIS_BAD_INPUT:
        folder = tmp_path_factory.mktemp("analysis-bad-input")
        (folder / "corrupt.ckpt").write_bytes(b"not a checkpoint at all")
        Image.fromarray(scenes(1)[0].permute(1, 2, 0).numpy()).save(folder / "scene.png")
        for shape in ("circle", "square"):  # an image folder of two classes, and templates in Chinese
            (folder / "classes" / shape).mkdir(parents=True)
            Image.fromarray(scenes(1)[0].permute(1, 2, 0).numpy()).save(folder / "classes" / shape / "0.png")
        (folder / "zh.txt").write_text("一张{}的图片\n", encoding="utf-8")
        (folder / "committed" / "runs").mkdir(parents=True)
        (folder / "committed" / "runs" / "alignment-terms.csv").write_text(
            "run,group,seed,zeroshot/shapesworld_test/shape/top1\nclip-s0,clip,0,0.5\nclip-s1,clip,1,n/a\n"
        )
        (folder / "list_registry.yaml").write_text("experiments:\n  - grid: experiments/claims/alignment_terms.yaml\n")
        command = [run if a == "RUN" else a for a in args] + ["--out", str(folder / "out")]
        cases.append({"package": "analysis", "args": command, "cwd": str(folder)})
        folders.append(folder)
    return list(zip(run_cases(cases, str(REPO)), folders, strict=True))


@pytest.mark.cli
@pytest.mark.parametrize("case", range(len(ANALYSIS_BAD_INPUT)), ids=[m for _, m in ANALYSIS_BAD_INPUT])
def test_bad_input_ends_with_one_line(case: int, analysis_bad_input: list[tuple[dict, Path]]) -> None:
    (outcome, folder), message = analysis_bad_input[case], ANALYSIS_BAD_INPUT[case][1]
    assert outcome["returncode"] == 2, outcome["stderr"][-2000:]
    lines = outcome["stderr"].strip().splitlines()
    assert lines[-1].startswith("error: ") and message in lines[-1], outcome["stderr"][-2000:]
    assert "Traceback" not in outcome["stderr"]
    assert not (folder / "out").exists()  # nothing half-written


def test_checkpoints_that_do_not_describe_themselves_are_refused(trained_run, tmp_path: Path) -> None:
    checkpoint = torch.load(trained_run("clip") / "checkpoints" / "last.ckpt", weights_only=True)
    without_data = {k: v for k, v in checkpoint.items() if k != "datamodule_hyper_parameters"}
    torch.save(without_data, tmp_path / "a.ckpt")
    with pytest.raises(UserError, match="datamodule_hyper_parameters"):
        load_checkpoint(tmp_path / "a.ckpt")
    extra = dict(checkpoint, state_dict=dict(checkpoint["state_dict"], stray=torch.zeros(1)))
    torch.save(extra, tmp_path / "b.ckpt")
    with pytest.raises(UserError, match="unexpected keys stray"):
        load_checkpoint(tmp_path / "b.ckpt")
    foreign = dict(checkpoint, datamodule_hyper_parameters={"_class_path": "somewhere_else.Data"})
    torch.save(foreign, tmp_path / "c.ckpt")
    with pytest.raises(UserError, match="outside this suite's packages"):
        load_checkpoint(tmp_path / "c.ckpt")


def test_atomic_writes_leave_nothing_behind_on_failure(tmp_path: Path) -> None:
    def fail(file) -> None:
        file.write(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        write_atomic(tmp_path / "x.json", fail)
    assert list(tmp_path.iterdir()) == []
    write_json(tmp_path / "y.json", {"a": float("nan"), "b": [1.0]})
    assert json.loads((tmp_path / "y.json").read_text()) == {"a": None, "b": [1.0]}


def test_local_imagefolder_and_probe_file_through_the_command(trained_run, tmp_path: Path) -> None:
    from PIL import Image

    from analysis.__main__ import run

    rng = __import__("random").Random(0)
    for shape in ("circle", "square", "star"):
        (tmp_path / "folder" / shape).mkdir(parents=True)
        for i, color in enumerate(("red", "blue")):
            pixels = render(sample_scene(rng, 64, 1, [(color, shape)]), 64).permute(1, 2, 0).numpy()
            Image.fromarray(pixels).resize((96, 96)).save(tmp_path / "folder" / shape / f"{i}.png")
    (tmp_path / "templates.txt").write_text("# one per line\na {}\na picture of a {}\n")
    probes = [
        {"image": "folder/circle/0.png", "positive": "a red circle", "negatives": ["a blue circle", "a red star"]}
    ]
    (tmp_path / "probes.json").write_text(json.dumps(probes * 3))
    ckpt = str(trained_run("clip"))
    out = tmp_path / "out"
    metrics = run(["zeroshot", "--ckpt", ckpt, "--suite", f"imagefolder:{tmp_path / 'folder'}", "--templates",
                   str(tmp_path / "templates.txt"), "--out", str(out)])  # fmt: skip
    (record,) = json.loads((out / "zeroshot.json").read_text())["records"]
    assert record["dataset"] == "folder" and record["metrics"]["acc5"] is None  # 3 classes
    assert metrics["zeroshot/folder/top1"] == record["metrics"]["acc1"]
    result = run(["probes", "--ckpt", ckpt, "--probes", str(tmp_path / "probes.json"), "--out", str(out)])
    assert result["probes/probes/acc"] in (0.0, 1.0)  # three identical items: all right or all wrong
    grounded = json.loads((out / "probes.json").read_text())["grounded"]["probes"]
    assert grounded["n"] == 3 and grounded["chance"] == pytest.approx(1 / 3)


def test_text_batches_of_different_lengths_give_the_same_embeddings_and_tokens(filip) -> None:
    texts = ["a red circle", "there is a big blue square left of a small green star", "two objects", "a ring"]
    whole = embed_texts(filip, texts, tokens=True, options=EmbedOptions(text_batch_size=100))
    pieces = embed_texts(
        filip, texts, tokens=True, options=EmbedOptions(text_batch_size=2)
    )  # the batches pad to 13 and 4 tokens
    with torch.no_grad():
        full = filip.model.text_record(filip.tokenizer(texts), tokens=True)  # padded to the context
    torch.testing.assert_close(pieces.text, full.text, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(whole.text, full.text, atol=1e-5, rtol=1e-5)
    assert torch.equal(pieces.text_mask, full.text_mask[:, : pieces.text_mask.shape[1]])
    mask = pieces.text_mask
    torch.testing.assert_close(
        pieces.text_tokens[mask], full.text_tokens[:, : mask.shape[1]][mask], atol=1e-5, rtol=1e-5
    )


def test_prompts_the_tokenizer_cannot_tell_apart_are_flagged(clip) -> None:
    suite = ClassificationSuite(
        "unknown words",
        ["airplane", "automobile", "circle"],
        ["a photo of a {}."],
        Items([{"image": x, "label": 2} for x in scenes(3)]),
    )
    with pytest.warns(UserWarning, match="2 classes have prompts that tokenise identically"):
        result = zeroshot_classification(clip, suite)
    assert result["prompt_check"]["indistinguishable_classes"] == 2
    assert result["prompt_check"]["unknown_word_fraction"] == pytest.approx(5 / 18)  # 2 names, 3 periods


def test_a_failed_report_leaves_no_stale_summary(clip, tmp_path: Path, monkeypatch) -> None:
    from analysis import report

    (tmp_path / "report.json").write_text("{}")

    def fail(*args, **kwargs):
        raise UserError("probe trouble")

    monkeypatch.setattr(report, "probe_analysis", fail)
    suites = shapesworld_suites(0, 64, 3, 12, probe_train_samples=24)
    with pytest.raises(UserError):
        report.write_report(clip, suites, [], tmp_path, tensorboard=False, tsne_points=12)
    assert (tmp_path / "zeroshot.json").is_file() and not (tmp_path / "report.json").exists()


def test_checkpoint_directories_and_records_are_checked(trained_run, tmp_path: Path, monkeypatch) -> None:
    trained_run("clip"), trained_run("filip", *FP32)
    with pytest.raises(UserError, match="different runs"):
        load_checkpoint(trained_run.root)
    checkpoint = torch.load(trained_run("clip") / "checkpoints" / "last.ckpt", weights_only=True)
    bare = dict(checkpoint, hyper_parameters=dict(checkpoint["hyper_parameters"], vision_tower="this.VisionTower"))
    torch.save(bare, tmp_path / "bare.ckpt")
    with pytest.raises(UserError, match="class_path/init_args"):
        load_checkpoint(tmp_path / "bare.ckpt")
    # A run that started from pretrained weights is rebuilt without looking for them (offline).
    hp = checkpoint["hyper_parameters"]
    vision = dict(hp["vision_tower"], init_args=dict(hp["vision_tower"]["init_args"], pretrained=True))
    torch.save(dict(checkpoint, hyper_parameters=dict(hp, vision_tower=vision)), tmp_path / "pretrained.ckpt")
    asked, create_model = [], timm.create_model

    def recording(*args, **kwargs):
        asked.append(kwargs.get("pretrained"))
        return create_model(*args, **kwargs)

    monkeypatch.setattr(timm, "create_model", recording)
    state = load_checkpoint(tmp_path / "pretrained.ckpt").model.state_dict()
    assert asked == [False]  # the backbone is built once, without asking for the pretrained weights
    assert state.keys() == checkpoint["state_dict"].keys()
    assert all(torch.equal(state[k], v) for k, v in checkpoint["state_dict"].items())  # all from the checkpoint


def test_compare_reads_the_event_files_into_groups(trained_run, tmp_path: Path) -> None:
    from analysis.compare import compare, group_of

    run = trained_run("clip")
    table = compare(trained_run.root, tmp_path)
    group = group_of(str(run.relative_to(trained_run.root)))
    metrics = json.loads((run / "metrics.json").read_text())
    entry = table[group]["metrics"]["zeroshot/shapesworld_test/shape/top1"]
    assert entry["n"] == 1 and entry["mean"] == pytest.approx(metrics["zeroshot/shapesworld_test/shape/top1"])
    assert (tmp_path / "compare.png").stat().st_size > 5000 and "| group | n |" in (tmp_path / "compare.md").read_text()
    assert group_of("variants/clip-s2") == "variants/clip" and group_of("clip/version_3") == "clip"
    with pytest.raises(UserError, match="no TensorBoard event files"):
        compare(tmp_path)
