"""ContrastiveModule: towers -> Encoded -> weighted objective terms, trained by Lightning.

The module receives built parts (the two towers, a list of terms, each with its weight, and the
evaluators) from the YAML through LightningCLI's ``class_path``. It trains; at evaluation it encodes
the datamodule's evaluation items and hands them to the declared evaluators
(``variants.evaluation``), logging what they return: it computes no metric itself. Its public face
outside training is ``encode_image`` / ``encode_text`` (and the records and scores the analysis
and the evaluators read: ``image_record``, ``text_record``, ``score``, ``zeroshot_scores``).
"""

from __future__ import annotations

import math
import warnings
from collections import defaultdict
from typing import cast

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn

from common.batch import Batch
from common.errors import NonFiniteLossError, UserError
from common.evaluation import EvalTask, Evaluator, TaskContext, TaskRecords, missing_contract
from common.records import TEXT_ENCODER_ATTRIBUTES, TextEncoder, present
from variants.evaluation import default_evaluators
from variants.freezing import FreezeSchedule
from variants.grad_cache import encode_in_micro_batches
from variants.metrics import class_embeddings, in_batch_accuracy
from variants.objectives.base import Term
from variants.towers import Encoded, VisionTower
from variants.weights import TOWERS, init_towers


class ContrastiveModule(pl.LightningModule):
    """Trains two towers with the weighted sum of objective terms.

    Args:
        vision_tower: image encoder (``variants.towers.VisionTower`` or a subclass).
        text_tower: text encoder: any class with the ``common.records.TextEncoder`` contract
            (``variants.towers.TextTower``, ``variants.hf_text.HFTextTower``).
        terms: the objective, e.g. ``[InfoNCE]`` for CLIP; each term carries its weight.
        lr: peak learning rate of AdamW.
        weight_decay: AdamW decay, applied only to weights with >= 2 dims (never to biases,
            norm gains, temperatures) and never to what a backbone lists in ``no_weight_decay``.
        betas, eps: AdamW's (CLIP: 0.9/0.98, 1e-6).
        warmup_steps: linear warm-up from lr/warmup_steps to lr, then cosine decay.
        min_lr_ratio: the cosine ends at ``lr * min_lr_ratio``.
        init_from: start from the tower weights (and learned logit scale) of a local checkpoint:
            an OpenAI CLIP or open_clip file (``variants.pretrained``), a suite ``.ckpt``, or a run
            directory (its newest ``checkpoints/last.ckpt``). The towers must have the checkpoint's
            shapes; any terms can be trained from there.
        init_parts: the towers ``init_from`` initialises (default both), e.g. ``[vision_tower]`` to
            start a Chinese text tower next to an English run's image tower (Chinese-CLIP); unused
            without ``init_from``.
        fused_optimizer: AdamW's fused kernel (one pass over all parameters; faster than the
            multi-tensor path on a CPU, see benchmarks/RESULTS.md).
        micro_batch_size: run the towers on micro-batches of this many rows and compute the terms
            on the whole (per-process) batch: the exact gradient of the large contrastive batch at
            the memory of a micro-batch (gradient caching, ``variants.grad_cache``; one extra
            forward per step). It must divide the per-process batch. None: one forward per step.
        freeze: ``{part: steps | null}`` parts trained not at all (null) or only after ``steps``
            (``variants.freezing``).
        evaluators: what the evaluation passes compute (``common.evaluation.Evaluator``), each
            with its metric prefix, splits and ``every_n_steps``; None: every built-in evaluator
            at every pass (``variants.evaluation.default_evaluators``).
        health_every_n_steps: log the gradient and parameter norms of each tower and term
            (``health/...``) every this many steps; 0: never.
    """

    def __init__(
        self,
        vision_tower: VisionTower,
        text_tower: TextEncoder,
        terms: list[Term],
        lr: float = 5e-4,
        weight_decay: float = 0.2,
        betas: tuple[float, float] = (0.9, 0.98),
        eps: float = 1e-6,
        warmup_steps: int = 100,
        min_lr_ratio: float = 0.0,
        init_from: str | None = None,
        init_parts: list[str] | None = None,
        fused_optimizer: bool = True,
        micro_batch_size: int | None = None,
        freeze: dict[str, int | None] | None = None,
        evaluators: list[Evaluator] | None = None,
        health_every_n_steps: int = 50,
    ) -> None:
        super().__init__()
        if micro_batch_size is not None and not (isinstance(micro_batch_size, int) and micro_batch_size > 0):
            raise UserError(
                f"model.micro_batch_size must be a positive number of rows, got {micro_batch_size!r}; "
                "leave it unset (null) for one forward per step"
            )
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*is an instance of `nn.Module`")
            self.save_hyperparameters()
        # Under LightningCLI the parts are saved as their configs (class_path + init_args), so
        # ``ContrastiveModule.load_from_checkpoint`` rebuilds them. Built in Python they are
        # objects, whose weights are already in the state dict: keep them out of the hparams.
        self.remove_ignored_hparams(
            [k for k in ("vision_tower", "text_tower", "terms", "evaluators") if not _is_config(self.hparams[k])]
        )
        text = _checked_text_tower(text_tower)
        _check_compatible(vision_tower, text, terms)
        for term in terms:  # before any optimizer exists: terms size their layers to the towers
            term.attach(vision_tower, text)
        self.vision_tower: VisionTower = vision_tower
        self.text_tower: nn.Module = text  # a TextEncoder, checked
        self.terms = nn.ModuleDict(_unique_names(terms))
        self.needs = frozenset().union(*(term.needs for term in terms))
        # Zero-shot and retrieval score with the first term that scores pairs its own way
        # (FILIP's token-wise similarity), else with the cosine of the global embeddings.
        self._scorer_name = next((name for name, term in self.terms.items() if term.scores_pairs), None)
        if not any(term.needs_global for term in terms):
            # No term trains the global projections (FILIP alone): freeze them, so that DDP does
            # not wait for gradients that never come and weight decay does not shrink them.
            for tower in (vision_tower, text):
                tower.proj.requires_grad_(False)
        self._eval_outputs: dict[str, list[torch.Tensor]] = defaultdict(list)
        self.evaluators = _checked_evaluators(evaluators)
        self.last_evaluation: dict[str, float] = {}  # the metrics of the latest evaluation pass
        if not (isinstance(health_every_n_steps, int) and health_every_n_steps >= 0):
            raise UserError(
                f"model.health_every_n_steps is a number of steps >= 0 (0: off); got {health_every_n_steps!r}"
            )
        # The training step of the weights an evaluation after fit is looking at, when they are an
        # earlier step's (experiments.budgets); None: the module's own weights.
        self.evaluated_step: int | None = None
        if init_parts is not None and (not init_parts or set(init_parts) - set(TOWERS)):
            raise UserError(
                f"model.init_parts takes towers among {', '.join(TOWERS)} (or null for both); got {init_parts}"
            )
        if init_from is not None:
            init_towers(self, init_from, parts=tuple(init_parts or TOWERS))
        self._freeze = FreezeSchedule(self, freeze or {})  # before configure_optimizers and DDP see the parameters
        initialised = tuple(init_parts or TOWERS) if init_from is not None else ()  # what init_from loaded
        locked = [name for name in (freeze or {}) if not name.startswith(initialised)]
        if locked:
            rank_zero_warn(
                f"model.freeze locks {', '.join(locked)}, which model.init_from did not initialise: "
                "it stays at its random initialisation while frozen"
            )

    def train(self, mode: bool = True) -> ContrastiveModule:
        super().train(mode)
        if hasattr(self, "_freeze"):  # Lightning switches modes around validation: frozen parts stay in eval
            self._freeze.set_modes(self.global_step, mode)
        return self

    @property
    def scorer(self) -> Term | None:
        """The term whose ``score`` evaluation uses; None for the global cosine."""
        return None if self._scorer_name is None else self.terms[self._scorer_name]  # type: ignore[return-value]

    @property
    def scores_pairs(self) -> bool:
        """Whether a term scores image-text pairs its own way (FILIP), not the global cosine."""
        return self.scorer is not None

    @property
    def scoring_needs(self) -> frozenset[str]:
        """What evaluation must encode: {"image_tokens", "text_tokens"} for token-wise scoring."""
        return self.scorer.needs if self.scorer is not None else frozenset()

    # ---- public face -------------------------------------------------------------------
    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] -> [B, D] L2-normalised image embeddings."""
        return present(self.image_record(images), "image")

    def encode_text(self, token_ids: torch.Tensor) -> torch.Tensor:
        """[B, L] token ids -> [B, D] L2-normalised text embeddings."""
        return present(self.text_record(token_ids), "text")

    def pixels(self, images: torch.Tensor) -> torch.Tensor:
        """A batch's images as the tower's input. A datamodule may hand them as uint8 [..., 3, H, W]
        (ShapesWorld does: a quarter of float32's bytes in the batch, through the loader worker and to
        the device); they are normalised here by the datamodule's ``image_transform.normalize``, one
        micro-batch at a time under gradient caching, so the float copy of a large batch never
        exists whole. Float images are already the tower's input and pass unchanged."""
        if images.is_floating_point():
            return images
        data = getattr(self._trainer, "datamodule", None)
        normalize = getattr(getattr(data, "image_transform", None), "normalize", None)
        if normalize is None:
            raise UserError(
                f"the batch holds {images.dtype} images but the data {type(data).__name__} has no "
                "image_transform.normalize to turn them into the tower's input: normalise them in the "
                "collate, or give the datamodule's image_transform a normalize(images) method"
            )
        floats = normalize(images)
        plugin = getattr(getattr(self._trainer, "strategy", None), "precision_plugin", None)
        # What Lightning does to a float batch before the step (bf16-true / 16-true cast it).
        return plugin.convert_input(floats) if plugin is not None else floats

    def image_record(self, images: torch.Tensor, tokens: bool = False) -> Encoded:
        """Image side of an :class:`Encoded`: embeddings and, if asked, patch tokens."""
        out = self.vision_tower(images, return_tokens=tokens)
        return Encoded(image=out.embedding, image_tokens=out.tokens)

    def text_record(self, token_ids: torch.Tensor, tokens: bool = False) -> Encoded:
        """Text side of an :class:`Encoded`: embeddings and, if asked, word tokens + mask."""
        out = self.text_tower(token_ids, return_tokens=tokens)
        return Encoded(text=out.embedding, text_tokens=out.tokens, text_mask=out.mask if tokens else None)

    def encode(self, batch: Batch) -> Encoded:
        """Everything the terms need from one training batch, and nothing more; in micro-batches
        of ``micro_batch_size`` rows with gradient caching when it is set."""
        size = self.hparams["micro_batch_size"]
        if size is None:
            return self._encode(batch)
        rows = batch["image"].shape[0]
        if rows % size:
            raise UserError(
                f"model.micro_batch_size {size} does not divide this process's batch of {rows} rows: "
                "choose a micro-batch size that divides data.init_args.batch_size"
            )
        return encode_in_micro_batches(self._encode, batch, size, (self.vision_tower, self.text_tower))

    def _encode(self, batch: Batch) -> Encoded:
        needs = self.needs
        image_tokens = "image_tokens" in needs
        views = image_views = None
        if "views" in needs or "image_views" in needs:
            if batch.get("views") is None:
                raise UserError(_NO_VIEWS)
        if "image_views" in needs:
            # DeCLIP: the two augmented views replace the image (one pass each, each with its own
            # BatchNorm statistics, as the official code encodes them); the first is "the image".
            first, tokens = self.vision_tower.project(self.pixels(batch["views"][:, 0]), return_tokens=image_tokens)
            second, _ = self.vision_tower.project(self.pixels(batch["views"][:, 1]))
            image_views = torch.stack([first, second], dim=1)
            images = Encoded(image=F.normalize(first, dim=-1), image_tokens=tokens)
        else:
            images = self.image_record(self.pixels(batch["image"]), tokens=image_tokens)
        if "views" in needs:
            b = batch["views"].shape[0]
            views = self.vision_tower.pooled(self.pixels(batch["views"].flatten(0, 1))).view(b, 2, -1)
        texts = self.text_record(batch["text"], tokens="text_tokens" in needs)
        text_view = None
        if "text_view" in needs:
            if batch.get("text_view") is None:
                raise UserError(_NO_TEXT_VIEW)
            text_view = self.text_record(batch["text_view"]).text
        mlm_labels = None
        if "mlm_labels" in needs:
            if batch.get("mlm_labels") is None:
                raise UserError(_NO_MASKING)
            mlm_labels = batch["mlm_labels"]
        return Encoded(
            image=images.image,
            text=texts.text,
            image_tokens=images.image_tokens,
            text_tokens=texts.text_tokens,
            text_mask=texts.text_mask,
            views=views,
            image_views=image_views,
            text_view=text_view,
            mlm_labels=mlm_labels,
        )

    # ---- training ----------------------------------------------------------------------
    def on_fit_start(self) -> None:
        data = getattr(self.trainer, "datamodule", None)  # set by Lightning at run time
        if data is not None and (missing := missing_contract(data)):
            raise UserError(
                f"the data {type(data).__name__} lacks {', '.join(missing)} of the datamodule contract "
                "(common.evaluation.ContrastiveData): add them, or derive from a suite datamodule"
            )
        self._check_evaluation_schedule()
        for evaluator in self.evaluators:
            evaluator.setup(self, data)
        if {"views", "image_views"} & self.needs and not getattr(data, "provides_views", False):
            raise UserError(_NO_VIEWS)
        if "text_view" in self.needs and not getattr(data, "provides_text_view", False):
            raise UserError(_NO_TEXT_VIEW)
        masks = getattr(data, "provides_mlm", False)
        if ("mlm_labels" in self.needs) != masks:
            # Masked captions without a term that predicts them would silently corrupt every caption.
            raise UserError(_NO_MASKING if not masks else _MASKING_UNUSED)
        if self.trainer.accumulate_grad_batches > 1:
            raise UserError(
                "trainer.accumulate_grad_batches > 1 does not make a larger contrastive batch: "
                "each micro-batch would only see its own negatives. Set data.init_args.batch_size to the "
                "contrastive batch and model.micro_batch_size to what fits in memory (gradient caching), "
                "or use more devices"
            )
        if self.hparams["micro_batch_size"] is not None:
            towers = {"vision_tower": self.vision_tower, "text_tower": self.text_tower}
            counts = {
                name: sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in t.modules())
                for name, t in towers.items()
            }
            norms = [f"{name} ({n} BatchNorm layers)" for name, n in counts.items() if n]
            if norms:
                rank_zero_warn(
                    f"model.micro_batch_size {self.hparams['micro_batch_size']}: BatchNorm in the {', '.join(norms)} "
                    "normalises each micro-batch with its own statistics, so the step is not exactly the plain "
                    "step on the whole batch (as under DDP, where it normalises each process's rows); "
                    "BatchNorm-free towers (ViTs, the text tower) and the terms' own layers are exact"
                )
        self._check_image_size(getattr(getattr(data, "image_transform", None), "image_size", None))
        self._check_batch_size(getattr(data, "hparams", {}).get("batch_size"), self.trainer.world_size)

    def _check_evaluation_schedule(self) -> None:
        """An evaluator with ``every_n_steps`` runs at the validation passes of those steps: refuse
        a trainer that does not validate at each of them, naming the setting to change."""
        periodic = [e for e in self.evaluators if e.every_n_steps is not None and "val" in e.splits]
        if not periodic:
            return
        trainer = self.trainer
        interval = trainer.val_check_interval
        for evaluator in periodic:
            n = evaluator.every_n_steps or 1  # not None: periodic
            if (
                trainer.limit_val_batches == 0
                or trainer.check_val_every_n_epoch is not None
                or not isinstance(interval, int)
                or n % interval
            ):
                raise UserError(
                    f"evaluator {evaluator.name} runs every {n} steps, but the trainer does not validate at every "
                    f"multiple of {n} (val_check_interval {interval}, check_val_every_n_epoch "
                    f"{trainer.check_val_every_n_epoch}, limit_val_batches {trainer.limit_val_batches}): set "
                    f"trainer.val_check_interval to {n} (or a divisor of it), trainer.check_val_every_n_epoch null "
                    "and trainer.limit_val_batches above 0"
                )

    def _check_batch_size(self, batch_size: int | None, processes: int) -> None:
        """Refuse a global batch (processes x the data's per-process batch_size) smaller than a term's
        ``min_batch_size``, naming each such term and why, before the first step fails inside it (a
        BatchNorm error) or trains on nothing (a contrastive loss of one row is 0)."""
        if not batch_size:
            return  # a datamodule that does not say its batch size
        rows = batch_size * processes
        # getattr: ModuleDict types its values as Module; every term is a Term with these attributes.
        least = {name: int(getattr(term, "min_batch_size", 1)) for name, term in self.terms.items()}
        short = [
            f"{name} needs >= {least[name]} rows ({getattr(term, 'min_batch_reason', '')})"
            for name, term in self.terms.items()
            if rows < least[name]
        ]
        if short:
            raise UserError(
                f"a global batch of {rows} row{'s' if rows > 1 else ''} (data.init_args.batch_size {batch_size} x "
                f"{processes} process{'es' if processes > 1 else ''}) is too small: {'; '.join(short)}; set "
                f"data.init_args.batch_size to {-(-max(least.values()) // processes)} or more"
            )

    @torch.no_grad()
    def _check_image_size(self, size: int | None) -> None:
        """One forward of two blank images at the data's size, before any training: a size the
        vision tower cannot take (a ViT built for another size, a CNN whose kernels outgrow the
        feature map) is named here, not in a traceback from the first step. Eval mode, so no
        BatchNorm statistics change and no random number is drawn."""
        if not size:
            return
        training = self.vision_tower.training
        self.vision_tower.eval()
        dtype = next(self.vision_tower.parameters()).dtype  # bf16-true / 16-true runs cast the weights
        try:
            self.vision_tower(torch.zeros(2, 3, size, size, device=self.device, dtype=dtype))
        except (RuntimeError, ValueError, AssertionError) as error:  # what a wrong size raises in timm/torch
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise UserError(
                f"the vision tower ({getattr(self.vision_tower, 'model_name', type(self.vision_tower).__name__)}) "
                f"cannot take the data's {size} px images ({reason}): set data.init_args.image_size to a size the "
                "tower takes, or build the tower for this size (a ViT's model_kwargs.img_size)"
            ) from None
        finally:
            self.vision_tower.train(training)

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        progress = min(1.0, self.global_step / max(1, self.trainer.estimated_stepping_batches))
        for term in self.terms.values():
            term.progress = progress  # type: ignore[assignment]  # a Term's float, not a submodule
        encoded = self.encode(batch)
        total, outputs = self.objective(encoded)
        # Every rank must take the same decision, or the healthy ones would wait forever.
        if not self.trainer.strategy.reduce_boolean_decision(bool(torch.isfinite(total)), all=True):
            self._raise_non_finite(outputs)
        batch_size = present(encoded, "image").shape[0]
        self.log("train/loss", total, prog_bar=True, batch_size=batch_size)
        for name, out in outputs.items():
            for key, value in out.items():
                self.log(f"train/{name}/{key}", value, batch_size=batch_size)
        if self.scorer is None:  # in-batch cosine retrieval accuracy on this rank's rows
            self._log_batch_accuracy(encoded, batch_size)
        self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"], batch_size=batch_size)
        return total

    def objective(self, encoded: Encoded) -> tuple[torch.Tensor, dict[str, dict[str, torch.Tensor]]]:
        """(weighted total loss, each term's outputs) on one batch's record."""
        outputs = {name: term(encoded) for name, term in self.terms.items()}
        total = sum(self.terms[name].weight * out["loss"] for name, out in outputs.items())
        return total, outputs

    @torch.no_grad()
    def _log_batch_accuracy(self, encoded: Encoded, batch_size: int) -> None:
        i2t, t2i = in_batch_accuracy(present(encoded, "image"), present(encoded, "text"))
        self.log("train/acc_i2t", i2t, batch_size=batch_size)
        self.log("train/acc_t2i", t2i, batch_size=batch_size)

    def _raise_non_finite(self, outputs: dict[str, dict[str, torch.Tensor]]) -> None:
        bad = [
            f"'{name}' returned {out['loss'].item()} (weight {self.terms[name].weight})"
            for name, out in outputs.items()
            if not torch.isfinite(out["loss"])
        ] or ["the weighted sum overflowed, or another process's loss was not finite"]
        raise NonFiniteLossError(
            f"non-finite loss at step {self.global_step}: term {'; '.join(bad)}. "
            "Lower model.lr, raise model.warmup_steps, or try trainer.precision 32-true"
        )

    def on_train_batch_start(self, batch: Batch, batch_idx: int) -> None:
        self._freeze.set_modes(self.global_step, self.training)  # a part whose frozen steps are over trains again

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        self._freeze.drop_gradients(self.global_step)
        every = self.hparams["health_every_n_steps"]
        if every and self.global_step % every == 0:
            self._log_health()

    @torch.no_grad()
    def _log_health(self) -> None:
        """Training health (big_vision's habit): the L2 norm of the gradient (after unscaling,
        before clipping, without the frozen parts' dropped gradients) and of the weights of each
        tower and each term with parameters, written to the loggers at this very step (not
        through ``self.log``, which writes step values only every ``log_every_n_steps``). The
        learned scales are logged by their terms (``train/<term>/logit_scale``)."""
        parts: dict[str, nn.Module] = {"vision_tower": self.vision_tower, "text_tower": self.text_tower}
        parts |= {f"terms.{name}": term for name, term in self.terms.items()}
        health: dict[str, float] = {}
        for name, part in parts.items():
            params = [p for p in part.parameters() if p.requires_grad]
            if not params:
                continue
            grads = [p.grad.detach().float().norm() for p in params if p.grad is not None]
            health[f"health/param_norm/{name}"] = float(torch.stack([p.detach().float().norm() for p in params]).norm())
            if grads:
                health[f"health/grad_norm/{name}"] = float(torch.stack(grads).norm())
        for logger in self.loggers:  # rank zero's only: Lightning's loggers write on rank zero
            logger.log_metrics(health, step=self.global_step)

    def optimizer_step(self, *args, **kwargs) -> None:
        super().optimizer_step(*args, **kwargs)
        for term in self.terms.values():
            cast(Term, term).post_step()  # ModuleDict types its values as Module; each is a Term

    def configure_optimizers(self):
        decay, no_decay = _weight_decay_groups(self)
        optimizer = torch.optim.AdamW(
            [
                {"params": decay, "weight_decay": self.hparams["weight_decay"]},
                {"params": no_decay, "weight_decay": 0.0},
            ],
            lr=self.hparams["lr"],
            betas=tuple(self.hparams["betas"]),
            eps=self.hparams["eps"],
            fused=self.hparams["fused_optimizer"],
        )
        if not math.isfinite(self.trainer.estimated_stepping_batches):
            raise UserError("the run has no end (trainer.max_steps and max_epochs are -1): set trainer.max_steps")
        total = max(1, int(self.trainer.estimated_stepping_batches))
        schedule = warmup_cosine(self.hparams["warmup_steps"], total, self.hparams["min_lr_ratio"])
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ---- evaluation: the declared evaluators over the datamodule's tasks ----------------
    def _eval_tasks(self, stage: str) -> list[EvalTask]:
        tasks = getattr(getattr(self.trainer, "datamodule", None), "eval_tasks", None)
        return tasks(stage) if tasks is not None else []

    def on_validation_epoch_start(self) -> None:
        self._start_evaluation("val")

    def on_test_epoch_start(self) -> None:
        self._start_evaluation("test")

    def _start_evaluation(self, stage: str) -> None:
        self._eval_outputs = defaultdict(list)
        # Every rank decides alike (the step is shared), so skipping the encoding is safe under DDP.
        self._encode_items = any(evaluator.kinds for evaluator in self._due_evaluators(stage))

    def _due_evaluators(self, stage: str) -> list[Evaluator]:
        during_fit = self.trainer.state.fn == TrainerFn.FITTING
        return [e for e in self.evaluators if e.due(stage, self.global_step, during_fit)]

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        """Encode the evaluation items (what the scoring needs) when an evaluator of the
        datamodule's tasks is due; the evaluators read them at the end of the pass."""
        if "task" not in batch or not getattr(self, "_encode_items", True):
            return  # a datamodule without eval tasks, or no task evaluator due in this pass
        needs = self.scoring_needs
        images = self.image_record(self.pixels(batch["image"]), tokens="image_tokens" in needs)
        texts = self.text_record(batch["text"], tokens="text_tokens" in needs)
        outputs = self._eval_outputs
        for record in (images, texts):
            for key, value in vars(record).items():
                if value is not None:
                    outputs[key].append(value if value.dtype == torch.bool else value.float())
        outputs["task"].append(batch["task"])
        outputs["index"].append(batch["index"])
        outputs["label"].append(batch["label"])
        outputs["tokens"].append(batch["text"])
        if "target" in batch:
            outputs["target"].append(batch["target"])

    test_step = validation_step

    def on_validation_epoch_end(self) -> None:
        self._evaluate("val")

    def on_test_epoch_end(self) -> None:
        self._evaluate("test")

    def _evaluate(self, stage: str) -> None:
        """Run the evaluators due in this pass and log what they return; ``last_evaluation``
        keeps this pass's metrics (``experiments.callbacks.FinalMetrics`` writes them to the run's
        history)."""
        due = self._due_evaluators(stage)
        metrics: dict[str, torch.Tensor | float] = {}
        if self._eval_outputs:
            outputs = self._gather_unique({k: torch.cat(v) for k, v in self._eval_outputs.items()})
            self._eval_outputs = defaultdict(list)
            records = _task_records(outputs)
            for position, task in enumerate(self._eval_tasks(stage)):
                if position not in records or task.kind == "probe_train":
                    continue  # e.g. limit_val_batches stopped before this task; a probe's fitting rows
                context = TaskContext(task, records[position], self, records)
                for evaluator in due:
                    if task.kind in evaluator.kinds:
                        metrics |= _new_names(evaluator, evaluator.evaluate(context), metrics)
        data = getattr(self.trainer, "datamodule", None)
        for evaluator in due:
            if not evaluator.kinds:  # brings its own data
                metrics |= _new_names(evaluator, evaluator.evaluate_model(self, data, stage, self.global_step), metrics)
        for name, value in metrics.items():
            self.log(name, value, sync_dist=True)
        self.last_evaluation = {name: float(value) for name, value in metrics.items()}

    def score(self, images: Encoded, texts: Encoded) -> tuple[torch.Tensor, torch.Tensor]:
        """(image->text, text->image) scores [Ni, Nt] of the scoring term (default: cosine)."""
        if self.scorer is None:
            cosine = present(images, "image") @ present(texts, "text").T
            return cosine, cosine
        return self.scorer.score(images, texts)

    def zeroshot_scores(self, images: Encoded, prompts: Encoded, templates: int) -> torch.Tensor:
        """[Ni, classes] zero-shot scores from the encoded prompts of every class, class-major
        ([classes * templates] rows, as ``prompts[c][t]`` flattened). Cosine scoring uses CLIP's
        prompt ensemble (mean of normalised template embeddings, renormalised); a term's own
        scoring (FILIP) the mean of its template scores."""
        if self.scorer is None:
            text = present(prompts, "text").float()
            classifier = class_embeddings(text.view(-1, templates, text.shape[-1]))
            return present(images, "image").float() @ classifier.T
        i2t, _ = self.scorer.score(images, prompts)
        return i2t.view(i2t.shape[0], -1, templates).mean(-1)

    def _gather_unique(self, outputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """All ranks' evaluation outputs, each sample once (samplers pad by repeating)."""
        if self.trainer.world_size > 1:
            outputs = {k: cast(torch.Tensor, self.all_gather(v)).flatten(0, 1) for k, v in outputs.items()}
        first = _first_occurrences(outputs["index"])
        return {k: v[first] for k, v in outputs.items()}


def _task_records(outputs: dict[str, torch.Tensor]) -> dict[int, TaskRecords]:
    """The gathered evaluation outputs split by task position (tasks with no items are absent)."""
    records = {}
    for position in outputs["task"].unique().tolist():
        rows = outputs["task"] == position

        def take(key: str, rows: torch.Tensor = rows) -> torch.Tensor | None:
            return outputs[key][rows] if key in outputs else None

        records[int(position)] = TaskRecords(
            images=Encoded(image=take("image"), image_tokens=take("image_tokens")),
            texts=Encoded(text=take("text"), text_tokens=take("text_tokens"), text_mask=take("text_mask")),
            labels=outputs["label"][rows],
            tokens=outputs["tokens"][rows],
            target=take("target"),
        )
    return records


def _first_occurrences(index: torch.Tensor) -> torch.Tensor:
    """Positions of the first occurrence of each distinct value of ``index``, by value."""
    unique, inverse = torch.unique(index, return_inverse=True)
    positions = torch.arange(index.numel(), device=index.device)
    return torch.full_like(unique, index.numel()).scatter_reduce(0, inverse, positions, "amin")


def warmup_cosine(warmup_steps: int, total_steps: int, min_ratio: float = 0.0):
    """LR multiplier: linear warm-up over ``warmup_steps``, then cosine to ``min_ratio``."""

    def multiplier(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return multiplier


def _weight_decay_groups(module: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """Split trainable parameters: decay weights with >= 2 dims, except what towers exempt."""
    exempt = set()
    for prefix, child in module.named_children():
        no_weight_decay = getattr(child, "no_weight_decay", None)  # a tower's own exemptions, when it lists any
        if callable(no_weight_decay):
            exempt |= {f"{prefix}.{name}" for name in no_weight_decay()}
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for name, param in module.named_parameters():
        if param.requires_grad:
            (decay if param.ndim >= 2 and name not in exempt else no_decay).append(param)
    return decay, no_decay


_NO_VIEWS = (
    "a term needs two augmented views per image (SimCLR, SimSiam, DeCLIP's multi-view terms) but the batches "
    "have none: set data.init_args.views (e.g. class_path datamodules.augment.SSLViews) in the data config"
)
_NO_TEXT_VIEW = (
    "a term needs a second text view per caption (DeCLIP's MultiViewInfoNCE, NearestNeighbourInfoNCE) but the "
    "batches have none: set data.init_args.text_views (class_path datamodules.augment.TextViews) in the data config"
)
_NO_MASKING = (
    "MaskedLanguageModel needs masked captions but the data does not mask them: set data.init_args.text_masking "
    "(class_path datamodules.augment.TokenMasking) in the data config"
)
_MASKING_UNUSED = (
    "the data masks the captions (data.init_args.text_masking) but no term predicts the masked tokens, so every "
    "term would train on corrupted captions: add variants.objectives.MaskedLanguageModel to model.terms or "
    "remove text_masking"
)


def _new_names(evaluator: Evaluator, metrics: dict, before: dict) -> dict:
    """``metrics``, refused when a name is already another evaluator's in this pass."""
    taken = sorted(set(metrics) & set(before))
    if taken:
        raise UserError(
            f"evaluator {evaluator.name} logs {taken[0]}, which another evaluator of this run logs too: give one "
            "of them its own prefix (model.evaluators[i].init_args.prefix)"
        )
    return metrics


def _checked_evaluators(evaluators: list[Evaluator] | None) -> list[Evaluator]:
    if evaluators is None:
        return default_evaluators()
    wrong = [repr(e) for e in evaluators if not isinstance(e, Evaluator)]
    if wrong:
        raise UserError(
            f"model.evaluators takes evaluators (common.evaluation.Evaluator, e.g. class_path "
            f"variants.evaluation.ZeroShot); got {', '.join(wrong)}"
        )
    return list(evaluators)


def _is_config(value: object) -> bool:
    if isinstance(value, list):
        return all(isinstance(v, dict) for v in value)
    return isinstance(value, dict)


def _checked_text_tower(text: object) -> nn.Module:
    """The text tower, once checked against the contract (common.records.TextEncoder)."""
    missing = [name for name in TEXT_ENCODER_ATTRIBUTES if not hasattr(text, name)]
    if missing or not isinstance(text, nn.Module):
        raise UserError(
            f"the text tower {type(text).__name__} lacks {', '.join(missing) or 'nn.Module'} of the text-tower "
            "contract (common.records.TextEncoder: an nn.Module with forward(token_ids, return_tokens) -> "
            f"TowerOutput and {', '.join(TEXT_ENCODER_ATTRIBUTES)})"
        )
    return text


def _check_compatible(vision: nn.Module, text: nn.Module, terms: list[Term]) -> None:
    if not terms:
        raise UserError("model.terms is empty: list at least one objective term, e.g. InfoNCE")
    dims: dict[str, object] = {"vision_tower": vision.embed_dim, "text_tower": text.embed_dim}
    dims |= {f"terms[{i}] ({t.name})": t.embed_dim for i, t in enumerate(terms) if t.embed_dim}
    if len(set(dims.values())) > 1:
        listed = ", ".join(f"{where} embed_dim={dim}" for where, dim in dims.items())
        raise UserError(f"incompatible embedding sizes: {listed}; set them all to one value")


def _unique_names(terms: list[Term]) -> dict[str, Term]:
    names: dict[str, Term] = {}
    for term in terms:
        name, n = term.name, 1
        while name in names:
            n += 1
            name = f"{term.name}_{n}"
        names[name] = term
    return names
