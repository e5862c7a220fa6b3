"""The LightningCLI entry point: ``python -m experiments fit --config <preset>.yaml``.

Every run starts from ``configs/base.yaml`` (trainer, TensorBoard logger, checkpoints), then
applies the given ``--config`` files in order and ``--key value`` overrides. The model is always
``ContrastiveModule``; towers, terms and the datamodule are chosen by ``class_path``.
"""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities import rank_zero_info

from experiments.checkpointing import readable_checkpoint
from variants.module import ContrastiveModule

CONFIGS = Path(__file__).parent / "configs"
SUBCOMMANDS = ("fit", "validate", "test", "predict")


class ParsedOnly(Exception):
    """Raised by ``CLI(parse_only=True)`` once the arguments parsed: nothing is instantiated."""


class CLI(LightningCLI):
    def __init__(self, args: list[str] | None = None, run: bool = True, parse_only: bool = False) -> None:
        self.parse_only = parse_only
        base = {"default_config_files": [str(CONFIGS / "base.yaml")]}
        super().__init__(
            ContrastiveModule,
            pl.LightningDataModule,
            subclass_mode_data=True,
            auto_configure_optimizers=False,  # the module owns its AdamW + schedule
            # Parse errors are raised, not printed with the full usage: __main__ prints one line.
            parser_kwargs={"exit_on_error": False} | {sub: dict(base, exit_on_error=False) for sub in SUBCOMMANDS},
            save_config_kwargs={"overwrite": True},
            args=args,
            run=run,
        )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
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

    def before_instantiate_classes(self) -> None:
        if self.parse_only:
            raise ParsedOnly
        # A resumed run takes every weight from its checkpoint: do not read (or require) the
        # model.init_from file again.
        config = self.config.get(self.subcommand, {}) if self.subcommand else self.config
        if config.get("ckpt_path") and config.get("model", {}).get("init_from"):
            config["model"]["init_from"] = None

    def before_fit(self) -> None:
        # `--ckpt_path last` resumes from last.ckpt; if that file is unreadable (a crash while the
        # disk was full, a truncated copy), fall back to the newest readable step checkpoint.
        config = self.config_init[self.subcommand]
        if config.get("ckpt_path") == "last" and self.trainer.log_dir is not None:
            resumable = readable_checkpoint(Path(self.trainer.log_dir) / "checkpoints")
            if resumable is not None:
                config["ckpt_path"] = str(resumable)

    def after_fit(self) -> None:
        if self.config.fit.get("test_after_fit", True) and not self.trainer.interrupted:
            self.trainer.test(self.model, datamodule=self.datamodule, verbose=True)
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


def validate(args: list[str]) -> None:
    """Parse ``args`` as a run would (keys, types, class paths), building nothing; a mistake
    raises jsonargparse's ArgumentError or a UserError."""
    try:
        CLI(args=args, parse_only=True)
    except ParsedOnly:
        return
