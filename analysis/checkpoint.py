"""Load a checkpoint for analysis: the trained module plus the tokenizer and image transform of
the data it was trained on, rebuilt from the checkpoint alone.

A suite checkpoint records the module's parts (towers, terms) and the datamodule as
``class_path`` configs; both are rebuilt with jsonargparse, as LightningCLI built them, and the
weights loaded strictly. Loading uses ``torch.load(weights_only=True)``: no pickled code runs.
Classes named by the checkpoint are imported only from this suite's packages (or when the user
imported them already), because importing a module named by a file is running its code.
"""

from __future__ import annotations

import importlib
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningDataModule
from lightning.pytorch.cli import instantiate_module

from common.errors import UserError
from common.runs import resolve_checkpoint
from datamodules.tokenizer.base import TextTokenizer, with_state
from variants.module import ContrastiveModule
from variants.weights import fit_problems

TRUSTED_PACKAGES = ("variants.", "datamodules.")


@dataclass
class LoadedCheckpoint:
    """What the analysis needs from one checkpoint."""

    model: ContrastiveModule  # in eval mode, on CPU
    tokenizer: TextTokenizer  # list of texts -> int64 ids [B, L]
    image_transform: Callable[[Any], torch.Tensor]  # PIL image or uint8 [3, H, W] -> float [3, H, W]
    datamodule: LightningDataModule
    path: Path
    name: str  # e.g. "clip/version_0": the run, for result tables
    global_step: int

    @classmethod
    def of(cls, model: ContrastiveModule, datamodule: Any, path: Path, name: str, global_step: int) -> LoadedCheckpoint:
        """A model with the tokenizer and image transform of the data it trains on."""
        return cls(model, datamodule.tokenizer, datamodule.image_transform, datamodule, path, name, global_step)

    @property
    def global_note(self) -> str | None:
        """Why the global embeddings say little, or None: with no term training them (FILIP
        alone) they are the frozen random projections; token-wise scoring is unaffected."""
        if any(term.needs_global for term in self.model.terms.values()):
            return None
        return "no term trains the global embeddings (token-wise FILIP only): measures on them describe untrained projections"

    def normalisation(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The [3, 1, 1] mean and std the image transform normalises with, to show its outputs as pictures."""
        mean, std = getattr(self.image_transform, "mean", None), getattr(self.image_transform, "std", None)
        if mean is None or std is None:
            raise UserError(
                f"the image transform {type(self.image_transform).__name__} has no mean and std: "
                "its outputs cannot be shown as pictures"
            )
        return torch.tensor(mean)[:, None, None], torch.tensor(std)[:, None, None]


def load_checkpoint(path: str | Path) -> LoadedCheckpoint:
    """Rebuild a suite checkpoint (file or run directory) for analysis."""
    path = resolve_checkpoint(path)
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - truncated file, not a torch file, unsafe content: one line
        raise UserError(f"cannot read checkpoint {path}: {type(error).__name__}: {error}".splitlines()[0]) from None
    for key in ("state_dict", "hyper_parameters", "datamodule_hyper_parameters"):
        if key not in checkpoint:
            raise UserError(
                f"checkpoint {path} has no '{key}': analysis needs a checkpoint written by "
                "`python -m experiments fit` (it records the towers, terms and data it was trained with)"
            )
    # The run's evaluators are not rebuilt: the analysis never runs them, and one from the user's
    # own package would otherwise have to be imported to read the weights.
    model_config = {k: v for k, v in checkpoint["hyper_parameters"].items() if k not in ("_instantiator", "evaluators")}
    _require_class_configs(model_config, path)
    _import_trusted(_class_paths(model_config))
    model = _instantiate(ContrastiveModule, model_config, path, "model")
    _load_weights(model, checkpoint["state_dict"], path)
    model.eval().requires_grad_(False)

    data_config = {k: v for k, v in checkpoint["datamodule_hyper_parameters"].items() if k != "_instantiator"}
    _import_trusted(_class_paths(data_config))
    _restore_tokenizer(data_config, checkpoint)
    datamodule = _instantiate(LightningDataModule, data_config, path, "datamodule")
    for attribute in ("tokenizer", "image_transform"):
        if not hasattr(datamodule, attribute):
            raise UserError(
                f"{type(datamodule).__name__} (from {path}) has no '{attribute}'; a datamodule used for "
                "analysis must expose `tokenizer` and `image_transform`"
            )
    return LoadedCheckpoint.of(
        model,
        datamodule,
        path,
        _run_name(path),
        int(checkpoint.get("global_step", 0)),
    )


def _require_class_configs(config: dict, path: Path) -> None:
    """The parts must be recorded as {class_path, init_args}: a bare string would make jsonargparse
    import whatever module it names, past the trusted-package check. The weights come from the
    checkpoint, so a pretrained backbone or ``init_from`` file is not loaded (nor looked for) again."""
    parts = [config.get("vision_tower"), config.get("text_tower"), *(config.get("terms") or [])]
    if not config.get("terms") or not all(isinstance(part, dict) and "class_path" in part for part in parts):
        raise UserError(
            f"checkpoint {path} does not record its towers and terms as class_path/init_args configs; "
            "analysis needs a checkpoint written by `python -m experiments fit`"
        )
    for tower in (config["vision_tower"], config["text_tower"]):
        # A timm backbone's pretrained=True would download; an HFTextTower's pretrained directory
        # holds its architecture (its config.json), so it is read again: the weights still come
        # from the checkpoint, and a directory gone is a one-line error naming it.
        if isinstance((tower.get("init_args") or {}).get("pretrained"), bool):
            tower["init_args"] = dict(tower["init_args"], pretrained=False)
    config["init_from"] = None


def _restore_tokenizer(data_config: dict, checkpoint: dict) -> None:
    """Give the datamodule's tokenizer config the state the datamodule saved with the checkpoint
    (Lightning stores ``datamodule.state_dict()`` under its class name; ours hold ``{"tokenizer":
    tokenizer.state_dict()}``), so a trained BPE is rebuilt from the checkpoint even where its file
    is gone or was retrained since."""
    saved = checkpoint.get(str(data_config.get("_class_path", "")).rpartition(".")[2])
    state = saved.get("tokenizer") if isinstance(saved, dict) else None
    config = data_config.get("tokenizer")
    if state and isinstance(config, dict) and "class_path" in config:
        data_config["tokenizer"] = with_state(config, state)


def _instantiate(cls: type, config: dict, path: Path, what: str) -> Any:
    try:
        with warnings.catch_warnings():  # Lightning's own call of a jsonargparse API it deprecated
            warnings.filterwarnings("ignore", message=".*instantiate_classes.*")
            return instantiate_module(cls, config)
    except UserError:
        raise
    except Exception as error:  # noqa: BLE001 - whatever the recorded part's constructor raises, in one line
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserError(f"cannot rebuild the {what} recorded in {path}: {message}") from None


def _load_weights(model: torch.nn.Module, state_dict: dict, path: Path) -> None:
    problems = fit_problems(model.state_dict(), state_dict)
    if problems:
        raise UserError(f"checkpoint {path} does not match the model it describes: {'; '.join(problems)}")
    model.load_state_dict(state_dict, strict=True)


def _class_paths(config: Any) -> list[str]:
    """Every class path in a nested config (``class_path`` and Lightning's ``_class_path``)."""
    found = []
    if isinstance(config, dict):
        for key, value in config.items():
            if key in ("class_path", "_class_path") and isinstance(value, str):
                found.append(value)
            else:
                found += _class_paths(value)
    elif isinstance(config, list):
        for value in config:
            found += _class_paths(value)
    return found


def _import_trusted(class_paths: list[str]) -> None:
    for class_path in class_paths:
        module = class_path.rpartition(".")[0]
        if module in sys.modules:
            continue
        if not class_path.startswith(TRUSTED_PACKAGES):
            raise UserError(
                f"the checkpoint names {class_path}, outside this suite's packages; if you trust the "
                f"checkpoint, `import {module}` before loading it (in Python), so it is not imported blindly"
            )
        importlib.import_module(module)


def _run_name(path: Path) -> str:
    """runs/<name>/version_<n>/checkpoints/x.ckpt -> "<name>/version_<n>" (a grid's
    runs/<grid>/<run>/checkpoints/x.ckpt -> "<grid>/<run>"); else the file stem."""
    if path.parent.name == "checkpoints":
        return f"{path.parent.parent.parent.name}/{path.parent.parent.name}"
    return path.stem


def run_directory(path: Path) -> Path | None:
    """The run directory of a checkpoint written by a run (``<run>/checkpoints/x.ckpt``)."""
    return path.parent.parent if path.parent.name == "checkpoints" else None
