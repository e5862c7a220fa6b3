"""Generic checks for every objective term class (new terms are picked up automatically):
gradient flow, determinism, bf16 autocast, and DDP exactness against a single process; then
each term's own contract."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from common.errors import UserError
from variants import objectives
from variants.losses import clip_loss, cyclic_losses, filip_similarity, mmd2, siglip_loss
from variants.objectives import MMD, Adversarial, Cyclic, InfoNCE, Sigmoid, SimCLR, Term, TokenwiseInfoNCE
from variants.towers import Encoded

from helpers.terms import (
    CHUNKED,
    DECLIP,
    TOY_TEXT,
    TOY_VISION,
    all_term_classes,
    build_term,
    case_id,
    ddp_gradients,
    run_two_processes,
    toy_batch,
    toy_model,
)

TERMS = all_term_classes()
GENERIC = TERMS + list(CHUNKED)  # every term, and the chunked losses on their chunked path
ids = lambda c: c.__name__  # noqa: E731


def test_discovery_finds_exactly_the_exported_terms() -> None:
    """The generic tests run over the terms found in the files of variants/objectives/; the presets
    name a term as ``variants.objectives.<Name>``, which resolves only what its ``__init__`` exports.
    Both sets must be the same: a term discovery misses goes untested, one not exported cannot be
    named in YAML."""
    exported = {getattr(objectives, name) for name in objectives.__all__} - {Term}
    assert all(isinstance(cls, type) and issubclass(cls, Term) for cls in exported)
    assert set(TERMS) == exported


@pytest.mark.parametrize("cls", GENERIC, ids=ids)
def test_every_parameter_gets_a_gradient(cls: type[Term]) -> None:
    model = toy_model(cls)
    loss = model(*toy_batch(6))
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    used = set(cls.needs - cls.detached) or {"image", "text"}  # token and view terms read only what they need
    for name, param in model.named_parameters():
        if param.requires_grad and (name.startswith("terms.") or name.split(".")[1] in used):
            assert param.grad is not None and param.grad.abs().sum() > 0, f"no gradient for {name}"


@pytest.mark.parametrize("cls", GENERIC, ids=ids)
def test_same_seed_same_loss_and_gradients(cls: type[Term]) -> None:
    first, second = toy_model(cls), toy_model(cls)
    batch = toy_batch(6)
    a, b = first(*batch), second(*batch)
    a.backward()
    b.backward()
    assert torch.equal(a, b)
    for (name, p), q in zip(first.named_parameters(), second.parameters(), strict=True):
        assert (p.grad is None and q.grad is None) or torch.equal(p.grad, q.grad), name


@pytest.mark.parametrize("cls", GENERIC, ids=ids)
def test_bf16_autocast_keeps_the_loss_math_in_float32(cls: type[Term]) -> None:
    """Under bf16 autocast the term returns a float32 loss close to its float32 loss on the same
    (bf16-rounded) record: the reference sees the same inputs, so a choice made from them (NNS's
    nearest neighbour) is the same, and a stateful term sees the same state twice."""
    model = toy_model(cls, dtype=torch.float32)
    batch = toy_batch(8, dtype=torch.float32)
    before = copy.deepcopy(model.state_dict())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        encoded = model.towers(*batch)
        outputs = model.terms[0](encoded)
    assert outputs["loss"].dtype == torch.float32 and torch.isfinite(outputs["loss"])
    assert any(v is not None and v.dtype == torch.bfloat16 for v in vars(encoded).values())
    outputs["loss"].backward()
    model.load_state_dict(before)
    as_float = Encoded(
        **{k: v.float() if v is not None and v.is_floating_point() else v for k, v in vars(encoded).items()}
    )
    reference = model.terms[0](as_float)["loss"]
    torch.testing.assert_close(outputs["loss"], reference, rtol=0.05, atol=0.05)


DDP_CASES = [(cls,) for cls in GENERIC] + [
    (InfoNCE, Cyclic, MMD),
    (InfoNCE, SimCLR),
    (Sigmoid, TokenwiseInfoNCE, Adversarial),
    DECLIP,
]
N_GLOBAL = 8


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every DDP case below, computed by one pair of gloo processes."""
    out = tmp_path_factory.mktemp("ddp")
    run_two_processes(ddp_gradients, DDP_CASES, N_GLOBAL, str(out))
    return out


