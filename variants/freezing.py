"""Freeze a tower (or any submodule) for the first N steps or for the whole run.

Locked-image tuning (LiT, Zhai et al. 2022) trains the text tower against a frozen pretrained
image tower; Chinese-CLIP (Yang et al. 2022, section 3.1) does so in its first stage and unlocks
everything in the second. ``ContrastiveModule(freeze={...})`` writes the schedule in YAML:

    model:
      freeze:
        vision_tower: null    # the whole run (LiT; Chinese-CLIP's stage 1)
        text_tower.blocks.0: 500   # the first 500 optimizer steps, then trained

A frozen part is not trained and not changed: no optimizer update, no weight decay (AdamW skips
a parameter without a gradient: no moment is even created), dropout off and BatchNorm running
statistics held (the part runs in eval mode). Two mechanisms, by how long:

- For the whole run its parameters stop requiring gradients before the optimizer and DDP exist:
  they are left out of both, and no backward pass runs through the part (LiT's saving).
- For N steps its gradients are computed and dropped before each step (before clipping, so the
  gradient norm excludes them) until step N. The part keeps ``requires_grad`` because DDP
  registers only the parameters that require gradients when it wraps the model: a part switched
  back on later would never be averaged across processes. The price is its backward pass; a
  separate stage-1 run with a whole-run freeze (what chinese_clip.yaml does) saves it.

A schedule that leaves no parameter to train at some step (every trainable part frozen) is refused
when the model is built.
"""

from __future__ import annotations

import difflib

from torch import nn

from common.errors import UserError


class FreezeSchedule:
    """Which submodules of ``model`` are frozen at each step, and the hooks that keep them so.

    Args:
        model: the module whose submodules are named (the ContrastiveModule).
        spec: submodule name (dotted, as in ``named_modules``) -> number of optimizer steps it stays
            frozen, or None for the whole run.
    """

    def __init__(self, model: nn.Module, spec: dict[str, int | None]) -> None:
        names = dict(model.named_modules())
        self.parts: dict[str, tuple[nn.Module, int | None]] = {}
        for name, steps in spec.items():
            if name not in names or not name:
                close = difflib.get_close_matches(name, [n for n in names if n], n=3)
                hint = f"did you mean {', '.join(close)}?" if close else "e.g. vision_tower, text_tower"
                raise UserError(f"model.freeze names '{name}', which is not a submodule of the model; {hint}")
            if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
                raise UserError(
                    f"model.freeze.{name} must be a number of steps >= 1, or null for the whole run; got {steps!r}"
                )
            nested = [other for other in self.parts if name.startswith(other + ".") or other.startswith(name + ".")]
            if nested:
                raise UserError(
                    f"model.freeze names both {nested[0]} and {name}, one inside the other: give the outer part "
                    "alone, or freeze sibling parts"
                )
            self.parts[name] = (names[name], steps)
        self._require_something_to_train(model)
        for module, steps in self.parts.values():
            if steps is None:
                module.requires_grad_(False)

    def _require_something_to_train(self, model: nn.Module) -> None:
        """Refuse a schedule under which no parameter is trained at some step. Every part is frozen
        at step 0 and parts only unfreeze later, so step 0 is the step with the least to train:
        if the parts hold every trainable parameter, the first steps (or the whole run, when every
        part is frozen for it) train nothing, and the backward finds no gradient to compute."""
        if not self.parts:
            return
        frozen = {id(p) for module, _ in self.parts.values() for p in module.parameters()}
        if any(p.requires_grad and id(p) not in frozen for p in model.parameters()):
            return
        # Training starts when the first part frozen for N steps that holds a trainable parameter thaws.
        thaws = [n for m, n in self.parts.values() if n is not None and any(p.requires_grad for p in m.parameters())]
        when = f"for its first {min(thaws)} steps" if thaws else "for the whole run"
        parts = ", ".join(f"{name} ({n or 'whole run'}{' steps' if n else ''})" for name, (_, n) in self.parts.items())
        raise UserError(
            f"model.freeze leaves nothing to train {when}: {parts} hold every trainable parameter; leave one "
            "part out of model.freeze (e.g. the text tower, as locked-image tuning does)"
        )

    def set_modes(self, step: int, training: bool) -> None:
        """After ``model.train(training)``: frozen parts run in eval mode (dropout off, BatchNorm
        statistics held); a part whose steps are over trains again."""
        if not training:
            return
        for module, steps in self.parts.values():
            module.train(steps is not None and step >= steps)

    def drop_gradients(self, step: int) -> None:
        """Before the optimizer step: the gradients of the parts frozen for a number of steps go."""
        for module, steps in self.parts.values():
            if steps is not None and step < steps:
                for param in module.parameters():
                    param.grad = None
