"""Evaluators as declared parts (common.evaluation, variants/evaluation/): every evaluator file is
discovered and declared by the base preset, computes its metrics from records alone (perfect and
broken toy models), honours prefix/splits/every_n_steps, and the refactor left every metric of a
run as it was. The run-level checks (history, TensorBoard, a benchmark of one's own) are at the
end; they run ``python -m experiments`` as a user does."""

from __future__ import annotations

import inspect
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from lightning.pytorch.trainer.states import TrainerFn

import variants.evaluation
from common.errors import UserError
from common.evaluation import EvalTask, Evaluator, TaskContext, TaskRecords, missing_contract
from common.records import Encoded
from variants.evaluation import default_evaluators

from helpers import CONFIGS
from helpers.cli import preset_args, run_cli
from helpers.discovery import concrete_subclasses

DIM = 32


EVALUATORS = concrete_subclasses(Evaluator, variants.evaluation)  # a new file is tested at once


class ToyScoring:
    """The model's face to evaluators (common.evaluation.Scoring) with cosine scoring; a text's
    embedding is the one-hot of its first token id."""

    device = torch.device("cpu")
    scoring_needs: frozenset[str] = frozenset()
    scores_pairs = False

    def score(self, images: Encoded, texts: Encoded) -> tuple[torch.Tensor, torch.Tensor]:
        cosine = images.image @ texts.text.T
        return cosine, cosine

    def zeroshot_scores(self, images: Encoded, prompts: Encoded, templates: int) -> torch.Tensor:
        classifier = F.normalize(prompts.text.view(-1, templates, prompts.text.shape[-1]).mean(1), dim=-1)
        return images.image @ classifier.T

    def text_record(self, token_ids: torch.Tensor, tokens: bool = False) -> Encoded:
        return Encoded(text=_one_hot(token_ids[:, 0]))


def _one_hot(keys: torch.Tensor) -> torch.Tensor:
    return F.one_hot(keys.long(), DIM).float()