@pytest.mark.ddp
@pytest.mark.parametrize("classes", DDP_CASES, ids=case_id)
def test_ddp_gradients_equal_single_process_on_the_global_batch(
    classes: tuple[type[Term], ...], ddp_results: Path
) -> None:
    """DESIGN.md's distributed rule: 2 gloo processes with local batch b give the same
    parameter gradients as one process with batch 2b (1e-9 relative, float64), also when each
    process encodes its rows in micro-batches with gradient caching."""
    single = toy_model(*classes)
    single(*toy_batch(N_GLOBAL)).backward()
    expected = {name: p.grad for name, p in single.named_parameters() if p.grad is not None}
    for kind in ("plain", "cached"):
        ranks = [torch.load(ddp_results / f"{case_id(classes)}-{kind}{r}.pt") for r in range(2)]
        assert ranks[0].keys() == expected.keys(), kind
        for name, grad in expected.items():
            torch.testing.assert_close(ranks[0][name], ranks[1][name], msg=f"{kind}: ranks differ on {name}")
            torch.testing.assert_close(
                ranks[0][name], grad, rtol=1e-9, atol=1e-12, msg=f"{kind}: {name} differs from single"
            )


@pytest.mark.ddp
def test_global_batchnorm_across_two_processes_is_batchnorm_on_the_global_batch(ddp_results: Path) -> None:
    n = N_GLOBAL
    torch.manual_seed(0)
    reference = torch.nn.BatchNorm1d(5).double()
    x = (torch.randn(n, 5, dtype=torch.float64) * 3 + 1).requires_grad_()
    y = reference(x)
    (y * torch.arange(5, dtype=torch.float64)).sum().backward()
    halves = [torch.load(ddp_results / f"bn{r}.pt") for r in range(2)]
    torch.testing.assert_close(torch.cat([h["y"] for h in halves]), y.detach())
    # d(sum of both ranks' outputs)/dx: each rank's local gradient covers the global statistics
    torch.testing.assert_close(torch.cat([h["grad"] for h in halves]), x.grad)
    for h in halves:
        torch.testing.assert_close(h["mean"], reference.running_mean)
        torch.testing.assert_close(h["var"], reference.running_var)
        assert h["bf16"] == torch.bfloat16


# ---- construction errors ---------------------------------------------------------------
@pytest.mark.parametrize("weight", [-1.0, float("nan"), float("inf")])
def test_negative_or_non_finite_weight_is_refused(weight: float) -> None:
    with pytest.raises(UserError, match="weight must be a finite number >= 0"):
        InfoNCE(weight=weight)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: InfoNCE(init_temperature=0.0), "init_temperature must be a finite number > 0"),
        (lambda: InfoNCE(max_logit_scale=-1.0), "logit scales must be positive"),
        (lambda: Sigmoid(init_logit_scale=0.0), "logit scales must be positive"),
        (lambda: SimCLR(temperature=0.0), "temperature must be a finite number > 0"),
        (lambda: MMD(sigmas=[]), "sigmas is empty"),
        (lambda: MMD(sigmas=[1.0, -2.0]), r"sigmas\[1\] must be a finite number > 0"),
        (lambda: TokenwiseInfoNCE(chunk_size=-3), "chunk_size must be a finite number > 0"),
        (lambda: InfoNCE(chunk_size=-1), "infonce: chunk_size must be a number of rows >= 0"),
        (lambda: Sigmoid(chunk_size=2.5), "sigmoid: chunk_size must be a number of rows >= 0"),
        (lambda: Adversarial(hidden_dim=0), "hidden_dim must be a finite number > 0"),
    ],
)
def test_impossible_term_settings_are_refused_by_name(build, message: str) -> None:
    with pytest.raises(UserError, match=message):
        build()


def test_a_need_that_encoded_does_not_have_is_refused_at_construction() -> None:
    class Typo(InfoNCE):
        needs = frozenset({"image_token"})  # not "image_tokens": would silently read None

    with pytest.raises(UserError, match="Typo.needs lists image_token, which Encoded does not have"):
        Typo()


def test_token_term_with_a_tower_without_tokens_is_refused() -> None:
    from types import SimpleNamespace

    with pytest.raises(UserError, match="tokenwiseinfonce needs token embeddings but the vision tower"):
        TokenwiseInfoNCE().attach(SimpleNamespace(embed_dim=8), TOY_TEXT)


# ---- each term's own contract ----------------------------------------------------------
def _encoded(n: int = 5, d: int = 8) -> Encoded:
    return Encoded(image=F.normalize(torch.randn(n, d), dim=-1), text=F.normalize(torch.randn(n, d), dim=-1))


