"""Test helpers: every objective term class, toy towers, and a 2-process gloo runner."""

from __future__ import annotations

import importlib
import inspect
import os
import pkgutil
import socket
from collections.abc import Callable

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

import variants.objectives
from variants.objectives.base import Term
from variants.towers import Encoded

EMBED, IMAGE_WIDTH, TEXT_WIDTH, PATCHES, LENGTH, FEATURES = 8, 12, 10, 5, 6, 16


def all_term_classes() -> list[type[Term]]:
    """Every concrete Term subclass in variants/objectives/, imported file by file, so a new
    term is tested the moment its file exists."""
    for info in pkgutil.iter_modules(variants.objectives.__path__):
        importlib.import_module(f"variants.objectives.{info.name}")
    found, stack = [], list(Term.__subclasses__())
    while stack:
        cls = stack.pop()
        stack += cls.__subclasses__()
        if not inspect.isabstract(cls) and cls.__module__.startswith("variants.objectives"):
            found.append(cls)
    return sorted(set(found), key=lambda c: c.__name__)


def build_term(cls: type[Term]) -> Term:
    """A term with its defaults, told the toy sizes where its constructor asks for them."""
    sizes = {"embed_dim": EMBED, "image_token_dim": IMAGE_WIDTH, "text_token_dim": TEXT_WIDTH}
    params = inspect.signature(cls).parameters
    return cls(**{k: v for k, v in sizes.items() if k in params})


class ToyTowers(nn.Module):
    """Linear 'encoders' over fixed random features, producing every field of Encoded."""

    def __init__(self) -> None:
        super().__init__()
        self.image = nn.Linear(FEATURES, EMBED)
        self.text = nn.Linear(FEATURES, EMBED)
        self.image_tokens = nn.Linear(FEATURES, IMAGE_WIDTH)
        self.text_tokens = nn.Linear(FEATURES, TEXT_WIDTH)

    def forward(self, image_x: torch.Tensor, text_x: torch.Tensor, lengths: torch.Tensor) -> Encoded:
        mask = torch.arange(LENGTH)[None] < lengths[:, None]
        return Encoded(
            image=F.normalize(self.image(image_x.mean(1)), dim=-1),
            text=F.normalize(self.text(text_x.mean(1)), dim=-1),
            image_tokens=self.image_tokens(image_x),
            text_tokens=self.text_tokens(text_x),
            text_mask=mask,
        )


class ToyModel(nn.Module):
    def __init__(self, term: Term) -> None:
        super().__init__()
        self.towers, self.term = ToyTowers(), term

    def forward(self, image_x: torch.Tensor, text_x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.term(self.towers(image_x, text_x, lengths))["loss"]


def toy_batch(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    image_x = torch.randn(n, PATCHES, FEATURES, generator=g, dtype=torch.float64)
    text_x = torch.randn(n, LENGTH, FEATURES, generator=g, dtype=torch.float64)
    lengths = torch.randint(2, LENGTH + 1, (n,), generator=g)
    return image_x, text_x, lengths


def toy_model(cls: type[Term]) -> ToyModel:
    torch.manual_seed(0)
    return ToyModel(build_term(cls)).double()


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


def ddp_gradients(rank: int, world: int, cls: type[Term], n_global: int, out_dir: str) -> None:
    """One DDP step on this rank's half of the global toy batch; saves the averaged grads."""
    model = toy_model(cls)
    ddp = nn.parallel.DistributedDataParallel(model, find_unused_parameters=True)  # token layers may be unused
    image_x, text_x, lengths = toy_batch(n_global)
    rows = slice(rank * n_global // world, (rank + 1) * n_global // world)
    ddp(image_x[rows], text_x[rows], lengths[rows]).backward()
    grads = {name: p.grad for name, p in model.named_parameters() if p.grad is not None}
    torch.save(grads, os.path.join(out_dir, f"rank{rank}.pt"))
