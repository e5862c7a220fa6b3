"""Gradient caching (variants/grad_cache.py) and gradient checkpointing: the gradient of a batch
encoded in micro-batches equals the plain step's, for every term, with random draws inside the
towers, in the real module; the 2-process DDP case is in test_objectives.py."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch.plugins.precision import DoublePrecision

from common.errors import UserError
from datamodules.transforms import EvalImageTransform
from variants.grad_cache import concatenate, micro_batches
from variants.module import ContrastiveModule
from variants.objectives import InfoNCE, SimCLR, Term, TokenwiseInfoNCE
from variants.towers import TextTower, VisionTower

from helpers.terms import case_id, term_cases, toy_batch, toy_model

COMBINATIONS = term_cases()


def gradients(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def assert_same_gradients(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], rtol: float) -> None:
    assert actual.keys() == expected.keys()
    for name, grad in expected.items():
        torch.testing.assert_close(actual[name], grad, rtol=rtol, atol=rtol * 1e-3, msg=f"{name} differs")


@pytest.mark.parametrize("classes", COMBINATIONS, ids=case_id)
def test_micro_batches_give_the_plain_steps_gradient(classes: tuple[type[Term], ...]) -> None:
    """Batch 12 in micro-batches of 3 (float64): every parameter's gradient, the towers' and the
    terms' own, equals the plain step's on the whole batch, to 1e-9 relative."""
    plain = toy_model(*classes)
    plain(*toy_batch(12)).backward()
    cached = toy_model(*classes, micro_batch_size=3)
    cached(*toy_batch(12)).backward()
    assert_same_gradients(gradients(cached), gradients(plain), rtol=1e-9)


@pytest.mark.parametrize("classes", COMBINATIONS, ids=case_id)
def test_random_draws_in_the_towers_are_replayed(classes: tuple[type[Term], ...]) -> None:
    """With dropout in the towers the cached step equals the step that encodes the same
    micro-batches with autograd (the same draws): the second pass replays the first pass's
    generator state; and the generator ends where that step leaves it."""
    reference = toy_model(*classes, micro_batch_size=3, dropout=0.3)
    reference.chunked = True
    torch.manual_seed(7)
    reference(*toy_batch(12)).backward()
    after_reference = torch.rand(1)
    cached = toy_model(*classes, micro_batch_size=3, dropout=0.3)
    torch.manual_seed(7)
    cached(*toy_batch(12)).backward()
    assert torch.rand(1) == after_reference
    assert_same_gradients(gradients(cached), gradients(reference), rtol=1e-9)
    # The dropout is on: without it the gradient is another one.
    plain = toy_model(*classes)
    plain(*toy_batch(12)).backward()
    assert any(not torch.allclose(g, gradients(plain)[n]) for n, g in gradients(cached).items())


def test_one_micro_batch_is_the_plain_step() -> None:
    plain, whole = toy_model(InfoNCE), toy_model(InfoNCE, micro_batch_size=12)
    plain(*toy_batch(12)).backward()
    whole(*toy_batch(12)).backward()
    assert_same_gradients(gradients(whole), gradients(plain), rtol=0)


# ---- the real module: towers, every Encoded field, BatchNorm, bf16, errors -----------------------
def module(micro_batch_size: int | None, vision: str = "vit", dropout: float = 0.0, **tower) -> ContrastiveModule:
    torch.manual_seed(0)
    if vision == "vit":
        vision_tower = VisionTower(
            "vit_tiny_patch16_224",
            embed_dim=16,
            model_kwargs={
                "img_size": 32,
                "patch_size": 8,
                "depth": 2,
                "proj_drop_rate": dropout,
                "drop_path_rate": dropout,
            },
            **tower,
        )
    else:
        vision_tower = VisionTower(vision, embed_dim=16, **tower)
    text_tower = TextTower(vocab_size=40, context_length=8, width=32, depth=2, heads=2, embed_dim=16, dropout=dropout)
    terms = [InfoNCE(), TokenwiseInfoNCE(token_dim=8), SimCLR(hidden_dim=16, out_dim=8)]
    return ContrastiveModule(vision_tower, text_tower, terms, micro_batch_size=micro_batch_size)


def real_batch(n: int = 8) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    lengths = torch.randint(3, 9, (n,), generator=g)
    text = torch.randint(1, 40, (n, 8), generator=g)
    text[torch.arange(8)[None] >= lengths[:, None]] = 0  # padding after each caption's end
    return {
        "image": torch.randn(n, 3, 32, 32, generator=g),
        "text": text,
        "views": torch.randn(n, 2, 3, 32, 32, generator=g),
        "index": torch.arange(n),
    }


def module_gradients(
    model: ContrastiveModule, batch: dict[str, torch.Tensor], seed: int = 3
) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    total, _ = model.objective(model.encode(batch))
    total.backward()
    return gradients(model)


def float64(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.double() if v.is_floating_point() else v for k, v in batch.items()}


def test_module_micro_batches_equal_the_plain_step_on_vit_and_text_towers() -> None:
    """The real towers (a BatchNorm-free ViT, the text transformer) with global, token (FILIP) and
    view (SLIP) terms: batch 8 in micro-batches of 2 equals the plain step (float64, 1e-9)."""
    batch = float64(real_batch())
    expected = module_gradients(module(None).double(), batch)
    actual = module_gradients(module(2).double(), batch)
    assert_same_gradients(actual, expected, rtol=1e-9)


def test_module_replays_dropout_and_drop_path_in_both_towers() -> None:
    batch = float64(real_batch())
    cached = module(2, dropout=0.2).double()
    reference = module(None, dropout=0.2).double()
    # The reference: the same micro-batches encoded with autograd, in the same order.
    torch.manual_seed(3)
    reference.objective(concatenate([reference._encode(chunk) for chunk in micro_batches(batch, 2)]))[0].backward()
    assert_same_gradients(module_gradients(cached, batch), gradients(reference), rtol=1e-9)


def test_batchnorm_statistics_are_updated_by_the_first_pass_only() -> None:
    """A ResNet tower normalises per micro-batch; its running statistics after the cached step are
    those of one pass over the micro-batches (the replay does not count twice)."""
    batch = real_batch()
    cached, first_pass = module(2, vision="resnet10t"), module(None, vision="resnet10t")
    module_gradients(cached, batch)
    with torch.no_grad():
        for chunk in micro_batches(batch, 2):
            first_pass._encode(chunk)
    for (name, buffer), expected in zip(
        cached.vision_tower.named_buffers(), first_pass.vision_tower.buffers(), strict=True
    ):
        torch.testing.assert_close(buffer, expected, msg=name)
    assert cached.vision_tower.backbone.bn1.num_batches_tracked == 2 * 4  # two images (and views) per chunk


def test_bf16_autocast_is_replayed() -> None:
    """The replay runs in the backward, outside the autocast region: it re-enters bf16 autocast
    (each of the 4 micro-batches runs in bf16 twice), and the gradient is the plain step's up to
    bf16 rounding."""
    batch = real_batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = module_gradients(module(None), batch)
    cached, dtypes = module(2), []
    cached.vision_tower.proj.register_forward_hook(lambda layer, inputs, output: dtypes.append(output.dtype))
    torch.manual_seed(3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        total, _ = cached.objective(cached.encode(batch))
    total.backward()  # outside autocast, as Lightning calls it
    assert dtypes == [torch.bfloat16] * 8
    actual = gradients(cached)
    assert actual.keys() == expected.keys()
    flat = lambda grads: torch.cat([g.flatten() for g in grads.values()])  # noqa: E731
    assert (flat(actual) - flat(expected)).norm() < 0.05 * flat(expected).norm()


class _Data:
    """What ``ContrastiveModule.pixels`` reads from a trainer: its datamodule's image transform and
    its precision plugin (here "64-true", which casts float inputs to float64 as Lightning does)."""

    def __init__(self) -> None:
        self.datamodule = SimpleNamespace(image_transform=EvalImageTransform(32, (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)))
        self.strategy = SimpleNamespace(precision_plugin=DoublePrecision())


def test_uint8_batches_are_normalised_per_micro_batch_with_the_plain_steps_gradient() -> None:
    """A batch of uint8 images (ShapesWorld's loaders hand them so) is normalised by the
    datamodule's transform one micro-batch at a time: the cached step's gradient equals the plain
    step's on the batch normalised whole (float64, 1e-9), and no float copy of the whole batch is
    made (each tower call sees one micro-batch)."""
    g = torch.Generator().manual_seed(2)
    pixels = {"image": torch.randint(0, 256, (8, 3, 32, 32), generator=g, dtype=torch.uint8),
              "views": torch.randint(0, 256, (8, 2, 3, 32, 32), generator=g, dtype=torch.uint8)}  # fmt: skip
    batch = real_batch() | pixels
    transform = _Data().datamodule.image_transform
    normalised = float64(batch | {k: transform.normalize(v) for k, v in pixels.items()})
    expected = module_gradients(module(None).double(), normalised)
    cached = module(2).double()
    cached._trainer = _Data()  # type: ignore[assignment]
    seen: list[int] = []
    cached.vision_tower.register_forward_pre_hook(lambda tower, args: seen.append(args[0].shape[0]))
    actual = module_gradients(cached, {k: v if k in pixels else normalised[k] for k, v in batch.items()})
    assert_same_gradients(actual, expected, rtol=1e-9)
    assert max(seen) <= 2 * 2  # a micro-batch's images, or its two views flattened


def test_uint8_images_without_a_normaliser_are_refused_with_the_fix() -> None:
    batch = real_batch() | {"image": torch.zeros(8, 3, 32, 32, dtype=torch.uint8)}
    with pytest.raises(UserError, match="torch.uint8 images but the data NoneType has no image_transform.normalize"):
        module(None).encode(batch)


@pytest.mark.parametrize("size", [0, -2, 1.5])
def test_micro_batch_size_must_be_a_positive_number_of_rows(size) -> None:
    with pytest.raises(UserError, match="model.micro_batch_size must be a positive number of rows"):
        module(size)


def test_a_micro_batch_size_that_does_not_divide_the_batch_is_named() -> None:
    with pytest.raises(UserError, match="micro_batch_size 3 does not divide this process's batch of 8 rows"):
        module(3).encode(real_batch())


# ---- gradient checkpointing -------------------------------------------------------------------
@pytest.mark.parametrize("vision", ["vit", "resnet10t"])
def test_gradient_checkpointing_leaves_the_gradients_unchanged(vision: str) -> None:
    batch = real_batch()
    plain = module(None, vision=vision)
    checkpointed = module(None, vision=vision, grad_checkpointing=True)
    checkpointed.text_tower.grad_checkpointing = True
    expected = module_gradients(plain, batch)
    actual = module_gradients(checkpointed, batch)
    assert actual.keys() == expected.keys()
    for name, grad in expected.items():
        torch.testing.assert_close(actual[name], grad, rtol=1e-6, atol=1e-6 * grad.abs().max().item(), msg=name)


def test_a_backbone_timm_cannot_checkpoint_is_refused_by_name() -> None:
    with pytest.raises(UserError, match="timm cannot checkpoint 'dla34' .gradient checkpointing not supported"):
        VisionTower("dla34", embed_dim=16, grad_checkpointing=True)
