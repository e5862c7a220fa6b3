"""ContrastiveModule: construction checks, optimizer groups, schedule, non-finite loss, eval."""

from __future__ import annotations

import math

import lightning.pytorch as pl
import pytest
import torch

from common.errors import NonFiniteLossError, UserError
from datamodules.shapesworld import ShapesWorldDataModule
from variants.module import ContrastiveModule, _weight_decay_groups, warmup_cosine
from variants.objectives import Adversarial, InfoNCE, SimCLR, Term, TokenwiseInfoNCE
from variants.towers import Encoded, TextTower, VisionTower

from helpers.training import quiet_trainer, small_module, tiny_data


def test_towers_with_different_embedding_sizes_fail_at_construction() -> None:
    with pytest.raises(UserError, match="vision_tower embed_dim=16, text_tower embed_dim=8"):
        ContrastiveModule(VisionTower("resnet10t", 16), TextTower(40, 8, 32, 1, 2, embed_dim=8), [InfoNCE()])


def test_a_term_expecting_another_embedding_size_fails_at_construction() -> None:
    with pytest.raises(UserError, match=r"terms\[1\] \(adversarial\) embed_dim=32"):
        small_module(terms=[InfoNCE(), Adversarial(embed_dim=32)])


def test_a_view_term_without_views_in_the_data_names_the_data_option(tmp_path) -> None:
    datamodule = tiny_data()
    module = small_module(terms=[InfoNCE(), SimCLR(hidden_dim=16, out_dim=8)], vocab_size=datamodule.vocab_size)
    trainer = quiet_trainer(tmp_path, max_steps=1)
    with pytest.raises(UserError, match="set data.init_args.views"):
        trainer.fit(module, datamodule)


def test_a_global_batch_too_small_for_a_term_is_refused_naming_it() -> None:
    """Checked once at fit start from the data's batch_size and the process count: the global batch
    matters, since the terms' BatchNorm is global and their negatives are gathered."""
    module = small_module(terms=[InfoNCE(), SimCLR(hidden_dim=16, out_dim=8), Adversarial()])
    with pytest.raises(UserError) as error:
        module._check_batch_size(1, 1)
    message = str(error.value)
    assert message.startswith("a global batch of 1 row (data.init_args.batch_size 1 x 1 process) is too small: ")
    assert "infonce needs >= 2 rows (it contrasts" in message
    assert "simclr needs >= 2 rows (its projector's BatchNorm" in message
    assert "adversarial" not in message and message.endswith("set data.init_args.batch_size to 2 or more")
    module._check_batch_size(1, 2)  # two processes of one row: two rows to normalise and contrast
    module._check_batch_size(None, 1)  # a datamodule that does not say
    small_module(terms=[Adversarial()])._check_batch_size(1, 1)  # a discriminator trains on one pair


def test_every_term_says_why_it_needs_more_than_one_row() -> None:
    from helpers.terms import all_term_classes

    for cls in all_term_classes():
        assert isinstance(cls.min_batch_size, int) and cls.min_batch_size >= 1, cls.__name__
        assert (cls.min_batch_size > 1) == bool(cls.min_batch_reason), cls.__name__


def test_no_terms_is_an_error() -> None:
    with pytest.raises(UserError, match="model.terms is empty"):
        small_module(terms=[])


def test_filip_alone_freezes_the_untrained_global_heads_and_scores_with_tokens() -> None:
    module = small_module(terms=[TokenwiseInfoNCE(token_dim=8)])
    assert module.scorer is module.terms["tokenwiseinfonce"]
    assert not module.vision_tower.proj.weight.requires_grad and not module.text_tower.proj.weight.requires_grad
    assert not any(key.startswith("scorer") for key in module.state_dict())  # registered once
    assert small_module().vision_tower.proj.weight.requires_grad and small_module().scorer is None