def test_infonce_is_clip_loss_with_its_temperature() -> None:
    encoded = _encoded()
    out = InfoNCE(init_temperature=0.05)(encoded)
    torch.testing.assert_close(out["loss"], clip_loss(encoded.image, encoded.text, 20.0))
    torch.testing.assert_close(out["logit_scale"], torch.tensor(20.0))


def test_infonce_initial_scale_and_clamp() -> None:
    term = InfoNCE()
    assert math.isclose(term.logit_scale().item(), 1 / 0.07, rel_tol=1e-6)
    with torch.no_grad():
        term.logit_scale.log_scale.fill_(10.0)
    term.post_step()
    assert math.isclose(term.logit_scale().item(), 100.0, rel_tol=1e-6)
    assert not InfoNCE(learn_temperature=False).logit_scale.log_scale.requires_grad


def test_sigmoid_initialisation_and_value() -> None:
    term, encoded = Sigmoid(), _encoded()
    assert math.isclose(term.logit_scale().item(), 10.0, rel_tol=1e-6) and term.logit_bias.item() == -10.0
    torch.testing.assert_close(term(encoded)["loss"], siglip_loss(encoded.image, encoded.text, 10.0, -10.0))


@pytest.mark.parametrize("cls", [InfoNCE, Sigmoid], ids=ids)
def test_chunk_size_none_chooses_by_size_and_zero_keeps_the_dense_formula(cls: type[Term], monkeypatch) -> None:
    """None: the dense formula while the logits fit one block (2**20 on a CPU), blocks of 2**20
    logits above; 0: dense at any size; n: n rows per block at any size. Each path gives the
    same loss."""
    import variants.objectives.infonce as infonce_module
    import variants.objectives.sigmoid as sigmoid_module

    module, name = (infonce_module, "clip_loss") if cls is InfoNCE else (sigmoid_module, "siglip_loss")
    loss_fn, chunks = getattr(module, name), []

    def spy(*args, **kwargs):
        chunks.append(kwargs["chunk"])
        return loss_fn(*args, **kwargs)

    monkeypatch.setattr(module, name, spy)
    large = Encoded(**{k: v.double() for k, v in vars(_encoded(1100)).items() if v is not None})
    losses = [cls(chunk_size=size).double()(encoded)["loss"] for size, encoded in
              [(None, _encoded(1024)), (None, large), (0, large), (500, large)]]  # fmt: skip
    assert chunks == [None, 2**20 // 1100, None, 500]
    torch.testing.assert_close(losses[1], losses[2], rtol=1e-12, atol=0)
    torch.testing.assert_close(losses[3], losses[2], rtol=1e-12, atol=0)


def test_logit_chunk_keeps_blocks_of_a_fixed_size_and_at_least_32_rows() -> None:
    from variants.losses import logit_chunk

    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert logit_chunk(1024, 1024, cpu) is None and logit_chunk(4096, 4096, gpu) is None
    assert logit_chunk(2048, 2048, cpu) == 512 and logit_chunk(4096, 4096, cpu) == 256
    assert logit_chunk(512, 4096, cpu) == 256  # under DDP: local rows against the gathered columns
    assert logit_chunk(65536, 65536, cpu) == 32 and logit_chunk(65536, 65536, gpu) == 256


def test_cyclic_is_weighted_sum_of_the_two_consistencies() -> None:
    encoded = _encoded()
    inmodal, crossmodal = cyclic_losses(encoded.image, encoded.text)
    out = Cyclic(inmodal_weight=0.25, crossmodal_weight=0.5)(encoded)
    torch.testing.assert_close(out["loss"], 0.25 * inmodal + 0.5 * crossmodal)
    assert Cyclic()(Encoded(image=encoded.image, text=encoded.image))["loss"] < 1e-10  # identical modalities


def test_mmd_uses_median_bandwidths_unless_given() -> None:
    encoded = _encoded(6)
    fixed = MMD(sigmas=[0.5, 1.0])(encoded)["loss"]
    torch.testing.assert_close(fixed, mmd2(encoded.image, encoded.text, torch.tensor([0.5, 1.0])))
    points = torch.cat([encoded.image, encoded.text])
    distances = torch.cdist(points, points)[~torch.eye(12, dtype=torch.bool)]
    expected = distances.median() * torch.tensor([0.5, 1.0, 2.0])
    torch.testing.assert_close(MMD()(encoded)["loss"], mmd2(encoded.image, encoded.text, expected))


def test_adversarial_reverses_the_gradient_into_the_towers_and_not_into_the_discriminator() -> None:
    """The towers must ascend the discriminator's loss: their gradient is -lambda times the
    gradient of the same BCE without reversal, while the discriminator descends it."""
    term = build_term(Adversarial, reversal=0.7)
    image = F.normalize(torch.randn(6, 8), dim=-1).requires_grad_()
    text = F.normalize(torch.randn(6, 8), dim=-1).requires_grad_()
    term(Encoded(image=image, text=text))["loss"].backward()
    reversed_grad, disc_grad = image.grad.clone(), [p.grad.clone() for p in term.parameters()]

    image.grad = None
    term.zero_grad()
    logits = term.discriminator(torch.cat([image, text])).squeeze(-1)
    labels = torch.cat([torch.ones(6), torch.zeros(6)])
    F.binary_cross_entropy_with_logits(logits, labels).backward()
    torch.testing.assert_close(reversed_grad, -0.7 * image.grad)
    for reversed_p, plain_p in zip(disc_grad, [p.grad for p in term.parameters()], strict=True):
        torch.testing.assert_close(reversed_p, plain_p)


def test_adversarial_dann_ramp() -> None:
    term = build_term(Adversarial, reversal=2.0, dann_ramp=True)
    term.progress = 0.0
    assert term.current_lambda() == 0.0
    term.progress = 0.5
    assert math.isclose(term.current_lambda(), 2.0 * (2 / (1 + math.exp(-5)) - 1))
    assert build_term(Adversarial, reversal=2.0).current_lambda() == 2.0


def test_adversarial_embed_dim_defaults_to_the_towers() -> None:
    assert build_term(Adversarial).discriminator[0].in_features == TOY_VISION.embed_dim


def test_filip_term_scores_with_the_tokenwise_similarity() -> None:
    term = build_term(TokenwiseInfoNCE)
    image_tokens, text_tokens = torch.randn(3, 5, TOY_VISION.token_dim), torch.randn(4, 6, TOY_TEXT.token_dim)
    mask = torch.arange(6)[None] < torch.tensor([[2], [6], [3], [4]])
    i2t, t2i = term.score(Encoded(image_tokens=image_tokens), Encoded(text_tokens=text_tokens, text_mask=mask))
    x = F.normalize(term.image_proj(image_tokens), dim=-1)
    y = F.normalize(term.text_proj(text_tokens), dim=-1)
    expected = filip_similarity(x, y, mask)
    torch.testing.assert_close(i2t, expected[0])
    torch.testing.assert_close(t2i, expected[1])


def test_simclr_projector_is_slips_mlp() -> None:
    term = build_term(SimCLR, hidden_dim=64, out_dim=16)
    layers = [type(m).__name__ for m in term.projector]
    assert layers == ["Linear", "GlobalBatchNorm1d", "ReLU", "Linear", "GlobalBatchNorm1d", "ReLU", "Linear"]
    assert term.projector[0].in_features == TOY_VISION.feature_dim and term.projector[-1].out_features == 16
    assert SimCLR().hidden_dim == 4096 and SimCLR().out_dim == 256 and SimCLR().temperature == 0.1


@pytest.mark.ddp
def test_nns_queues_stay_identical_across_ranks_and_equal_the_single_process_queue(ddp_results: Path) -> None:
    """Two steps: every rank enqueues the gathered batch, so both ranks hold the single process's
    queue after each step, and the second step's lookup (which reads the first step's entries)
    gives the single process's loss."""
    from variants.objectives import NearestNeighbourInfoNCE

    from helpers.terms import queue_steps

    single = queue_steps(toy_model(NearestNeighbourInfoNCE), [toy_batch(N_GLOBAL, seed=s) for s in (0, 1)])
    ranks = [torch.load(ddp_results / f"queue{r}.pt") for r in range(2)]
    for step, expected in enumerate(single):
        for rank in ranks:
            torch.testing.assert_close(rank[step]["queue"], expected["queue"], rtol=1e-12, atol=1e-12)
            assert rank[step]["position"] == expected["position"] == (2 * N_GLOBAL * (step + 1)) % 40
    # rank 0's loss is the mean over its rows; the two ranks' mean is the single process's loss
    torch.testing.assert_close(
        (ranks[0][1]["loss"] + ranks[1][1]["loss"]) / 2, single[1]["loss"], rtol=1e-9, atol=1e-12
    )
