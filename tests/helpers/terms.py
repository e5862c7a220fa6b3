"""Test helpers: every objective term class, toy towers, and a 2-process gloo runner."""

from __future__ import annotations

import inspect
import os
import socket
from collections.abc import Callable
from types import SimpleNamespace

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

import variants.objectives
from variants.grad_cache import concatenate, encode_in_micro_batches, micro_batches
from variants.objectives.base import Term
from variants.towers import Encoded

from helpers.discovery import concrete_subclasses

EMBED, IMAGE_WIDTH, TEXT_WIDTH, PATCHES, LENGTH, FEATURES, VOCAB = 8, 12, 10, 5, 6, 16, 7
# What a term's attach() reads from real towers, at the toy sizes.
TOY_VISION = SimpleNamespace(embed_dim=EMBED, token_dim=IMAGE_WIDTH, feature_dim=IMAGE_WIDTH)
TOY_TEXT = SimpleNamespace(embed_dim=EMBED, token_dim=TEXT_WIDTH, vocab_size=VOCAB)


def all_term_classes() -> list[type[Term]]:
    """Every concrete Term subclass in variants/objectives/ (a new term is tested the moment its
    file exists)."""
    return concrete_subclasses(Term, variants.objectives)


def build_term(cls: type[Term], **kwargs) -> Term:
    """A term with its defaults (small widths where it has them), attached to toy towers."""
    params = inspect.signature(cls).parameters
    # queue_size 40 > 2 x 8 texts per step, searched 16 rows at a time: the lookup crosses chunks
    small = {"hidden_dim": 32, "out_dim": 8, "token_dim": 6, "predictor_dim": 4, "queue_size": 40, "lookup_chunk": 16}
    term = cls(**{k: v for k, v in small.items() if k in params} | kwargs)
    term.attach(TOY_VISION, TOY_TEXT)
    return term


class ToyTowers(nn.Module):
    """Linear 'encoders' over fixed random features, producing every field of Encoded; with
    ``dropout`` > 0 each encoder's input goes through its own dropout (random draws to replay)."""

    def __init__(self, dropout: float = 0.0) -> None:
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.image = nn.Linear(FEATURES, EMBED)
        self.text = nn.Linear(FEATURES, EMBED)
        self.image_tokens = nn.Linear(FEATURES, IMAGE_WIDTH)
        self.text_tokens = nn.Linear(FEATURES, TEXT_WIDTH)
        self.views = nn.Linear(FEATURES, IMAGE_WIDTH)
        self.image_views = nn.Linear(FEATURES, EMBED)
        self.text_view = nn.Linear(FEATURES, EMBED)

    def forward(self, image_x: torch.Tensor, text_x: torch.Tensor, lengths: torch.Tensor) -> Encoded:
        image_x, text_x = self.drop(image_x), self.drop(text_x)
        mask = torch.arange(text_x.shape[1])[None] < lengths[:, None]
        valid = mask.to(text_x.dtype)[..., None]
        # Two 'augmented views': different subsets of the patches through the view trunk.
        views = torch.stack([self.views(image_x[:, :3].mean(1)), self.views(image_x[:, 2:].mean(1))], dim=1)
        image_views = torch.stack(
            [self.image_views(image_x[:, :3].mean(1)), self.image_views(image_x[:, 2:].mean(1))], 1
        )
        # The second text view: the real positions without the first, and 'masked' labels: a
        # pure function of each row's content (the same rows give the same labels under DDP).
        later = valid * (torch.arange(text_x.shape[1]) > 0).to(text_x.dtype)[:, None]
        labels = (text_x[..., 1].abs() * 100).long() % VOCAB
        labels = torch.where(mask & (text_x[..., 0] > 0.3), labels, -100)
        return Encoded(
            image=F.normalize(self.image(image_x.mean(1)), dim=-1),
            text=F.normalize(self.text((text_x * valid).sum(1) / valid.sum(1)), dim=-1),  # padding-free
            image_tokens=self.image_tokens(image_x),
            text_tokens=self.text_tokens(text_x),
            text_mask=mask,
            views=views,
            image_views=image_views,
            text_view=F.normalize(self.text_view((text_x * later).sum(1) / later.sum(1).clamp_min(1)), dim=-1),
            mlm_labels=labels,
        )