def perfect_context(kind: str, broken: bool = False) -> TaskContext:
    """A task of ``kind`` whose images and texts a perfect model embeds alike (``broken``: each
    image embeds as the next key's text, so the answers are wrong)."""
    n = 12
    keys = torch.arange(n) % 6 if kind in ("zeroshot", "linear_probe") else torch.arange(n)
    image_keys = keys + 1 if broken else keys
    tokens = torch.stack([keys, torch.zeros(n, dtype=torch.long)], 1)
    records = TaskRecords(Encoded(image=_one_hot(image_keys)), Encoded(text=_one_hot(keys)), keys, tokens)
    if kind == "crosslingual":  # two items per scene: its two captions, each with the image
        scene = torch.arange(n) // 2
        # broken: each target-language caption embeds as the next scene's
        text = _one_hot((scene + torch.arange(n) % 2) % (n // 2) if broken else scene)
        target = torch.arange(n) % 2 == 1  # the second caption of each scene is in the target language
        records = TaskRecords(Encoded(image=_one_hot(scene)), Encoded(text=text), scene, scene[:, None], target)
    task = {
        "zeroshot": EvalTask(
            "zeroshot/toy_val/shape", "zeroshot", language="en", prompts=torch.arange(6).view(6, 1, 1)
        ),
        "retrieval": EvalTask("retrieval/toy_val", "retrieval", language="en"),
        "crosslingual": EvalTask("crosslingual/toy_val", "crosslingual", language="en", target_language="zh"),
        "linear_probe": EvalTask("linear_probe/toy_val", "linear_probe", fit_task=1),
    }[kind]
    fit = TaskRecords(Encoded(image=_one_hot(torch.arange(60) % 6)), Encoded(text=None), torch.arange(60) % 6, tokens)
    return TaskContext(task, records, ToyScoring(), {0: records, 1: fit})


def test_the_built_in_evaluators_are_discovered_and_the_base_preset_declares_the_defaults() -> None:
    """A new evaluator file is discovered (and tested below) without being registered anywhere;
    the base preset declares exactly what a module built in Python runs by default."""
    assert {c.__name__ for c in EVALUATORS} >= {"ZeroShot", "Retrieval", "ModalityGap", "CrossLingual", "LinearProbe"}
    assert {type(e) for e in default_evaluators()} <= set(EVALUATORS)
    base = yaml.safe_load((CONFIGS / "base.yaml").read_text())
    declared = [entry["class_path"] for entry in base["model"]["evaluators"]]
    assert declared == [f"variants.evaluation.{type(e).__name__}" for e in default_evaluators()]
    for cls in EVALUATORS:  # the paper (or the definition) and what it logs, as terms do
        assert cls.kinds and "Logs" in inspect.getmodule(cls).__doc__, cls


@pytest.mark.parametrize("cls", EVALUATORS, ids=lambda c: c.__name__)
def test_every_evaluator_scores_a_perfect_model_perfectly_and_a_broken_one_worse(cls: type[Evaluator]) -> None:
    for kind in cls.kinds:
        metrics = cls().evaluate(perfect_context(kind))
        assert metrics, (cls, kind)
        first = cls.default_prefix or kind
        for name, value in metrics.items():
            assert name.startswith(f"{first}/toy_val/"), name
            perfect = 0.0 if name.endswith("modality_gap") else 1.0
            assert float(value) == pytest.approx(perfect, abs=1e-6), (name, float(value))
        broken = cls().evaluate(perfect_context(kind, broken=True))
        assert broken.keys() == metrics.keys()
        assert any(abs(float(broken[k]) - float(metrics[k])) > 0.1 for k in metrics), (kind, broken)
        renamed = cls(prefix="mine").evaluate(perfect_context(kind))
        assert sorted(renamed) == sorted("mine/" + name.split("/", 1)[1] for name in metrics)


def test_a_broken_model_scores_what_the_formula_says() -> None:
    """Each image embedded as the next key's text: zero-shot top-1 is 0 (classes 0-4 go to the
    next class, class 5 scores 0 everywhere and ties go to class 0), retrieval finds nothing right,
    and the centres of images (keys 1..12) and texts (0..11) are sqrt(2) / 12 apart."""
    (top1,) = variants.evaluation.ZeroShot().evaluate(perfect_context("zeroshot", broken=True)).values()
    assert float(top1) == 0.0
    recall = variants.evaluation.Retrieval().evaluate(perfect_context("retrieval", broken=True))
    assert [float(v) for v in recall.values()] == [0.0, 0.0]
    gap = variants.evaluation.ModalityGap().evaluate(perfect_context("retrieval", broken=True))
    assert float(next(iter(gap.values()))) == pytest.approx(math.sqrt(2) / 12, abs=1e-6)


def test_an_evaluator_runs_in_its_splits_and_during_fit_only_at_its_steps() -> None:
    every = variants.evaluation.ZeroShot(splits=["val"], every_n_steps=100)
    assert every.due("val", 200, during_fit=True) and not every.due("val", 150, during_fit=True)
    assert every.due("val", 150, during_fit=False)  # validate after fit: always
    assert not every.due("test", 200, during_fit=False)
    assert variants.evaluation.Retrieval().due("test", 7, during_fit=False)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"splits": ["train"]}, "splits takes some of val, test"),
        ({"splits": []}, "splits takes some of val, test"),
        ({"every_n_steps": 0}, "every_n_steps must be a positive number of steps"),
        ({"prefix": "a/b"}, "prefix is one word without '/'"),
    ],
)
def test_bad_evaluator_settings_are_named(kwargs: dict, message: str) -> None:
    with pytest.raises(UserError, match=message):
        variants.evaluation.ZeroShot(**kwargs)


def test_tasks_must_say_what_their_kind_needs() -> None:
    with pytest.raises(UserError, match="needs prompts"):
        EvalTask("zeroshot/x_val/y", "zeroshot")
    with pytest.raises(UserError, match="needs target_language"):
        EvalTask("crosslingual/x_val", "crosslingual", language="en")
    with pytest.raises(UserError, match="unknown kind 'classify'"):
        EvalTask("x", "classify")  # type: ignore[arg-type]


def test_the_datamodule_contract_names_what_is_missing() -> None:
    from datamodules.shapesworld import ShapesWorldDataModule

    assert missing_contract(ShapesWorldDataModule(train_samples=8, num_workers=0)) == []
    assert missing_contract(object()) == [
        "tokenizer", "image_transform", "provides_views", "provides_text_view", "provides_mlm", "eval_tasks",
    ]  # fmt: skip


def test_the_module_refuses_what_is_not_an_evaluator() -> None:
    from helpers.training import small_module

    with pytest.raises(UserError, match="model.evaluators takes evaluators"):
        small_module(evaluators=["zeroshot"])


def _module_in_a_pass(evaluators: list[Evaluator], tasks: list[EvalTask], fn: TrainerFn, step: int):
    """A small module inside a fake trainer's evaluation pass, its logs collected."""
    from types import SimpleNamespace

    from helpers.training import small_module

    module = small_module(evaluators=evaluators)
    module._trainer = SimpleNamespace(  # type: ignore[assignment]
        world_size=1, global_step=step, state=SimpleNamespace(fn=fn),
        datamodule=SimpleNamespace(eval_tasks=lambda stage: tasks),
    )  # fmt: skip
    logged: dict = {}
    module.log = lambda name, value, **kwargs: logged.__setitem__(name, float(value))  # type: ignore[method-assign]
    return module, logged


