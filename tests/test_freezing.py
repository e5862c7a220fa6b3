"""model.freeze: a frozen part gets no update, no weight decay, no optimizer state, and keeps its
BatchNorm statistics; a part frozen for N steps trains from step N on; bad names are one line."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch

from common.errors import UserError

from helpers.training import quiet_trainer, small_module, tiny_data


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def changed(before: dict[str, torch.Tensor], module: torch.nn.Module) -> set[str]:
    return {k for k, v in module.state_dict().items() if not torch.equal(v, before[k])}


class AtStep(pl.Callback):
    """Snapshots the vision tower's state and optimizer state before optimizer step ``step``."""

    def __init__(self, step: int) -> None:
        self.step, self.state, self.optimizer_state = step, None, None

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            self.state = snapshot(module.vision_tower)
            params = {id(p) for p in module.vision_tower.parameters()}
            optimizer = trainer.optimizers[0]
            self.optimizer_state = [
                p in optimizer.state for g in optimizer.param_groups for p in g["params"] if id(p) in params
            ]


def test_a_whole_run_freeze_leaves_the_tower_untouched(tmp_path) -> None:
    data = tiny_data()
    module = small_module(vocab_size=data.vocab_size, weight_decay=0.5, freeze={"vision_tower": None})
    vision, text = snapshot(module.vision_tower), snapshot(module.text_tower)
    trainer = quiet_trainer(tmp_path, max_steps=3)
    trainer.fit(module, data)
    assert not changed(vision, module.vision_tower)  # weights and BatchNorm running statistics
    assert any("running_mean" in k for k in vision) and changed(text, module.text_tower)
    in_optimizer = {id(p) for g in trainer.optimizers[0].param_groups for p in g["params"]}
    assert in_optimizer.isdisjoint(id(p) for p in module.vision_tower.parameters())
    assert not module.vision_tower.training and module.text_tower.training


def test_a_part_frozen_for_n_steps_trains_from_step_n(tmp_path) -> None:
    data = tiny_data()
    module = small_module(vocab_size=data.vocab_size, weight_decay=0.5, freeze={"vision_tower": 2})
    before = snapshot(module.vision_tower)
    at_two = AtStep(2)
    trainer = quiet_trainer(tmp_path, max_steps=4, callbacks=[at_two], gradient_clip_val=1.0)
    trainer.fit(module, data)
    assert at_two.state is not None
    assert not {k for k, v in at_two.state.items() if not torch.equal(v, before[k])}  # frozen for steps 0 and 1
    assert at_two.optimizer_state and not any(at_two.optimizer_state)  # AdamW skipped it: no moments, no decay
    assert changed(at_two.state, module.vision_tower)  # steps 2 and 3 trained it, BatchNorm statistics too
    assert {k for k in changed(at_two.state, module.vision_tower) if "running_mean" in k}
    assert module.vision_tower.training


def test_frozen_parts_stay_in_eval_mode_through_train_calls() -> None:
    module = small_module(freeze={"text_tower.blocks.0": None})
    module.train()
    assert not module.text_tower.blocks[0].training and module.text_tower.blocks[1].training
    assert not any(p.requires_grad for p in module.text_tower.blocks[0].parameters())


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"vision_towr": None}, "not a submodule of the model; did you mean vision_tower"),
        ({"vision_tower": 0}, r"must be a number of steps >= 1, or null for the whole run; got 0"),
        ({"text_tower": 1.5}, "got 1.5"),
        ({"text_tower.blocks.0": None, "text_tower": 2}, "names both text_tower.blocks.0 and text_tower, one inside"),
        (
            {"vision_tower": None, "text_tower": None, "terms": None},
            r"model.freeze leaves nothing to train for the whole run: vision_tower \(whole run\), text_tower "
            r"\(whole run\), terms \(whole run\) hold every trainable parameter; leave one part out",
        ),
        (
            {"vision_tower": 5, "text_tower": None, "terms": 3},
            r"leaves nothing to train for its first 3 steps: vision_tower \(5 steps\), text_tower \(whole run\), "
            r"terms \(3 steps\)",
        ),
    ],
)
def test_bad_freeze_specs_are_one_line_errors(spec: dict, message: str) -> None:
    with pytest.raises(UserError, match=message) as error:
        small_module(freeze=spec)
    assert "\n" not in str(error.value)


def test_a_schedule_that_leaves_only_a_temperature_to_train_is_accepted() -> None:
    module = small_module(freeze={"vision_tower": None, "text_tower": None})  # InfoNCE's temperature trains
    assert [name for name, p in module.named_parameters() if p.requires_grad] == ["terms.infonce.logit_scale.log_scale"]


def test_init_from_takes_a_run_directory_and_its_last_checkpoint(tmp_path) -> None:
    """As the analysis' --ckpt: a run directory is its newest checkpoints/last.ckpt."""
    english = small_module()
    checkpoints = tmp_path / "runs" / "clip" / "version_0" / "checkpoints"
    checkpoints.mkdir(parents=True)
    torch.save({"state_dict": english.state_dict()}, checkpoints / "last.ckpt")
    for run in (checkpoints.parent, checkpoints.parent.parent):  # the version, or the run with its versions
        again = small_module(init_from=str(run))
        assert all(torch.equal(v, english.state_dict()[k]) for k, v in again.state_dict().items())
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no checkpoints/last.ckpt under .*empty: pass model.init_from"):
        small_module(init_from=str(tmp_path / "empty"))


def test_init_parts_loads_one_tower_of_a_checkpoint_whose_other_tower_differs(tmp_path) -> None:
    """Chinese-CLIP's start: an English run's image tower beside a text tower of another vocabulary."""
    english = small_module(vocab_size=40)
    with torch.no_grad():
        english.terms["infonce"].logit_scale.log_scale.fill_(3.0)
    torch.save({"state_dict": english.state_dict()}, tmp_path / "en.ckpt")
    with pytest.raises(UserError, match="does not fit the model's towers"):
        small_module(vocab_size=50, init_from=str(tmp_path / "en.ckpt"))
    chinese = small_module(vocab_size=50, init_from=str(tmp_path / "en.ckpt"), init_parts=["vision_tower"])
    assert all(
        torch.equal(v, english.vision_tower.state_dict()[k]) for k, v in chinese.vision_tower.state_dict().items()
    )
    assert chinese.terms["infonce"].logit_scale.log_scale.item() != 3.0  # the temperature belongs to both towers


@pytest.mark.parametrize("parts", [[], ["vision_towr"]])
def test_bad_init_parts_are_refused_at_construction(parts: list[str]) -> None:
    with pytest.raises(UserError, match=r"model.init_parts takes towers among vision_tower, text_tower"):
        small_module(init_parts=parts)
