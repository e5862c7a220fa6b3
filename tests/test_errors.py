"""User mistakes become one clear UserError (the command-line cases run the real entry point in
test_cli.py; these check the same contracts in-process, fast)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from common.errors import UserError, exit_on_user_error, one_line, require_at_least
from datamodules.image_text import ImageTextDataModule
from datamodules.shapesworld import ShapesWorldDataModule
from datamodules.tokenizer import BPETokenizer, CLIPTokenizer, WordTokenizer
from experiments.checkpointing import check_resumable


def test_a_user_error_wrapped_by_a_library_is_still_one_line(capsys) -> None:
    def main() -> None:
        try:
            raise UserError("data.init_args.batch_size must be >= 1, got 0")
        except UserError as error:  # what jsonargparse does to a datamodule's error
            raise ValueError("Does not validate against any of the Union subtypes") from error

    with pytest.raises(SystemExit) as exit_info:
        exit_on_user_error(main)
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == "error: data.init_args.batch_size must be >= 1, got 0\n"


def test_other_errors_keep_their_traceback() -> None:
    with pytest.raises(ZeroDivisionError):
        exit_on_user_error(lambda: 1 / 0)


def test_one_line_keeps_a_leading_minus_and_drops_bullets() -> None:
    assert one_line(UserError("-1 is not a count")) == "-1 is not a count"
    assert one_line(ValueError("Errors:\n  - first reason\n  - second reason")) == "first reason second reason"


def test_require_at_least_names_every_offending_key() -> None:
    require_at_least("data.init_args", {"batch_size": (1, 1), "num_workers": (0, 0)})
    with pytest.raises(UserError) as error:
        require_at_least("data.init_args", {"batch_size": (0, 1), "num_workers": (-1, 0), "image_size": (1.5, 1)})
    assert str(error.value) == (
        "data.init_args.batch_size must be >= 1, got 0; data.init_args.num_workers must be >= 0, got -1"
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"batch_size": 0}, "data.init_args.batch_size must be >= 1, got 0"),
        ({"eval_batch_size": -2}, "data.init_args.eval_batch_size must be >= 1, got -2"),
        ({"train_samples": 0}, "data.init_args.train_samples must be >= 1"),
        ({"val_samples": 0}, "data.init_args.val_samples must be >= 1"),
        ({"test_samples": 0}, "data.init_args.test_samples must be >= 1"),
        ({"num_workers": -1}, "data.init_args.num_workers must be >= 0"),
        ({"image_size": 0}, "data.init_args.image_size must be >= 1"),
        ({"min_objects": 3, "max_objects": 2}, "1 <= min_objects <= max_objects <= 9, got 3, 2"),
        ({"max_objects": 10}, "1 <= min_objects <= max_objects <= 9, got 1, 10"),
        ({"context_length": 2}, "context_length must be >= 3"),
    ],
)
def test_shapesworld_refuses_impossible_settings_when_built(kwargs: dict, message: str) -> None:
    with pytest.raises(UserError, match=message):
        ShapesWorldDataModule(**kwargs)


def test_image_text_data_refuses_impossible_counts_when_built(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="data.init_args.batch_size must be >= 1, got 0"):
        ImageTextDataModule(WordTokenizer(["a"], 8), str(tmp_path / "train.csv"), batch_size=0)
    with pytest.raises(UserError, match="data.init_args.shuffle_buffer must be >= 1, got 0"):
        ImageTextDataModule(WordTokenizer(["a"], 8), str(tmp_path / "train.csv"), shuffle_buffer=0)


@pytest.mark.parametrize(
    "build",
    [lambda: WordTokenizer(["a"], 1), lambda: CLIPTokenizer(context_length=2), lambda: BPETokenizer("x.json", 0)],
    ids=["word", "clip", "bpe"],
)
def test_every_tokenizer_needs_room_for_start_word_and_end(build) -> None:
    with pytest.raises(UserError, match="context_length must be >= 3 to hold the start token, one word and the end"):
        build()


class _Pickled:  # not a tensor or plain data: torch.load(weights_only=True) refuses it
    pass


def test_a_checkpoint_to_resume_from_is_checked_before_the_trainer_reads_it(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no such file"):
        check_resumable(tmp_path / "missing.ckpt")
    good = {"state_dict": {"w": torch.zeros(2)}, "optimizer_states": [], "loops": {}, "global_step": 3}
    torch.save(good, tmp_path / "good.ckpt")
    check_resumable(tmp_path / "good.ckpt")
    whole = (tmp_path / "good.ckpt").read_bytes()
    (tmp_path / "truncated.ckpt").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(UserError, match="not a readable checkpoint"):
        check_resumable(tmp_path / "truncated.ckpt")
    torch.save(dict(good, extra=_Pickled()), tmp_path / "code.ckpt")
    with pytest.raises(UserError, match=r"refused by torch.load\(weights_only=True\)"):
        check_resumable(tmp_path / "code.ckpt")
    torch.save({"state_dict": good["state_dict"]}, tmp_path / "weights.ckpt")
    with pytest.raises(UserError, match="use --model.init_from PATH"):
        check_resumable(tmp_path / "weights.ckpt")


def test_bf16_runs_switch_to_float32_only_on_a_cpu_without_native_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    from experiments.precision import cpu_has_native_bf16, cpu_precision

    zen3 = "processor\t: 0\nflags\t\t: fpu sse avx avx2 fma\n"
    sapphire_rapids = "flags\t\t: fpu avx2 avx512f avx512_bf16 amx_bf16\n"
    graviton3 = "Features\t: fp asimd sve bf16 i8mm\n"
    assert not cpu_has_native_bf16(zen3) and cpu_has_native_bf16(sapphire_rapids) and cpu_has_native_bf16(graviton3)
    cpu = {"precision": "bf16-mixed", "accelerator": "cpu"}
    assert cpu_precision(cpu, zen3) == "32-true"
    assert cpu_precision(cpu, sapphire_rapids) is None
    assert cpu_precision({"precision": "32-true", "accelerator": "cpu"}, zen3) is None
    assert cpu_precision({"precision": "bf16-mixed", "accelerator": "gpu"}, zen3) is None
    monkeypatch.setenv("CLIP_VARIANTS_KEEP_BF16", "1")
    assert cpu_precision(cpu, zen3) is None


def test_embed_dim_by_hand_is_refused_only_when_it_differs_and_the_last_ckpt_path_wins(tmp_path: Path) -> None:
    import yaml

    from experiments.cli import _check_before_parsing

    saved = tmp_path / "config.yaml"  # a run's own saved config keeps a term's linked embed_dim
    saved.write_text(
        yaml.safe_dump({"embed_dim": 64, "model": {"terms": [{"class_path": "t", "init_args": {"embed_dim": 64}}]}})
    )
    _check_before_parsing(["fit", "--config", str(saved)])
    with pytest.raises(UserError, match=r"remove model.terms\[0\].init_args.embed_dim in"):
        _check_before_parsing(["fit", "--config", str(saved), "--embed_dim", "32"])
    with pytest.raises(UserError, match="remove --model.vision_tower.init_args.embed_dim"):
        _check_before_parsing(["fit", "--model.vision_tower.init_args.embed_dim", "16"])
    (tmp_path / "broken.yaml").write_text("model: [unclosed")
    _check_before_parsing(["fit", "--config", str(tmp_path / "broken.yaml")])  # left to the parser's own message
    resume = tmp_path / "resume.yaml"
    resume.write_text(yaml.safe_dump({"ckpt_path": str(tmp_path / "missing.ckpt")}))
    torch.save({"state_dict": {}, "optimizer_states": [], "loops": {}}, tmp_path / "good.ckpt")
    _check_before_parsing(["fit", "--config", str(resume), "--ckpt_path", str(tmp_path / "good.ckpt")])
    with pytest.raises(UserError, match="missing.ckpt: no such file"):
        _check_before_parsing(["fit", "--ckpt_path", str(tmp_path / "good.ckpt"), "--config", str(resume)])
    torch.save({"state_dict": {}}, tmp_path / "weights.ckpt")  # enough to test, not to resume
    _check_before_parsing(["test", "--ckpt_path", str(tmp_path / "weights.ckpt")])
    with pytest.raises(UserError, match="not a training checkpoint"):
        _check_before_parsing(["fit", "--ckpt_path", str(tmp_path / "weights.ckpt")])