def test_two_evaluators_logging_one_name_are_refused_and_a_pass_without_a_due_one_encodes_nothing() -> None:
    task = EvalTask("retrieval/x_test", "retrieval")
    context = perfect_context("retrieval")
    outputs = {"image": context.records.images.image, "text": context.records.texts.text,
               "label": context.records.labels, "task": torch.zeros(12, dtype=torch.long),
               "index": torch.arange(12), "tokens": context.records.tokens}  # fmt: skip
    twice = [variants.evaluation.Retrieval(), variants.evaluation.Retrieval()]
    module, _ = _module_in_a_pass(twice, [task], TrainerFn.TESTING, 0)
    module._eval_outputs = {k: [v] for k, v in outputs.items()}
    with pytest.raises(UserError, match="logs retrieval/x_test/i2t_R@1, which another evaluator of this run logs"):
        module._evaluate("test")
    module, logged = _module_in_a_pass(
        [variants.evaluation.Retrieval(), variants.evaluation.Retrieval(prefix="again")], [task], TrainerFn.TESTING, 0
    )
    module._eval_outputs = {k: [v] for k, v in outputs.items()}
    module._evaluate("test")
    assert logged["retrieval/x_test/i2t_R@1"] == logged["again/x_test/i2t_R@1"] == 1.0

    module, _ = _module_in_a_pass([variants.evaluation.Retrieval(every_n_steps=100)], [task], TrainerFn.FITTING, 50)
    module._start_evaluation("val")
    batch = {"image": torch.zeros(2, 3, 32, 32), "text": torch.ones(2, 8, dtype=torch.long), "task": torch.zeros(2),
             "index": torch.arange(2), "label": torch.zeros(2)}  # fmt: skip
    module.validation_step(batch, 0)
    assert not module._eval_outputs  # step 50 of every 100: nothing to encode
    module, _ = _module_in_a_pass([variants.evaluation.Retrieval(every_n_steps=100)], [task], TrainerFn.FITTING, 100)
    module._start_evaluation("val")
    module.validation_step(batch, 0)
    assert module._eval_outputs["image"][0].shape == (2, 16)


# ---- runs ---------------------------------------------------------------------------------------

# The test metrics of `fit --config clip.yaml --config smoke.yaml --trainer.precision 32-true`
# computed by the module before evaluators were parts (commit 9448808, Intel Xeon with AMX): the
# refactor must leave every name and value as it was.
PINNED = {
    "geometry/shapesworld_test/modality_gap": 1.3061827421188354,
    "retrieval/shapesworld_test/i2t_R@1": 0.125,
    "retrieval/shapesworld_test/t2i_R@1": 0.25,
    "zeroshot/shapesworld_test/color/top1": 0.125,
    "zeroshot/shapesworld_test/color_shape_heldout/top1": 0.0,
    "zeroshot/shapesworld_test/color_shape_seen/top1": 0.0,
    "zeroshot/shapesworld_test/count/top1": 0.375,
    "zeroshot/shapesworld_test/shape/top1": 0.375,
}


