"""The real entry point, run as a user runs it: `python -m experiments fit --config ...`."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
import yaml

from helpers import CONFIGS, REPO
from helpers.cli import preset_args, run_cli
from helpers.cli_cases import run_cases

pytestmark = pytest.mark.cli  # every test here runs `python -m experiments`

SMOKE = CONFIGS / "smoke.yaml"
HELPERS = {"base.yaml", "smoke.yaml"}  # not presets: defaults and the shrink switch


_SOCKET_TROUBLE = re.compile(r"Address already in use|EADDRINUSE|Connection refused|Connection reset by peer")


PRESETS = sorted(p for p in CONFIGS.glob("*.yaml") if p.name not in HELPERS)
REAL_DATA = {"digits.yaml"}  # image-text presets: smoke.yaml shrinks ShapesWorld; test_digits_preset_* shrinks them


def test_every_preset_has_a_header_with_its_command() -> None:
    for path in PRESETS + [SMOKE]:
        lines = path.read_text().splitlines()
        header = "\n".join(lines[: next(i for i, line in enumerate(lines) if not line.startswith("#"))])
        assert "python -m experiments fit" in header and f"experiments/configs/{path.name}" in header, path.name
        assert "Should" in header, f"{path.name}: the header must say what the run should reach"


def test_the_large_batch_preset_splits_its_batch_into_whole_micro_batches() -> None:
    path = CONFIGS / "trainer" / "large_batch.yaml"
    assert "python -m experiments fit" in path.read_text().split("\nmodel:")[0]
    config = yaml.safe_load(path.read_text())
    batch, micro = config["data"]["init_args"]["batch_size"], config["model"]["micro_batch_size"]
    assert batch % micro == 0 and batch // micro > 1


@pytest.mark.parametrize("preset", [p for p in PRESETS if p.name not in REAL_DATA], ids=lambda p: p.stem)
def test_shrunk_fit_writes_config_events_checkpoint_and_metrics(preset: Path, tmp_path: Path) -> None:
    result = run_cli("fit", *preset_args(preset), "--config", str(SMOKE), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = (tmp_path / "runs").glob("*/version_0")
    assert (run / "config.yaml").is_file() and (run / "hparams.yaml").is_file()
    assert list(run.glob("events.out.tfevents.*"))
    assert (run / "checkpoints" / "last.ckpt").is_file()
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["global_step"] == 4
    # Each task's top-1 is a count of its test images right, over all of them (none dropped,
    # repeated or taken from another task): a whole number of 1/test_samples.
    samples = yaml.safe_load((run / "config.yaml").read_text())["data"]["init_args"]["test_samples"]
    for task in ("shape", "color", "color_shape_seen", "color_shape_heldout", "count"):
        right = metrics[f"zeroshot/shapesworld_test/{task}/top1"] * samples
        assert right == pytest.approx(round(right), abs=1e-6) and 0 <= round(right) <= samples, (task, right)
        assert f"zeroshot/shapesworld_val/{task}/top1" in metrics
    assert "retrieval/shapesworld_test/i2t_R@1" in metrics and "train/loss" in metrics
    terms = yaml.safe_load((run / "config.yaml").read_text())["model"]["terms"]
    for term in terms:  # every term logs its loss under its own name
        assert f"train/{term['class_path'].rsplit('.', 1)[1].lower()}/loss" in metrics
    assert "checkpoint:" in result.stdout + result.stderr

    # The checkpoint alone rebuilds the model (towers and terms from their saved config).
    from variants.module import ContrastiveModule

    model = ContrastiveModule.load_from_checkpoint(run / "checkpoints" / "last.ckpt", map_location="cpu").eval()
    saved = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    assert all(torch.equal(saved[k], v) for k, v in model.state_dict().items())
    with torch.no_grad():
        embedding = model.encode_image(torch.randn(2, 3, 64, 64))
    torch.testing.assert_close(embedding.norm(dim=-1), torch.ones(2))


DIGITS_SMOKE = ["--trainer.max_steps", "4", "--trainer.val_check_interval", "4", "--data.init_args.batch_size", "8",
                "--data.init_args.probe_train_rows", "100", "--trainer.enable_progress_bar", "false"]  # fmt: skip


def test_digits_preset_trains_from_files_on_disk_and_tests_on_held_out_real_digits(tmp_path: Path) -> None:
    """The first run writes the captioned digits (data/digits under the working directory) and reads
    them through ImageTextDataModule; its test table has zero-shot in both languages, retrieval and
    the linear probe; the analysis rebuilds the datamodule (prompts included) from the checkpoint."""
    result = run_cli("fit", *preset_args(CONFIGS / "digits.yaml"), *DIGITS_SMOKE, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "data" / "digits" / "BUILD.json").is_file()
    (run,) = (tmp_path / "runs").glob("digits/version_0")
    metrics = json.loads((run / "metrics.json").read_text())
    for name in ("zeroshot/digits_test/digit/top1", "zeroshot/digits_test/digit_zh/top1",
                 "retrieval/digits_test/i2t_R@1", "retrieval/digits_test/t2i_R@1", "linear_probe/digits_test/top1",
                 "zeroshot/digits_val/digit_zh/top1", "linear_probe/digits_val/top1"):  # fmt: skip
        assert 0.0 <= metrics[name] <= 1.0, name
    assert metrics["linear_probe/digits_test/top1"] > 0.5  # 10 classes: a probe on 100 real digits is far above chance
    from analysis.checkpoint import load_checkpoint

    loaded = load_checkpoint(run)
    assert [s.name for s in loaded.datamodule.prompt_sets] == ["digit", "digit_zh"]
    assert loaded.tokenizer(["手写的数字七"]).tolist() == loaded.datamodule.tokenizer(["手写的数字七"]).tolist()


def test_print_config_resolves_the_composed_config(tmp_path: Path) -> None:
    result = run_cli("fit", *preset_args(CONFIGS / "demo.yaml"), "--print_config", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    config = yaml.safe_load(result.stdout)
    assert config["trainer"]["max_steps"] == 400  # demo.yaml over clip.yaml over base.yaml
    assert config["model"]["terms"][0]["class_path"] == "variants.objectives.InfoNCE"
    assert config["data"]["init_args"]["batch_size"] == 128
    assert config["trainer"]["callbacks"][0]["init_args"]["save_last"] is True


@pytest.mark.ddp
@pytest.mark.parametrize("preset", ["clip", "slip", "filip", "declip", "chinese_clip"])
def test_two_process_cpu_ddp_fit(preset: str, tmp_path: Path) -> None:
    """The DDP preset under bf16-mixed (kept even on a CPU without native bf16, where runs would
    switch to float32): global embeddings (CLIP), SSL views through the globally normalised
    projector in micro-batches with gradient caching (SLIP), token gathers and frozen global
    heads (FILIP), image and text views, masked captions and the gathered NNS queue (DeCLIP), a
    transformers BERT text tower next to an image tower frozen for the first 2 of the 4 steps
    (registered with DDP from the start, its gradients dropped, then trained), on bilingual
    captions (Chinese-CLIP)."""
    ddp = CONFIGS / "trainer" / "ddp_cpu.yaml"
    args = ("fit", *preset_args(CONFIGS / f"{preset}.yaml"), "--config", str(SMOKE), "--config", str(ddp))
    if preset == "slip":  # and gradient caching: each process's 8 rows in micro-batches of 4
        args += ("--model.micro_batch_size", "4")
    if preset == "chinese_clip":  # unlocked within the smoke run's 4 steps
        args += ("--model.freeze", '{"vision_tower": 2}')
    result = run_cli(*args, cwd=tmp_path / "first", CLIP_VARIANTS_KEEP_BF16="1")
    if result.returncode != 0 and _SOCKET_TROUBLE.search(result.stderr):
        # The free port can be taken between choosing it and binding it: retry once on a new
        # port, only for socket errors (any other failure fails the test).
        result = run_cli(*args, cwd=tmp_path / "retry", CLIP_VARIANTS_KEEP_BF16="1")
        tmp_path = tmp_path / "retry"
    else:
        tmp_path = tmp_path / "first"
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = (tmp_path / "runs").glob("*/version_0")
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["global_step"] == 4
    assert "zeroshot/shapesworld_test/shape/top1" in metrics
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert yaml.safe_load((run / "config.yaml").read_text())["trainer"]["devices"] == 2


def test_a_fit_of_zero_steps_keeps_the_initial_weights_and_tests_them(tmp_path: Path) -> None:
    """A claim's "at init" arm: max_steps 0 trains nothing, saves the initial towers as last.ckpt
    and evaluates them (the modality gap of untrained towers, Mind the Gap's cone effect)."""
    result = run_cli(
        "fit", *preset_args(CONFIGS / "clip.yaml"), "--config", str(SMOKE), "--trainer.max_steps", "0", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = (tmp_path / "runs").glob("*/version_0")
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert checkpoint["global_step"] == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["global_step"] == 0 and metrics["geometry/shapesworld_test/modality_gap"] > 0.1


def test_eval_steps_evaluate_earlier_weights_and_leave_the_final_metrics_alone(tmp_path: Path) -> None:
    """Budget curves from one run: the weights of steps 0 and 2 are saved and evaluated after fit
    (validation and test), metrics.json's history holds every step, its top level the final
    weights' values, equal to those of the same run without eval_steps; a stale metrics.json of an
    earlier attempt in the same folder is not mixed in; a saved step loads for the analysis."""
    from analysis.checkpoint import load_checkpoint

    common = ["fit", *preset_args(CONFIGS / "clip.yaml"), "--config", str(SMOKE), "--trainer.limit_val_batches", "0"]
    plain = run_cli(*common, cwd=tmp_path / "plain")
    stale = tmp_path / "budgets" / "runs" / "clip" / "version_0" / "metrics.json"
    stale.parent.mkdir(parents=True)
    stale.write_text(json.dumps({"history": {"999": {"zeroshot/shapesworld_test/shape/top1": 1.0}}}))
    budgets = run_cli(*common, "--eval_steps", "[0, 2]", "--validate_after_fit", "true",
                      "--trainer.logger.init_args.version", "0", cwd=tmp_path / "budgets")  # fmt: skip
    assert plain.returncode == 0 and budgets.returncode == 0, budgets.stderr[-3000:]
    run = stale.parent
    assert sorted(p.name for p in (run / "checkpoints" / "eval").iterdir()) == ["step=0.ckpt", "step=2.ckpt"]
    metrics = json.loads((run / "metrics.json").read_text())
    assert sorted(metrics["history"], key=int) == ["0", "2", "4"]
    for step in ("0", "2", "4"):  # limit_val_batches 0 turns off validation during fit only
        assert {"zeroshot/shapesworld_val/shape/top1", "zeroshot/shapesworld_test/shape/top1"} <= set(
            metrics["history"][step]
        )
    assert metrics["history"]["0"] != metrics["history"]["4"]
    final = dict(metrics["history"]["4"])
    assert all(metrics[k] == v for k, v in final.items())
    (plain_run,) = (tmp_path / "plain" / "runs").glob("*/version_0")
    plain_metrics = json.loads((plain_run / "metrics.json").read_text())
    assert {k: v for k, v in plain_metrics.items() if "_test/" in k} == {
        k: v for k, v in final.items() if "_test/" in k
    }
    assert "zeroshot/shapesworld_val/shape/top1" not in plain_metrics  # validation after fit is asked for
    assert load_checkpoint(run / "checkpoints" / "eval" / "step=2.ckpt").global_step == 2
    bad = run_cli(*common, "--eval_steps", "[2, 9]", cwd=tmp_path / "bad")
    assert bad.returncode == 2 and "eval_steps [9]: each is a training step in [0, trainer.max_steps = 4]" in bad.stderr


# Chinese-CLIP's BERT text tower loaded from a model folder (the HF_ folders below).
HF_TOWER = ["--config", str(CONFIGS / "chinese_clip.yaml"), "--model.text_tower.init_args.config", "null",
            "--model.text_tower.init_args.pretrained"]  # fmt: skip
# id: (arguments, what the one error line must say); files named in capitals are made by the fixture.
BAD_INPUT = {
    "unknown-key": (["--model.lrr", "1"], "unrecognized arguments: --model.lrr"),
    "unknown-key-in-yaml": (["--config", "BAD_YAML"], "does not accept option 'model.lrr'"),
    "unknown-class-path": (["--model.terms+=variants.objectives.NoSuchTerm"], "'variants.objectives.NoSuchTerm'"),
    "wrong-type": (["--data.init_args.batch_size", "1.5"], "Parser key \"batch_size\": Expected a <class 'int'>"),
    "unknown-timm-model": (
        ["--model.vision_tower.init_args.model_name", "resnet10x"],
        "unknown timm model name 'resnet10x'; did you mean resnet10t",
    ),
    "embed-dims": (["--model.text_tower.init_args.embed_dim", "64"], "embed_dim is set once, at the top level"),
    "batch-size-0": (["--data.init_args.batch_size", "0"], "data.init_args.batch_size must be >= 1, got 0"),
    "workers-negative": (["--data.init_args.num_workers", "-1"], "data.init_args.num_workers must be >= 0, got -1"),
    "too-many-objects": (
        ["--data.init_args.max_objects", "10"],
        "ShapesWorld needs 1 <= min_objects <= max_objects <= 9",
    ),
    "context-1": (["--data.init_args.context_length", "1"], "context_length must be >= 3 to hold the start token"),
    "image-size": (
        ["--model.vision_tower.init_args.model_name", "vit_tiny_patch16_224", "--data.init_args.image_size", "32"],
        "the vision tower (vit_tiny_patch16_224) cannot take the data's 32 px images",
    ),
    "ckpt-garbage": (["--ckpt_path", "NOT_A_CKPT"], "not a readable checkpoint (truncated, or not a torch file: "),
    "ckpt-missing": (["--ckpt_path", "missing.ckpt"], "--ckpt_path missing.ckpt: no such file"),
    "ckpt-weights-only": (
        ["--ckpt_path", "WEIGHTS"],
        "not a training checkpoint (no optimizer or loop state to resume)",
    ),
    "micro-batch-0": (
        ["--model.micro_batch_size", "0"],
        "model.micro_batch_size must be a positive number of rows, got 0",
    ),
    "mlm-without-masking": (
        ["--config", str(CONFIGS / "declip.yaml"), "--data.init_args.text_masking", "null"],
        "MaskedLanguageModel needs masked captions but the data does not mask them: set data.init_args.text_masking",
    ),
    "masking-without-mlm": (
        ["--data.init_args.text_masking", "datamodules.augment.TokenMasking"],
        "the data masks the captions (data.init_args.text_masking) but no term predicts the masked tokens",
    ),
    "text-views-missing": (
        ["--config", str(CONFIGS / "declip.yaml"), "--data.init_args.text_views", "null"],
        "a term needs a second text view per caption",
    ),
    "micro-batch-not-dividing": (
        ["--model.micro_batch_size", "3"],
        "model.micro_batch_size 3 does not divide this process's batch of 8 rows",
    ),
    # Chinese captions through a vocab.txt without Chinese: every token [UNK], which trained to exit 0.
    "unknown-tokens": (
        ["--data.init_args.language", "zh", "--data.init_args.vocab", "EN_VOCAB"],
        "maps 100.0% of the tokens of 64 sampled training captions to its unknown token (more than 10%), e.g. '",
    ),
    "vocab-gbk": (
        ["--data.init_args.language", "zh", "--data.init_args.vocab", "GBK_VOCAB"],
        "gbk-vocab.txt is not UTF-8 text (byte 0x",
    ),
    "vocab-directory": (
        ["--data.init_args.language", "zh", "--data.init_args.vocab", "EMPTY_DIR"],
        "is a directory without a vocab.txt: give the path of a vocab.txt file (or a model folder that holds one)",
    ),
    "hf-damaged-safetensors": (
        [*HF_TOWER, "HF_DAMAGED"],
        "model.safetensors is damaged (Error while deserializing header: header too large)",
    ),
    "hf-pickled-bin": (
        [*HF_TOWER, "HF_PICKLED"],
        "pytorch_model.bin holds objects other than tensors (pickled Python), so it will not be loaded",
    ),
    "views-blur-p": (
        ["--config", str(CONFIGS / "slip.yaml"), "--data.init_args.views.init_args.blur_p", "5"],
        "views.blur_p must be a probability in [0, 1], got 5.0",
    ),
    "views-crop-scale": (
        ["--config", str(CONFIGS / "slip.yaml"), "--data.init_args.views.init_args.crop_scale", "[0.5, 0.2]"],
        "views.crop_scale must be two area fractions [low, high] with 0 < low <= high <= 1, got (0.5, 0.2)",
    ),
    "batch-too-small-for-a-term": (
        ["--config", str(CONFIGS / "declip.yaml"), "--data.init_args.batch_size", "1"],
        "simsiam needs >= 2 rows (its projector's and predictor's BatchNorm normalises over the batch)",
    ),
    "freeze-everything": (
        ["--model.freeze", '{"vision_tower": null, "text_tower": null, "terms": null}'],
        "model.freeze leaves nothing to train for the whole run: vision_tower (whole run), text_tower (whole run)",
    ),
    "init-from-a-directory-without-checkpoints": (
        ["--model.init_from", "EMPTY_DIR"],
        "no checkpoints/last.ckpt under ",
    ),
    # Image-text data with classes (the digits preset; its files are built in the case's folder).
    "zeroshot-without-labels": (
        ["--config", str(CONFIGS / "digits.yaml"), "--data.init_args.label_column", "null"],
        "data.init_args.zeroshot needs each row's class: set data.init_args.label_column",
    ),
    "label-column-missing": (
        ["--config", str(CONFIGS / "digits.yaml"), "--data.init_args.label_column", "digit"],
        "no column 'digit' (label_column); columns found: filepath, title, label, language",
    ),
    "probe-rows-negative": (
        ["--config", str(CONFIGS / "digits.yaml"), "--data.init_args.probe_train_rows", "-1"],
        "data.init_args.probe_train_rows must be >= 0, got -1",
    ),
    "zeroshot-template-without-slot": (
        [
            "--config",
            str(CONFIGS / "digits.yaml"),
            "--data.init_args.zeroshot",
            '{"d": {"classnames": ["a", "b"], "templates": ["a digit"]}}',
        ],
        "data.init_args.zeroshot.d: template 'a digit' has no '{}' where the class name goes",
    ),
}


class _Pickled:
    """What a malicious pytorch_model.bin holds: loading it would run code (it never does)."""

    def __reduce__(self) -> tuple:
        return (exec, ("raise SystemExit('pickled code ran')",))


def shared_inputs(folder: Path) -> dict[str, Path]:
    """Read-only inputs the cases share, made once: vocabularies and HF model folders."""
    from transformers import BertConfig, BertModel

    from datamodules.shapesworld.datamodule import tokenizer_for
    from datamodules.tokenizer.bert import BERT_SPECIALS

    english = folder / "en-vocab.txt"
    english.write_text("\n".join([*BERT_SPECIALS, "a", "red", "circle"]) + "\n", encoding="utf-8")
    gbk = folder / "gbk-vocab.txt"
    gbk.write_bytes("\n".join([*BERT_SPECIALS, "红色", "圆形"]).encode("gbk"))
    # A tiny BERT of chinese_clip.yaml's vocabulary (bilingual ShapesWorld's words), then damaged.
    vocab_size = tokenizer_for("both", None, 64).vocab_size
    config = BertConfig(vocab_size=vocab_size, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=64)  # fmt: skip
    BertModel(config, add_pooling_layer=False).save_pretrained(folder / "hf-damaged")
    weights = folder / "hf-damaged" / "model.safetensors"
    weights.write_bytes(b"\xff" * 8 + weights.read_bytes()[8:64])  # a header length past the file
    (folder / "hf-pickled").mkdir()
    config.save_pretrained(folder / "hf-pickled")
    torch.save({"embeddings.word_embeddings.weight": _Pickled()}, folder / "hf-pickled" / "pytorch_model.bin")
    return {
        "EN_VOCAB": english,
        "GBK_VOCAB": gbk,
        "HF_DAMAGED": folder / "hf-damaged",
        "HF_PICKLED": folder / "hf-pickled",
    }


@pytest.fixture(scope="module")
def bad_input_results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[dict, Path]]:
    """Every bad-input case, run in one interpreter (helpers/cli_cases.py), each in its own folder."""
    cases, folders = [], {}
    shared = shared_inputs(tmp_path_factory.mktemp("shared-inputs"))
    for case_id, (args, _) in BAD_INPUT.items():
        folder = folders[case_id] = tmp_path_factory.mktemp(case_id)
        bad_yaml = folder / "bad.yaml"
        bad_yaml.write_text("model:\n  lrr: 0.1\n")
        (folder / "garbage.ckpt").write_bytes(b"not a checkpoint at all")
        torch.save({"state_dict": {"w": torch.zeros(1)}}, folder / "weights.ckpt")
        (folder / "empty").mkdir()
        files = {"BAD_YAML": bad_yaml, "NOT_A_CKPT": folder / "garbage.ckpt", "WEIGHTS": folder / "weights.ckpt",
                 "EMPTY_DIR": folder / "empty", **shared}  # fmt: skip
        args = [str(files[a]) if a in files else a for a in args]
        fit = ["fit", *preset_args(CONFIGS / "clip.yaml"), "--config", str(SMOKE), *args]
        cases.append({"package": "experiments", "args": fit, "cwd": str(folder)})
    outcomes = run_cases(cases, str(REPO))
    return {case_id: (outcome, folders[case_id]) for case_id, outcome in zip(BAD_INPUT, outcomes, strict=True)}


@pytest.mark.parametrize(("args", "message"), list(BAD_INPUT.values()), ids=list(BAD_INPUT))
def test_bad_input_ends_with_one_line_naming_the_cause(
    args: list[str], message: str, bad_input_results: dict[str, tuple[dict, Path]], request: pytest.FixtureRequest
) -> None:
    outcome, folder = bad_input_results[request.node.callspec.id]
    assert outcome["returncode"] == 2, outcome["stderr"][-2000:]
    assert "Traceback" not in outcome["stderr"] and "usage:" not in outcome["stderr"]
    errors = [line for line in outcome["stderr"].splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], outcome["stderr"][-2000:]
    assert not (folder / "runs").exists() or not list((folder / "runs").rglob("*.ckpt"))
