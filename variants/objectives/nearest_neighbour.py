"""DeCLIP's nearest-neighbour supervision, NNS (Li et al. 2022, arXiv 2110.05208; official code
Sense-GVT/DeCLIP @ 5d99a85, prototype/model/declip.py L172-175 and L282-300,
prototype/model/utils/nnclr_modules/{nn_memory_bank,memory_bank}.py, prototype/solver/
declip_solver.py L474-479).

A FIFO queue holds the text embeddings of past batches (L2-normalised, detached). For every text
view T_w of the batch, its most cosine-similar queue entry NN(T_w) (top-1) is an extra positive
for the image: image -> text InfoNCE against the batch's neighbours, averaged over the image
views v and the text views w,

    L_NNS = 1/(V_i V_t) sum_{v, w} CE(s I_v NN(T_w)^T, arange),

one direction only (the neighbours are constants, so the gradient reaches the image tower and s,
never the text tower); weight 0.2 in DeCLIP's total loss. As in the official code the queue
starts full of random unit vectors (memory_bank.py L66-67), each step looks up before it enqueues
(a text never finds itself), and both text views of every caption are enqueued, the caption's
and its augmented copy (declip.py L282-288).

Deviations, each for the suite's distributed rule or scale:
- The official bank is per GPU and enqueues only that GPU's texts; here every rank enqueues the
  GATHERED batch (all ranks' texts, in rank order), so the queues stay identical on every rank and
  DDP equals one process on the global batch.
- Queue size: the official 65,536 (2**16) holds the last 256 steps of 2 x 128 texts per GPU, a
  0.2% slice of its 128k-step schedule; ``queue_size`` defaults to 16,384 for the suite's short
  runs (declip.yaml sets a smaller one, sized to its batch). It must hold at least one step's
  2 x global batch. A write that reaches the end wraps around (the official code drops the rest).
- Own logit scale (init 1/0.07, s <= 100) rather than the one shared with MVS.
The neighbour search is chunked over the queue (``lookup_chunk`` rows at a time): memory
O(batch x chunk), not O(batch x queue). The queue and its write position are buffers: saved in
and restored from checkpoints, so a resumed run continues with the same queue.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from common.errors import UserError
from variants.distributed import gather, row_offset
from variants.losses import nearest_neighbour_loss, nearest_neighbours
from variants.objectives.base import (
    NEEDS_NEGATIVES,
    LearnedScale,
    Term,
    at_least_float32,
    full_precision,
    positive,
    present,
)
from variants.towers import Encoded


class NearestNeighbourInfoNCE(Term):
    """Image -> nearest-queued-text InfoNCE (needs the data's ``views`` and ``text_views``).

    Args:
        weight: weight in the total loss (0.2 in DeCLIP).
        queue_size: text embeddings the FIFO queue holds (official: 65,536 per GPU).
        lookup_chunk: queue rows scored at a time in the neighbour search.
        init_temperature, max_logit_scale, learn_temperature: the term's own logit scale, as InfoNCE.
    """

    min_batch_size = 2
    min_batch_reason = NEEDS_NEGATIVES

    needs = frozenset({"image_views", "text_view"})
    detached = frozenset({"text_view"})  # the texts only query and fill the queue

    def __init__(
        self,
        weight: float = 1.0,
        queue_size: int = 16_384,
        lookup_chunk: int = 4096,
        init_temperature: float = 0.07,
        max_logit_scale: float = 100.0,
        learn_temperature: bool = True,
    ) -> None:
        super().__init__(weight)
        positive(self, queue_size=queue_size, lookup_chunk=lookup_chunk, init_temperature=init_temperature)
        self.queue_size, self.lookup_chunk = int(queue_size), int(lookup_chunk)
        self.logit_scale = LearnedScale(1.0 / init_temperature, max_logit_scale, learn_temperature)
        self.queue: torch.Tensor
        self.queue_position: torch.Tensor

    def attach(self, vision_tower: nn.Module, text_tower: nn.Module) -> None:
        dim = getattr(text_tower, "embed_dim", None)
        if not dim:
            raise UserError(
                f"nearestneighbourinfonce queues text embeddings, but {type(text_tower).__name__} has no embed_dim"
            )
        # Random unit vectors, as the official bank starts (drawn from the run's seeded generator:
        # the same on every rank).
        self.register_buffer("queue", F.normalize(torch.randn(self.queue_size, int(dim)), dim=-1))
        self.register_buffer("queue_position", torch.zeros((), dtype=torch.long))

    def forward(self, encoded: Encoded) -> dict[str, torch.Tensor]:
        texts = [present(encoded, "text").detach(), present(encoded, "text_view").detach()]
        everyone = torch.cat([gather(t) for t in texts])  # the global batch's texts, rank order
        if everyone.shape[0] > self.queue_size:
            raise UserError(
                f"nearestneighbourinfonce: queue_size {self.queue_size} is smaller than the {everyone.shape[0]} text "
                "embeddings one step enqueues (2 text views x the global batch): raise queue_size"
            )
        views = present(encoded, "image_views")
        with full_precision(views.device):
            views, *texts = at_least_float32(views, *texts)
            queue = self.queue.to(views.dtype)
            neighbours = [queue[nearest_neighbours(t, queue, self.lookup_chunk)] for t in texts]
            images = [F.normalize(views[:, v], dim=-1) for v in range(views.shape[1])]
            scale = self.logit_scale()
            loss = nearest_neighbour_loss(
                images, [gather(n) for n in neighbours], scale, row_offset=row_offset(images[0].shape[0])
            )
            with torch.no_grad():
                similarity = torch.stack([(t * n).sum(-1).mean() for t, n in zip(texts, neighbours, strict=True)])
        if self.training:
            self._enqueue(everyone)
        return {"loss": loss, "logit_scale": scale.detach(), "neighbour_cosine": similarity.mean()}

    @torch.no_grad()
    def _enqueue(self, texts: torch.Tensor) -> None:
        slots = (self.queue_position + torch.arange(texts.shape[0], device=texts.device)) % self.queue_size
        self.queue[slots] = F.normalize(texts.float(), dim=-1).to(self.queue.dtype)
        self.queue_position.copy_((self.queue_position + texts.shape[0]) % self.queue_size)

    def post_step(self) -> None:
        self.logit_scale.clamp_()