def test_duplicate_terms_get_distinct_names() -> None:
    module = small_module(terms=[InfoNCE(), InfoNCE(weight=0.5)])
    assert list(module.terms) == ["infonce", "infonce_2"]


@pytest.mark.parametrize("vision", ["resnet10t", "vit_tiny_patch16_224"])
def test_weight_decay_only_on_matrices_never_on_biases_norms_temperatures(vision: str) -> None:
    module = small_module(vision)
    decay, no_decay = (set(map(id, group)) for group in _weight_decay_groups(module))
    names = {id(p): n for n, p in module.named_parameters()}
    decayed = {names[i] for i in decay}
    assert decay.isdisjoint(no_decay) and len(decay) + len(no_decay) == len(names)
    for name, param in module.named_parameters():
        if param.ndim < 2 or name.endswith((".cls_token", ".pos_embed")):
            assert name not in decayed, name
    assert "terms.infonce.logit_scale" not in decayed
    assert "text_tower.blocks.0.attn.qkv.weight" in decayed
    assert "vision_tower.proj.weight" in decayed


def test_schedule_warms_up_linearly_then_follows_a_cosine() -> None:
    f = warmup_cosine(warmup_steps=10, total_steps=110, min_ratio=0.1)
    assert [f(s) for s in (0, 4, 9)] == pytest.approx([0.1, 0.5, 1.0])
    assert f(10) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.1 + 0.9 * 0.5)
    assert f(110) == pytest.approx(0.1) and f(500) == pytest.approx(0.1)


