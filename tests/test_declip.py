"""DeCLIP's terms (variants/objectives/{multiview,simsiam,masked_language,nearest_neighbour}.py)
against naive references written from the formulas, and their contracts: stop-gradients, the
queue's FIFO order, the chunked neighbour search, the one-line errors. The generic checks
(gradient flow, determinism, bf16, 2-process DDP) run for them in test_objectives.py."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from common.errors import UserError
from variants.distributed import GlobalBatchNorm1d
from variants.losses import masked_token_loss, nearest_neighbours, simsiam_loss
from variants.objectives import MaskedLanguageModel, MultiViewInfoNCE, NearestNeighbourInfoNCE, SimSiam
from variants.towers import Encoded

from helpers.terms import TOY_TEXT, TOY_VISION, build_term

D = 6


def unit(*shape: int, seed: int = 0) -> torch.Tensor:
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64), dim=-1)


def naive_infonce(a: torch.Tensor, b: torch.Tensor, scale: float) -> float:
    """-1/N sum_i log( exp(s a_i.b_i) / sum_j exp(s a_i.b_j) ), written out with loops."""
    total = 0.0
    for i in range(a.shape[0]):
        logits = [scale * float(a[i] @ b[j]) for j in range(b.shape[0])]
        total -= logits[i] - math.log(sum(math.exp(x) for x in logits))
    return total / a.shape[0]


def test_multiview_infonce_is_the_mean_of_the_four_view_pairs() -> None:
    n = 5
    views, text, text_view = torch.randn(n, 2, D, dtype=torch.float64), unit(n, D, seed=1), unit(n, D, seed=2)
    term = MultiViewInfoNCE(init_temperature=0.1).double()
    loss = term(Encoded(image_views=views, text=text, text_view=text_view))["loss"]
    images = [F.normalize(views[:, v], dim=-1) for v in range(2)]
    s = term.logit_scale().item()  # 1/0.1, rounded as a float32 log
    expected = (
        sum(0.5 * (naive_infonce(i, t, s) + naive_infonce(t, i, s)) for i in images for t in (text, text_view)) / 4
    )
    assert loss.item() == pytest.approx(expected, rel=1e-9)


def test_simsiam_is_the_symmetric_negative_cosine_with_stop_gradient() -> None:
    p_a, z_a, p_b, z_b = (torch.randn(4, D, dtype=torch.float64, requires_grad=True) for _ in range(4))
    loss = simsiam_loss(p_a, z_a, p_b, z_b)
    with torch.no_grad():
        expected = -0.5 * sum(
            float(p[i] @ z[i]) / float(p[i].norm() * z[i].norm()) / 4
            for p, z in ((p_a, z_b), (p_b, z_a))
            for i in range(4)
        )
    assert loss.item() == pytest.approx(expected, rel=1e-9)
    loss.backward()
    assert z_a.grad is None and z_b.grad is None  # targets are constants: sg(z)
    assert p_a.grad.abs().sum() > 0 and p_b.grad.abs().sum() > 0


def test_simsiam_mlps_are_declips() -> None:
    term = SimSiam()
    term.attach(SimpleNamespace(embed_dim=128), TOY_TEXT)
    shapes = [(type(m).__name__, tuple(m.weight.shape)) for m in term.projector if hasattr(m, "weight")]
    assert shapes == [("Linear", (1024, 128)), ("GlobalBatchNorm1d", (1024,)), ("Linear", (1024, 1024)),
                      ("GlobalBatchNorm1d", (1024,)), ("Linear", (1024, 1024)), ("GlobalBatchNorm1d", (1024,))]  # fmt: skip
    assert [type(m) for m in term.predictor] == [nn.Linear, GlobalBatchNorm1d, nn.ReLU, nn.Linear]
    assert (term.predictor[0].in_features, term.predictor[0].out_features, term.predictor[3].out_features) == (
        1024,
        512,
        1024,
    )


def test_simsiam_reads_the_projection_before_normalisation() -> None:
    """Scaling a view's projection changes SimSiam's loss (BatchNorm sees the scale before the
    cosine); normalised inputs would make it invariant."""
    term = build_term(SimSiam).double()
    views = torch.randn(6, 2, 8, dtype=torch.float64)
    scaled = views * torch.linspace(0.5, 3, 6, dtype=torch.float64)[:, None, None]
    a, b = (term(Encoded(image_views=v))["loss"] for v in (views, scaled))
    assert not torch.isclose(a, b)


def test_masked_language_model_predicts_only_the_masked_positions() -> None:
    term = build_term(MaskedLanguageModel).double()
    tokens = torch.randn(3, 5, TOY_TEXT.token_dim, dtype=torch.float64)
    labels = torch.full((3, 5), -100)
    labels[0, 1], labels[1, 3], labels[2, 2], labels[2, 4] = 4, 0, 6, 2
    out = term(Encoded(text_tokens=tokens, mlm_labels=labels))
    expected = 0.0
    for b, j in zip(*torch.where(labels != -100), strict=True):
        logits = term.head(tokens[b, j]).detach()
        expected -= float(logits[labels[b, j]] - torch.logsumexp(logits, 0)) / 4
    assert out["loss"].item() == pytest.approx(expected, rel=1e-9)
    assert out["masked_tokens"] == 4
    # what is not masked does not matter
    changed = tokens.clone()
    changed[labels == -100] += 5
    assert term(Encoded(text_tokens=changed, mlm_labels=labels))["loss"].item() == pytest.approx(expected, rel=1e-9)


def test_masked_language_model_without_masked_tokens_is_zero_with_a_gradient_path() -> None:
    term = build_term(MaskedLanguageModel)
    tokens = torch.randn(2, 4, TOY_TEXT.token_dim, requires_grad=True)
    loss = term(Encoded(text_tokens=tokens, mlm_labels=torch.full((2, 4), -100)))["loss"]
    loss.backward()
    assert loss.item() == 0 and masked_token_loss(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long), 0) == 0


def test_masked_language_model_needs_a_tower_with_token_outputs_and_a_vocabulary() -> None:
    with pytest.raises(UserError, match=r"has no token outputs \(token_dim\)"):
        MaskedLanguageModel().attach(TOY_VISION, SimpleNamespace(embed_dim=8))
    with pytest.raises(UserError, match=r"has no a vocabulary size|has no vocabulary size"):
        MaskedLanguageModel().attach(TOY_VISION, SimpleNamespace(embed_dim=8, token_dim=4))


@pytest.mark.parametrize("chunk", [1, 3, 7, 100])
def test_chunked_nearest_neighbours_equal_the_brute_force_search(chunk: int) -> None:
    queries, bank = torch.randn(9, D), torch.randn(23, D) * torch.rand(23, 1)  # unnormalised: cosine, not dot
    expected = (F.normalize(queries, dim=-1) @ F.normalize(bank, dim=-1).T).argmax(1)
    assert torch.equal(nearest_neighbours(queries, bank, chunk), expected)


def nns_term(queue_size: int = 12) -> NearestNeighbourInfoNCE:
    torch.manual_seed(0)
    term = NearestNeighbourInfoNCE(queue_size=queue_size, lookup_chunk=5, init_temperature=0.1)
    term.attach(TOY_VISION, SimpleNamespace(embed_dim=D))
    return term.double()


def nns_batch(n: int = 3, seed: int = 0) -> Encoded:
    return Encoded(
        image_views=torch.randn(n, 2, D, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)),
        text=unit(n, D, seed=seed + 1).requires_grad_(),
        text_view=unit(n, D, seed=seed + 2).requires_grad_(),
    )


def test_nearest_neighbour_loss_against_a_brute_force_reference() -> None:
    term = nns_term()
    queue = term.queue.clone()
    batch = nns_batch()
    out = term(batch)
    images = [F.normalize(batch.image_views[:, v], dim=-1) for v in range(2)]
    neighbours = [queue[(t @ queue.T).argmax(1)] for t in (batch.text.detach(), batch.text_view.detach())]
    s = term.logit_scale().item()
    expected = sum(naive_infonce(i, n, s) for i in images for n in neighbours) / 4
    assert out["loss"].item() == pytest.approx(expected, rel=1e-9)
    out["loss"].backward()
    assert batch.text.grad is None and batch.text_view.grad is None  # the texts only query the queue


def test_queue_is_first_in_first_out_after_the_lookup() -> None:
    term = nns_term(queue_size=10)
    initial = term.queue.clone()
    assert torch.allclose(initial.norm(dim=-1), torch.ones(10, dtype=torch.float64))  # random unit vectors
    first, second = nns_batch(seed=0), nns_batch(seed=5)
    term(first)
    texts = torch.cat([first.text, first.text_view]).detach()
    torch.testing.assert_close(term.queue[:6], texts)  # renormalised: equal to rounding
    assert torch.equal(term.queue[6:], initial[6:])
    assert term.queue_position == 6
    # the lookup happened before the enqueue: a text never finds itself in the first step
    assert term(first)["neighbour_cosine"] == pytest.approx(1.0)  # ... but does in the next
    term(second)  # 12 + 6 > 10: the write wraps around to the start
    assert term.queue_position == (6 + 6 + 6) % 10
    torch.testing.assert_close(term.queue[2:8], torch.cat([second.text, second.text_view]).detach())
    term.eval()  # evaluation never writes
    before = term.queue.clone()
    term(nns_batch(seed=9))
    assert torch.equal(term.queue, before)


def test_queue_travels_with_the_state_dict() -> None:
    term = nns_term()
    term(nns_batch())
    restored = nns_term()
    restored.queue.zero_()
    restored.load_state_dict(term.state_dict())
    assert torch.equal(restored.queue, term.queue) and restored.queue_position == term.queue_position == 6


def test_a_queue_smaller_than_one_steps_texts_is_refused() -> None:
    with pytest.raises(UserError, match="queue_size 5 is smaller than the 6 text embeddings one step enqueues"):
        nns_term(queue_size=5)(nns_batch())


# ---- the real module: views replace the image, every DeCLIP field through gradient caching -------
def declip_module(micro_batch_size: int | None = None):
    from variants.module import ContrastiveModule
    from variants.objectives import TokenwiseInfoNCE
    from variants.towers import TextTower, VisionTower

    torch.manual_seed(0)
    vision = VisionTower(
        "vit_tiny_patch16_224", embed_dim=16, model_kwargs={"img_size": 32, "patch_size": 8, "depth": 2}
    )
    text = TextTower(vocab_size=40, context_length=8, width=32, depth=2, heads=2, embed_dim=16)
    terms = [
        MultiViewInfoNCE(weight=0.4),
        SimSiam(weight=0.2, hidden_dim=16, out_dim=16, predictor_dim=8),
        MaskedLanguageModel(weight=0.2),
        NearestNeighbourInfoNCE(weight=0.2, queue_size=64, lookup_chunk=10),
        TokenwiseInfoNCE(weight=0.2, token_dim=8),  # DeFILIP
    ]
    return ContrastiveModule(vision, text, terms, micro_batch_size=micro_batch_size)


def declip_batch(n: int = 8) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)

    def captions(width: int) -> torch.Tensor:
        lengths = torch.randint(3, width + 1, (n,), generator=g)
        ids = torch.randint(1, 40, (n, width), generator=g)
        ids[torch.arange(width)[None] >= lengths[:, None]] = 0
        return ids

    text = captions(8)
    labels = torch.where(
        (torch.rand(n, 8, generator=g) < 0.3) & (text > 0), torch.randint(1, 40, (n, 8), generator=g), -100
    )
    return {
        "image": torch.full((n, 3, 32, 32), float("nan")),  # DeCLIP never encodes the un-augmented image
        "text": text,
        "text_view": captions(6),
        "mlm_labels": labels,
        "views": torch.randn(n, 2, 3, 32, 32, generator=g),
        "index": torch.arange(n),
    }


def test_declip_module_trains_on_the_views_and_micro_batches_equal_the_plain_step() -> None:
    batch = {k: v.double() if v.is_floating_point() else v for k, v in declip_batch().items()}
    plain = declip_module().double()
    encoded = plain.encode(batch)
    assert torch.isfinite(encoded.image).all()
    torch.testing.assert_close(encoded.image, F.normalize(encoded.image_views[:, 0], dim=-1))
    assert encoded.image_tokens.shape[:2] == (8, 16) and encoded.text_view.shape == (8, 16)
    assert torch.equal(encoded.mlm_labels, batch["mlm_labels"])
    total, outputs = plain.objective(encoded)
    assert set(outputs) == {
        "multiviewinfonce",
        "simsiam",
        "maskedlanguagemodel",
        "nearestneighbourinfonce",
        "tokenwiseinfonce",
    }
    total.backward()
    expected = {n: p.grad.clone() for n, p in plain.named_parameters() if p.grad is not None}
    cached = declip_module(micro_batch_size=2).double()
    cached.objective(cached.encode(batch))[0].backward()
    actual = {n: p.grad.clone() for n, p in cached.named_parameters() if p.grad is not None}
    assert actual.keys() == expected.keys()
    for name, grad in expected.items():
        torch.testing.assert_close(actual[name], grad, rtol=1e-9, atol=1e-12, msg=name)


@pytest.mark.parametrize(
    ("missing", "message"),
    [
        ("views", "set data.init_args.views"),
        ("text_view", "set data.init_args.text_views"),
        ("mlm_labels", "set data.init_args.text_masking"),
    ],
)
def test_a_declip_batch_without_a_field_names_the_data_option(missing: str, message: str) -> None:
    batch = declip_batch()
    del batch[missing]
    with pytest.raises(UserError, match=message):
        declip_module().encode(batch)