class ToyModel(nn.Module):
    """Toy towers and terms; ``forward`` returns the weighted total loss. ``micro_batch_size``
    encodes with gradient caching; ``chunked`` encodes micro-batch by micro-batch WITH autograd
    (the reference a cached step must equal when the towers draw random numbers)."""

    def __init__(self, terms: list[Term], dropout: float = 0.0) -> None:
        super().__init__()
        self.towers, self.terms = ToyTowers(dropout), nn.ModuleList(terms)
        self.micro_batch_size: int | None = None
        self.chunked = False

    def encode(self, batch: dict[str, torch.Tensor]) -> Encoded:
        return self.towers(batch["image"], batch["text"], batch["lengths"])

    def forward(self, image_x: torch.Tensor, text_x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        batch = {"image": image_x, "text": text_x, "lengths": lengths}
        if self.micro_batch_size is None:
            encoded = self.encode(batch)
        elif self.chunked:
            encoded = concatenate([self.encode(chunk) for chunk in micro_batches(batch, self.micro_batch_size)])
        else:
            encoded = encode_in_micro_batches(self.encode, batch, self.micro_batch_size, self.towers)
        return sum(term.weight * term(encoded)["loss"] for term in self.terms)


def toy_batch(n: int, seed: int = 0, dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    image_x = torch.randn(n, PATCHES, FEATURES, generator=g, dtype=dtype)
    text_x = torch.randn(n, LENGTH, FEATURES, generator=g, dtype=dtype)
    lengths = torch.randint(2, LENGTH + 1, (n,), generator=g)
    lengths[n // 2 :] = lengths[n // 2 :].clamp(max=LENGTH - 1)  # the second half needs less padding
    return image_x, text_x, lengths


def toy_model(
    *classes: type[Term], dtype: torch.dtype = torch.float64, micro_batch_size: int | None = None, dropout: float = 0.0
) -> ToyModel:
    torch.manual_seed(0)
    model = ToyModel([build_term(cls) for cls in classes], dropout).to(dtype)
    model.micro_batch_size = micro_batch_size
    return model


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_two_processes(fn: Callable, *args) -> None:
    """Runs fn(rank, world_size, *args) in 2 gloo processes."""
    port = free_port()
    mp.spawn(_entry, args=(port, fn, args), nprocs=2, join=True)


def _entry(rank: int, port: int, fn: Callable, args: tuple) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        fn(rank, 2, *args)
    finally:
        dist.destroy_process_group()


def _chunked(cls: type[Term]) -> type[Term]:
    """``cls`` on its chunked, recomputing loss at toy sizes: blocks of 3 rows, so batches of 6
    and 12 split evenly, and 8 rows (4 per DDP rank) leave a remainder block."""

    def __init__(self, **kwargs) -> None:
        cls.__init__(self, **{"chunk_size": 3} | kwargs)

    return type(f"Chunked{cls.__name__}", (cls,), {"__init__": __init__, "__module__": __name__})


def _chunked_terms() -> tuple[type[Term], ...]:
    from variants.objectives import InfoNCE, MultiViewInfoNCE, Sigmoid

    return tuple(_chunked(cls) for cls in (InfoNCE, Sigmoid, MultiViewInfoNCE))


#: The terms whose loss has a chunked path, forced onto it (every generic test runs them too);
#: named here, so pickle finds them in the DDP processes.
CHUNKED = _chunked_terms()
ChunkedInfoNCE, ChunkedSigmoid, ChunkedMultiViewInfoNCE = CHUNKED


def _declip() -> tuple[type[Term], ...]:
    from variants.objectives import MaskedLanguageModel, MultiViewInfoNCE, NearestNeighbourInfoNCE, SimSiam

    return (MultiViewInfoNCE, SimSiam, MaskedLanguageModel, NearestNeighbourInfoNCE)


DECLIP = _declip()


def term_cases() -> list[tuple[type[Term], ...]]:
    """Every term alone (and on its chunked path, ``CHUNKED``), then the multi-term presets'
    combinations (SLIP, CyCLIP + MMD, ...)."""
    from variants.objectives import MMD, Adversarial, Cyclic, InfoNCE, Sigmoid, SimCLR, TokenwiseInfoNCE

    combined = [(InfoNCE, Cyclic, MMD), (InfoNCE, SimCLR), (Sigmoid, TokenwiseInfoNCE, Adversarial), DECLIP]
    return [(cls,) for cls in (*all_term_classes(), *CHUNKED)] + combined  # type: ignore[misc]


def case_id(classes: tuple[type[Term], ...]) -> str:
    return "+".join(c.__name__ for c in classes)


def ddp_gradients(rank: int, world: int, cases: list[tuple[type[Term], ...]], n_global: int, out_dir: str) -> None:
    """For each case (a tuple of term classes): one DDP step on this rank's half of the global
    toy batch, once plain and once in micro-batches of 2 rows with gradient caching; saves both
    averaged gradients. Ranks get captions of different padded lengths, as batches padded to their
    own longest caption do. Then the GlobalBatchNorm1d case. All cases share one pair of
    processes: starting them costs more than the cases."""
    image_x, text_x, lengths = toy_batch(n_global)
    rows = slice(rank * n_global // world, (rank + 1) * n_global // world)
    local_text = text_x[rows, : LENGTH - rank]  # rank 1's batch is padded one position less
    for classes in cases:
        for micro_batch_size, kind in ((None, "plain"), (2, "cached")):
            model = toy_model(*classes, micro_batch_size=micro_batch_size)
            ddp = nn.parallel.DistributedDataParallel(model, find_unused_parameters=True)  # unused token layers
            ddp(image_x[rows], local_text, lengths[rows]).backward()
            grads = {name: p.grad for name, p in model.named_parameters() if p.grad is not None}
            torch.save(grads, os.path.join(out_dir, f"{case_id(classes)}-{kind}{rank}.pt"))
    ddp_batchnorm(rank, world, n_global, out_dir)
    ddp_queue(rank, world, n_global, out_dir)


def queue_steps(model: nn.Module, batches: list[tuple[torch.Tensor, ...]]) -> list[dict[str, torch.Tensor]]:
    """Losses and NNS queue after each training step (the term's parameters are not updated:
    the queue alone carries one step into the next)."""
    term = model.module.terms[0] if hasattr(model, "module") else model.terms[0]
    states = []
    for batch in batches:
        loss = model(*batch)
        loss.backward()
        states.append({"loss": loss.detach(), "queue": term.queue.clone(), "position": term.queue_position.clone()})
    return states


def ddp_queue(rank: int, world: int, n_global: int, out_dir: str) -> None:
    """Two DDP steps of NearestNeighbourInfoNCE on this rank's halves of two global batches: the
    losses (rank 0's) and each rank's queue after each step."""
    from variants.objectives import NearestNeighbourInfoNCE

    rows = slice(rank * n_global // world, (rank + 1) * n_global // world)
    batches = [tuple(t[rows] for t in toy_batch(n_global, seed=s)) for s in (0, 1)]
    model = nn.parallel.DistributedDataParallel(toy_model(NearestNeighbourInfoNCE), find_unused_parameters=True)
    torch.save(queue_steps(model, batches), os.path.join(out_dir, f"queue{rank}.pt"))


def ddp_batchnorm(rank: int, world: int, n_global: int, out_dir: str) -> None:
    """GlobalBatchNorm1d on this rank's half: output, input gradient and running statistics;
    then the same in bf16 (as under autocast), which must not fail."""
    from variants.distributed import GlobalBatchNorm1d

    torch.manual_seed(0)
    norm = GlobalBatchNorm1d(5).double()
    x = torch.randn(n_global, 5, dtype=torch.float64) * 3 + 1
    rows = slice(rank * n_global // world, (rank + 1) * n_global // world)
    local = x[rows].clone().requires_grad_()
    y = norm(local)
    (y * torch.arange(5, dtype=torch.float64)).sum().backward()
    bf16 = GlobalBatchNorm1d(5)(x[rows].float().to(torch.bfloat16))
    torch.save(
        {"y": y.detach(), "grad": local.grad, "mean": norm.running_mean, "var": norm.running_var, "bf16": bf16.dtype},
        os.path.join(out_dir, f"bn{rank}.pt"),
    )