@pytest.mark.cli
def test_declared_evaluators_log_a_history_at_their_steps_and_leave_the_default_metrics_as_they_were(
    tmp_path: Path,
) -> None:
    """ZeroShot declared a second time with its own prefix and every_n_steps 4, validation every 2
    steps of 8: metrics.json's history holds the default metrics at 2, 4, 6, 8 and the declared
    ones at 4 and 8 only, TensorBoard the same curve; a trainer that does not validate at those
    steps is refused before training; the default metrics are those pinned."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from analysis.compare import read_runs

    common = ["fit", *preset_args(CONFIGS / "clip.yaml"), "--config", str(CONFIGS / "smoke.yaml")]
    every = ["--model.evaluators+=variants.evaluation.ZeroShot", "--model.evaluators.init_args.prefix", "every4",
             "--model.evaluators.init_args.every_n_steps", "4"]  # fmt: skip
    run = run_cli(*common, "--trainer.precision", "32-true", cwd=tmp_path / "pinned")
    assert run.returncode == 0, run.stderr[-3000:]
    (run_dir,) = (tmp_path / "pinned" / "runs").glob("*/version_0")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert {k: metrics[k] for k in PINNED} == pytest.approx(PINNED, abs=1e-5)
    assert {k for k in metrics if "_test/" in k} == set(PINNED)  # no metric added or lost

    run = run_cli(*common, "--trainer.max_steps", "8", "--trainer.val_check_interval", "2", *every,
                  cwd=tmp_path / "every")  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    (run_dir,) = (tmp_path / "every" / "runs").glob("*/version_0")
    history = json.loads((run_dir / "metrics.json").read_text())["history"]
    assert sorted(history, key=int) == ["2", "4", "6", "8"]
    curve = "every4/shapesworld_val/shape/top1"
    assert [step for step in sorted(history, key=int) if curve in history[step]] == ["4", "8"]
    assert all("zeroshot/shapesworld_val/shape/top1" in history[step] for step in history)
    for step in ("4", "8"):  # the declared copy computes what the default one does
        assert history[step][curve] == history[step]["zeroshot/shapesworld_val/shape/top1"]
    events = EventAccumulator(str(run_dir)).Reload()
    # Lightning logs a validation pass inside fit at the index of the batch before it (global step - 1)
    assert [e.step + 1 for e in events.Scalars(curve)] == [4, 8]
    assert [e.value for e in events.Scalars(curve)] == pytest.approx([history["4"][curve], history["8"][curve]])
    assert {"health/grad_norm/vision_tower", "health/param_norm/text_tower"} <= set(events.Tags()["scalars"])
    (curves,) = read_runs(tmp_path / "every" / "runs").values()  # analysis compare: the history's steps
    assert curves[curve] == [(4, history["4"][curve]), (8, history["8"][curve])]

    refused = run_cli(*common, "--trainer.val_check_interval", "3", *every, cwd=tmp_path / "refused")
    assert refused.returncode == 2
    assert "error: evaluator ZeroShot runs every 4 steps" in refused.stderr
    assert "set trainer.val_check_interval to 4" in refused.stderr


@pytest.mark.cli
def test_a_clip_benchmark_folder_evaluates_during_training_and_after_as_the_analysis_does(tmp_path: Path) -> None:
    """A CLIP_benchmark wds folder (tar shards, classnames.txt, "{c}" templates) declared as a
    SuiteEvaluator: logged at the validation pass of step 4 (history) and by the test pass
    (top level), equal to ``python -m analysis zeroshot --suite clip_benchmark:DIR`` on the final
    checkpoint, which loads although it names the evaluator."""
    from analysis.__main__ import run

    from helpers.wds_folders import shape_members, wds_folder

    members, _, _ = shape_members()
    root = wds_folder(tmp_path / "shapes", members, shards=2)
    fit = run_cli("fit", *preset_args(CONFIGS / "clip.yaml"), "--config", str(CONFIGS / "smoke.yaml"),
                  "--trainer.precision", "32-true", "--model.evaluators+=analysis.evaluators.SuiteEvaluator",
                  "--model.evaluators.init_args.suites", f"[clip_benchmark:{root}]", cwd=tmp_path / "run")  # fmt: skip
    assert fit.returncode == 0, fit.stderr[-3000:]
    (run_dir,) = (tmp_path / "run" / "runs").glob("*/version_0")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    names = ("acc1", "acc5", "mean_per_class_recall")
    during = {name: metrics["history"]["4"][f"benchmark/shapes/{name}"] for name in names}
    after = {name: metrics[f"benchmark/shapes/{name}"] for name in names}
    assert "zeroshot/shapesworld_test/shape/top1" in metrics  # the default evaluators still ran
    run(["zeroshot", "--ckpt", str(run_dir / "checkpoints" / "last.ckpt"), "--suite", f"clip_benchmark:{root}",
         "--no-linear-probe", "--out", str(tmp_path / "out")])  # fmt: skip
    (record,) = json.loads((tmp_path / "out" / "zeroshot.json").read_text())["records"]
    analysed = {name: record["metrics"][name] for name in names}
    assert after == pytest.approx(analysed, abs=1e-6) and during == pytest.approx(analysed, abs=1e-6)
    missing = run_cli("fit", *preset_args(CONFIGS / "clip.yaml"), "--config", str(CONFIGS / "smoke.yaml"),
                      "--model.evaluators+=analysis.evaluators.SuiteEvaluator", "--model.evaluators.init_args.suites",
                      f"[clip_benchmark:{tmp_path / 'nowhere'}]", cwd=tmp_path / "missing")  # fmt: skip
    assert missing.returncode == 2 and "nowhere" in missing.stderr.splitlines()[-1]  # at fit start, one line
    assert "Epoch 0" not in missing.stderr  # before any training step
