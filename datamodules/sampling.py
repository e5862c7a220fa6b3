"""A training sampler that makes a run resumable at the exact batch it was interrupted at."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sized
from dataclasses import dataclass

from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler


@dataclass(frozen=True)
class TrainingPosition:
    """Where a (possibly resumed) run stands when it asks for its training loader."""

    world: int = 1
    rank: int = 0
    epoch: int = 0
    done_batches: int = 0  # batches of this epoch already trained (a resumed run skips them)
    step: int = 0
    seed: int = 0


def training_position(trainer, default_seed: int) -> TrainingPosition:
    """The trainer's position (Lightning restores the loop's progress before asking for data);
    the seed is seed_everything's, so that `--seed_everything` varies the order too."""
    seed = int(os.environ.get("PL_GLOBAL_SEED", default_seed))
    if trainer is None:
        return TrainingPosition(seed=seed)
    return TrainingPosition(
        world=trainer.world_size,
        rank=trainer.global_rank,
        epoch=trainer.current_epoch,
        # processed, not completed: a step checkpoint is written before its batch counts as completed
        done_batches=trainer.fit_loop.epoch_loop.batch_progress.current.processed,
        step=trainer.global_step,
        seed=seed,
    )


class ResumableSampler(DistributedSampler):
    """DistributedSampler (shuffled by seed and epoch, this rank's share, incomplete batches
    dropped) whose first pass can start ``skip_batches`` batches in.

    The order of every epoch is a pure function of (seed, epoch), so a run resumed from a
    mid-epoch checkpoint sees exactly the batches the interrupted run would have seen next;
    Lightning calls ``set_epoch`` at every epoch start, as for any DistributedSampler.

    A dataset whose items vary by epoch (augmented views drawn afresh each epoch) says so with a
    true ``takes_epoch`` attribute and then gets ``(index, epoch)`` keys instead of indices: its
    persistent workers cannot see ``set_epoch``, the sampler can.
    """

    def __init__(
        self, dataset: Sized, num_replicas: int, rank: int, seed: int, batch_size: int, skip_batches: int = 0
    ) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=True)  # type: ignore[arg-type]
        self.batch_size = batch_size
        batches = self.num_samples // batch_size
        # A checkpoint taken at the very end of an epoch resumes with the next, whole epoch.
        self.skip = skip_batches * batch_size if 0 < skip_batches < batches else 0

    def __iter__(self) -> Iterator[int | tuple[int, int]]:
        indices = list(super().__iter__())
        skip, self.skip = self.skip, 0  # only the first pass after a resume is shortened
        if getattr(self.dataset, "takes_epoch", False):
            return iter([(index, self.epoch) for index in indices[skip:]])
        return iter(indices[skip:])


def index_and_epoch(key: int | tuple[int, int]) -> tuple[int, int]:
    """A dataset key from :class:`ResumableSampler` (``(index, epoch)``) or any other sampler (an
    index: evaluation, or code that indexes directly, is epoch 0)."""
    if isinstance(key, tuple):
        return int(key[0]), int(key[1])
    return int(key), 0


def contrastive_loader(
    dataset: Dataset, batch_size: int, train: bool, num_workers: int, collate_fn, sampler: Sampler | None = None
) -> DataLoader:
    """A DataLoader for contrastive training or evaluation: training drops the last incomplete
    batch (DDP gathers need equal local batches) and keeps its workers between epochs."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        drop_last=train,
        num_workers=num_workers,
        persistent_workers=train and num_workers > 0,
        collate_fn=collate_fn,
    )
