"""The LightningCLI entry point: ``python -m experiments fit --config <preset>.yaml``.

Every run starts from ``configs/base.yaml`` (trainer, TensorBoard logger, checkpoints), then
applies the given ``--config`` files in order and ``--key value`` overrides. The model is always
``ContrastiveModule``; towers, terms and the datamodule are chosen by ``class_path``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import lightning.pytorch as pl
import yaml
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities import rank_zero_info

from common.errors import UserError
from experiments.budgets import SaveAtSteps, check_eval_steps, evaluate_after_fit
from experiments.checkpointing import SPECIAL_CKPT_PATHS, check_resumable, readable_checkpoint
from experiments.precision import use_float32_without_native_bf16
from variants.module import ContrastiveModule

CONFIGS = Path(__file__).parent / "configs"
SUBCOMMANDS = ("fit", "validate", "test", "predict")
# Where the top-level `embed_dim` goes (a link target cannot also be set by hand: see _linked_by_hand).
EMBED_DIM_TARGETS = (
    "model.vision_tower.init_args.embed_dim",
    "model.text_tower.init_args.embed_dim",
    "model.terms.init_args.embed_dim",  # every term that has the argument (Adversarial)
)


class ParsedOnly(Exception):
    """Raised by ``CLI(parse_only=True)`` once the arguments parsed: nothing is instantiated."""


class CLI(LightningCLI):
    def __init__(self, args: list[str] | None = None, run: bool = True, parse_only: bool = False) -> None:
        self.parse_only = parse_only
        args = sys.argv[1:] if args is None else list(args)
        _check_before_parsing(args)
        base = {"default_config_files": [str(CONFIGS / "base.yaml")]}
        super().__init__(
            ContrastiveModule,
            pl.LightningDataModule,
            subclass_mode_data=True,
            auto_configure_optimizers=False,  # the module owns its AdamW + schedule
            # Parse errors are raised, not printed with the full usage: __main__ prints one line.
            parser_kwargs={"exit_on_error": False} | {sub: dict(base, exit_on_error=False) for sub in SUBCOMMANDS},
            save_config_kwargs={"overwrite": True},
            # The command line itself goes in as None: Lightning warns when given args equal to sys.argv.
            args=None if args == sys.argv[1:] else args,
            run=run,
        )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # The joint embedding size is written once and linked to every part that must agree.
        parser.add_argument(
            "--embed_dim",
            type=int,
            default=128,
            help="Size of the joint image-text embedding space, given to both towers and to any term that takes it.",
        )
        for target in EMBED_DIM_TARGETS:
            parser.link_arguments("embed_dim", target, apply_on="parse")
        # The text tower's vocabulary and context come from the data's tokenizer.
        for attribute in ("vocab_size", "context_length"):
            parser.link_arguments(
                "data",
                f"model.text_tower.init_args.{attribute}",
                compute_fn=lambda data, attribute=attribute: getattr(data, attribute),
                apply_on="instantiate",
            )
        parser.add_argument(
            "--test_after_fit",
            type=bool,
            default=True,
            help="After fit, evaluate the final weights on the test tasks and print the table.",
        )
        parser.add_argument(
            "--validate_after_fit",
            type=bool,
            default=False,
            help="After fit, evaluate the final weights on the whole validation set too (learning rates are chosen on it).",
        )
        parser.add_argument(
            "--eval_steps",
            type=list[int],
            default=[],
            help="Save the weights at these steps and evaluate each after fit as the final weights are: "
            "metrics.json's history (experiments/budgets.py).",
        )

    def before_instantiate_classes(self) -> None:
        if self.parse_only:
            raise ParsedOnly
        # A resumed run takes every weight from its checkpoint: do not read (or require) the
        # model.init_from file again.
        config = self.config.get(self.subcommand, {}) if self.subcommand else self.config
        if config.get("ckpt_path") and config.get("model", {}).get("init_from"):
            config["model"]["init_from"] = None
        use_float32_without_native_bf16(config["trainer"])

    def before_fit(self) -> None:
        steps = check_eval_steps(self.config.fit.get("eval_steps") or [], self.trainer.max_steps)
        if steps:
            self.trainer.callbacks.append(SaveAtSteps(steps))  # type: ignore[attr-defined]  # Lightning sets Trainer.callbacks at run time
        # `--ckpt_path last` resumes from last.ckpt; if that file is unreadable (a crash while the
        # disk was full, a truncated copy), fall back to the newest readable step checkpoint.
        config = self.config_init[self.subcommand]
        if config.get("ckpt_path") == "last" and self.trainer.log_dir is not None:
            resumable = readable_checkpoint(Path(self.trainer.log_dir) / "checkpoints")
            if resumable is not None:
                config["ckpt_path"] = str(resumable)

    def after_fit(self) -> None:
        after = [
            ("validate", self.config.fit.get("validate_after_fit", False)),
            ("test", self.config.fit.get("test_after_fit", True)),
        ]
        stages = [stage for stage, wanted in after if wanted]
        if stages and not self.trainer.interrupted:
            assert isinstance(self.model, ContrastiveModule), "the CLI's model class (not subclass mode)"
            steps = check_eval_steps(self.config.fit.get("eval_steps") or [], self.trainer.max_steps)
            evaluate_after_fit(self.trainer, self.model, self.datamodule, stages, steps)
        checkpoint = getattr(self.trainer.checkpoint_callback, "last_model_path", "") or "(none)"
        log_dir = self.trainer.log_dir  # a collective under DDP: every rank asks
        if log_dir is None:
            return
        rank_zero_info(
            f"\nrun directory: {log_dir}\n"
            f"  checkpoint:  {checkpoint}\n"
            f"  metrics:     {Path(log_dir) / 'metrics.json'}\n"
            f"  TensorBoard: tensorboard --logdir {Path(log_dir).parent}"
        )


def _check_before_parsing(args: list[str]) -> None:
    """What must be refused before LightningCLI parses, read from the command line and the
    --config files in the order the parser applies them: a link target set by hand to another
    value than the top-level embed_dim (jsonargparse fills a link target after parsing and drops
    the given value; the same value, as in a run's own saved config.yaml, is harmless), and a
    --ckpt_path file that is not a checkpoint (LightningCLI reads it while parsing, with a traceback)."""
    embed_dim: object = 128
    by_hand: list[tuple[str, object]] = []  # (where, value)
    ckpt_path: object = None
    targets = {f"--{t}" for t in EMBED_DIM_TARGETS}
    for option, value in [("--config", str(CONFIGS / "base.yaml")), *_options(args)]:
        if option == "--config":
            spec = _read_yaml(value)
            embed_dim = spec.get("embed_dim", embed_dim)
            ckpt_path = spec.get("ckpt_path", ckpt_path)
            model = spec.get("model")
            model = model if isinstance(model, dict) else {}
            for key in ("vision_tower", "text_tower"):
                tower = model.get(key)
                init_args = (tower.get("init_args") or {}) if isinstance(tower, dict) else {}
                if "embed_dim" in init_args:
                    by_hand.append((f"model.{key}.init_args.embed_dim in {value}", init_args["embed_dim"]))
            for i, term in enumerate(model.get("terms") or []):
                if isinstance(term, dict) and "embed_dim" in (term.get("init_args") or {}):
                    by_hand.append((f"model.terms[{i}].init_args.embed_dim in {value}", term["init_args"]["embed_dim"]))
        elif option == "--embed_dim":
            embed_dim = value
        elif option == "--ckpt_path":
            ckpt_path = value
        elif option in targets:
            by_hand.append((option, value))
    conflicting = [where for where, given in by_hand if given is not None and str(given) != str(embed_dim)]
    if conflicting:
        raise UserError(
            f"embed_dim is set once, at the top level (`embed_dim: {embed_dim}` in a config, or --embed_dim), and "
            f"linked to both towers and the terms; remove {', '.join(conflicting)}"
        )
    if isinstance(ckpt_path, str) and ckpt_path not in SPECIAL_CKPT_PATHS:
        check_resumable(ckpt_path, training=args[:1] == ["fit"])


def _options(args: list[str]) -> list[tuple[str, str]]:
    """``--option value`` and ``--option=value`` pairs of ``args``, in order."""
    pairs = []
    for i, arg in enumerate(args):
        if arg.startswith("--") and "=" in arg:
            option, value = arg.split("=", 1)
            pairs.append((option, value))
        elif arg.startswith("--") and i + 1 < len(args) and not args[i + 1].startswith("--"):
            pairs.append((arg, args[i + 1]))
    return pairs


def _read_yaml(path: str) -> dict:
    """A --config file as a mapping; {} when it is missing or not YAML (the parser then says so)."""
    try:
        spec = yaml.safe_load(Path(path).read_text()) if Path(path).is_file() else None
    except (OSError, yaml.YAMLError):
        return {}
    return spec if isinstance(spec, dict) else {}


def validate(args: list[str]) -> None:
    """Parse ``args`` as a run would (keys, types, class paths), building nothing; a mistake
    raises jsonargparse's ArgumentError or a UserError."""
    try:
        CLI(args=args, parse_only=True)
    except ParsedOnly:
        return