def test_every_parameter_gets_a_gradient_through_the_real_towers() -> None:
    module = small_module()
    batch = {"image": torch.randn(4, 3, 32, 32), "text": torch.randint(3, 40, (4, 8))}
    batch["text"][:, -1] = 2  # <end> last: no padding, so every position is used
    optimizer = torch.optim.SGD(module.parameters(), lr=0.1)
    # Two steps: timm zero-initialises the last norm of each residual block, which blocks the
    # gradient of the branch's other layers until that gain has moved once.
    for _ in range(2):
        optimizer.zero_grad()
        encoded = module.encode(batch)
        torch.stack([term(encoded)["loss"] for term in module.terms.values()]).sum().backward()
        optimizer.step()
    missing = [n for n, p in module.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


def test_encode_returns_only_what_terms_need() -> None:
    class NeedsTokens(InfoNCE):
        needs = frozenset({"image_tokens", "text_tokens"})

    batch = {"image": torch.randn(2, 3, 32, 32), "text": torch.tensor([[1, 5, 2, 0], [1, 6, 7, 2]])}
    plain = small_module().encode(batch)
    assert plain.image_tokens is None and plain.text_tokens is None and plain.text_mask is None
    tokens = small_module(terms=[NeedsTokens()]).encode(batch)
    assert tokens.image_tokens.shape[:2] == (2, 1) and tokens.text_tokens.shape == (2, 4, 32)
    assert tokens.text_mask.tolist() == [[True, True, True, False], [True] * 4]


class NaNTerm(Term):
    def forward(self, encoded: Encoded) -> dict[str, torch.Tensor]:
        return {"loss": encoded.image.sum() * float("nan")}


def test_a_non_finite_loss_stops_the_run_naming_the_step_and_the_term(tmp_path) -> None:
    datamodule = tiny_data()
    module = small_module(terms=[InfoNCE(), NaNTerm(weight=0.5)], vocab_size=datamodule.vocab_size)
    trainer = quiet_trainer(tmp_path, max_steps=3, limit_val_batches=0)
    with pytest.raises(NonFiniteLossError, match=r"at step 0: term 'nanterm' returned nan \(weight 0.5\)"):
        trainer.fit(module, datamodule)


def test_accumulating_gradients_is_refused_with_an_explanation(tmp_path) -> None:
    datamodule = tiny_data()
    module = small_module(vocab_size=datamodule.vocab_size)
    trainer = quiet_trainer(tmp_path, max_steps=2, accumulate_grad_batches=2)
    with pytest.raises(UserError, match="accumulate_grad_batches > 1 does not make a larger contrastive batch.*"
                       "model.micro_batch_size to what fits in memory"):  # fmt: skip
        trainer.fit(module, datamodule)


def test_a_fit_in_micro_batches_trains_and_warns_once_about_the_towers_batchnorm(tmp_path) -> None:
    """Lightning's step with gradient caching: the loss comes back, the weights move, and a tower
    with BatchNorm (ResNet) is named in one warning (it normalises per micro-batch)."""
    datamodule = tiny_data()
    module = small_module(vocab_size=datamodule.vocab_size, micro_batch_size=2)
    before = module.text_tower.proj.weight.detach().clone()
    trainer = quiet_trainer(tmp_path, max_steps=2, limit_val_batches=0)
    with pytest.warns(
        UserWarning, match=r"BatchNorm in the vision_tower \(\d+ BatchNorm layers\) normalises each micro-batch"
    ):
        trainer.fit(module, datamodule)
    assert trainer.global_step == 2 and torch.isfinite(trainer.callback_metrics["train/loss"])
    assert not torch.equal(module.text_tower.proj.weight, before)


def test_zero_shot_and_retrieval_metrics_from_a_perfect_model(tmp_path) -> None:
    """With encoders that read the answer off the batch, every metric must be exactly 1."""
    datamodule = ShapesWorldDataModule(val_samples=6, eval_batch_size=7, num_workers=0)
    prompt_ids = {t.name: t.prompts for t in datamodule.eval_tasks("val") if t.kind == "zeroshot"}

    class Oracle(ContrastiveModule):
        """Images embed as the one-hot of their class (zero-shot) or of a key of their caption
        (retrieval); class prompts and captions embed the same way."""

        def validation_step(self, batch, batch_idx):
            self._batch = batch
            return super().validation_step(batch, batch_idx)

        def image_record(self, images, tokens=False):
            b = self._batch
            keys = torch.where(b["label"] >= 0, b["label"], 1000 + _row_key(b["text"]))
            return Encoded(image=_one_hot(keys))

        def text_record(self, ids, tokens=False):
            if ids.shape[0] == self._batch["text"].shape[0] and torch.equal(ids, self._batch["text"]):
                return Encoded(text=_one_hot(1000 + _row_key(ids)))
            for p in prompt_ids.values():  # each task builds its own classifier
                if p.flatten(0, 1).shape == ids.shape and torch.equal(p.flatten(0, 1), ids):
                    return Encoded(text=_one_hot(torch.arange(p.shape[0]).repeat_interleave(p.shape[1])))
            raise AssertionError("unexpected text")

    module = Oracle(
        VisionTower("resnet10t", 16), TextTower(datamodule.vocab_size, 32, 32, 1, 2, embed_dim=16), [InfoNCE()]
    )
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, default_root_dir=tmp_path)
    (metrics,) = trainer.validate(module, datamodule, verbose=False)
    # Images and captions embed identically, so the modality gap logged beside retrieval is 0.
    assert metrics.pop("geometry/shapesworld_val/modality_gap") == pytest.approx(0.0, abs=1e-6)
    assert len(metrics) == 7
    assert all(v == pytest.approx(1.0) for v in metrics.values()), metrics


def _row_key(ids: torch.Tensor) -> torch.Tensor:
    weights = torch.arange(1, ids.shape[1] + 1)
    return (ids * weights).sum(1) % 5000


def _one_hot(keys: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.one_hot(keys.long(), 7000).float()


def test_checkpoint_free_hparams_when_built_in_python() -> None:
    module = small_module(lr=1e-3)
    assert "vision_tower" not in module.hparams and module.hparams.lr == 1e-3
    assert math.isclose(module.hparams.betas[1], 0.98)
