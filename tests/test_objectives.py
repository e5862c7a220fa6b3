"""Generic checks for every objective term class (new terms are picked up automatically):
gradient flow, determinism, and DDP exactness against a single process."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from terms import all_term_classes, build_term, ddp_gradients, run_two_processes, toy_batch, toy_model
from variants.losses import clip_loss
from variants.objectives import InfoNCE, Term

TERMS = all_term_classes()


def test_terms_are_discovered() -> None:
    assert InfoNCE in TERMS


@pytest.mark.parametrize("cls", TERMS, ids=lambda c: c.__name__)
def test_every_parameter_gets_a_gradient(cls: type[Term]) -> None:
    model = toy_model(cls)
    loss = model(*toy_batch(6))
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        used = name.startswith("term.") or name.split(".")[1] in {"image", "text"} or _needs(cls, name)
        if used:
            assert param.grad is not None and param.grad.abs().sum() > 0, f"no gradient for {name}"


def _needs(cls: type[Term], name: str) -> bool:
    return name.split(".")[1] in cls.needs


@pytest.mark.parametrize("cls", TERMS, ids=lambda c: c.__name__)
def test_deterministic(cls: type[Term]) -> None:
    first, second = toy_model(cls), toy_model(cls)
    batch = toy_batch(6)
    a, b = first(*batch), second(*batch)
    a.backward()
    b.backward()
    assert torch.equal(a, b)
    for (name, p), q in zip(first.named_parameters(), second.parameters()):
        assert (p.grad is None and q.grad is None) or torch.equal(p.grad, q.grad), name


@pytest.mark.parametrize("cls", TERMS, ids=lambda c: c.__name__)
def test_ddp_gradients_equal_single_process_on_the_global_batch(cls: type[Term], tmp_path) -> None:
    """DESIGN.md's distributed rule: 2 gloo processes with local batch b give the same
    parameter gradients as one process with batch 2b."""
    n = 8
    single = toy_model(cls)
    single(*toy_batch(n)).backward()
    run_two_processes(ddp_gradients, cls, n, str(tmp_path))
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    expected = {name: p.grad for name, p in single.named_parameters() if p.grad is not None}
    assert ranks[0].keys() == expected.keys()
    for name, grad in expected.items():
        torch.testing.assert_close(ranks[0][name], ranks[1][name])
        torch.testing.assert_close(ranks[0][name], grad, rtol=1e-9, atol=1e-12)


# ---- InfoNCE specifics ------------------------------------------------------------------
def test_infonce_is_clip_loss_with_its_temperature() -> None:
    term = InfoNCE(init_temperature=0.05)
    image, text = (F.normalize(torch.randn(5, 8), dim=-1) for _ in range(2))
    from variants.towers import Encoded

    out = term(Encoded(image=image, text=text))
    torch.testing.assert_close(out["loss"], clip_loss(image, text, 20.0))
    torch.testing.assert_close(out["logit_scale"], torch.tensor(20.0))


def test_infonce_initial_scale_and_clamp() -> None:
    term = InfoNCE()
    assert math.isclose(term.logit_scale.exp().item(), 1 / 0.07, rel_tol=1e-6)
    with torch.no_grad():
        term.logit_scale.fill_(10.0)
    term.post_step()
    assert math.isclose(term.logit_scale.exp().item(), 100.0, rel_tol=1e-6)


def test_fixed_temperature_is_not_learned() -> None:
    term = build_term(InfoNCE)
    assert term.logit_scale.requires_grad
    assert not InfoNCE(learn_temperature=False).logit_scale.requires_grad
