"""Training loaders that resume mid-epoch exactly where a checkpoint left them.

Lightning restores the model, optimizer, schedulers and loop counters, but a plain ``DataLoader`` starts
its epoch again from the first batch. :class:`ResumableSampler` shuffles with a generator seeded by
``(seed, epoch)`` only, so an epoch's order is a pure function of the epoch number, and skips the batches
the run had already consumed when it resumes. A data module records that position in its
``state_dict`` (saved in every checkpoint) and hands it back to the sampler on restore.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch.distributed as dist
from torch.utils.data import Dataset, DistributedSampler


@dataclass
class TrainPosition:
    """Where the training loader stands: ``batches`` batches into ``epoch``."""

    epoch: int = 0
    batches: int = 0

    def as_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "batches": self.batches}


class ResumableSampler(DistributedSampler):
    """Seeded, DDP-aware shuffling that can skip the first batches of one epoch.

    Being a ``DistributedSampler``, Lightning keeps it (no re-wrapping under DDP) and calls
    ``set_epoch`` before every epoch. Each rank reads its own ``1/world_size`` share.

    Args:
        dataset: The map-style dataset.
        batch_size: Batch size of the loader (to turn skipped batches into skipped samples).
        num_replicas: Number of ranks (default: the process group's size, or 1 without one).
        rank: This rank (default: the process group's rank, or 0 without one).
        **kwargs: Other arguments: ``torch.utils.data.DistributedSampler`` (forwarded): ``shuffle``
            (training; ``False`` keeps order), ``seed`` (epoch ``e`` uses ``seed + e``), ``drop_last``
            (drop the tail that does not divide evenly across ranks).
    """

    def __init__(
        self,
        dataset: Dataset,
        *,
        batch_size: int,
        num_replicas: int | None = None,
        rank: int | None = None,
        **kwargs: Any,
    ) -> None:
        initialized = dist.is_available() and dist.is_initialized()
        if num_replicas is None:
            num_replicas = dist.get_world_size() if initialized else 1
        if rank is None:
            rank = dist.get_rank() if initialized else 0
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, **kwargs)
        self.batch_size = batch_size
        self._resume: TrainPosition | None = None

    def resume_from(self, position: TrainPosition) -> None:
        """Skip ``position.batches`` batches the next time epoch ``position.epoch`` is iterated."""
        self._resume = position if position.batches > 0 else None

    def epoch_indices(self) -> list[int]:
        """This rank's indices for the current epoch, in reading order (subclasses may reorder them)."""
        return list(super().__iter__())

    def __iter__(self):
        indices = self.epoch_indices()
        if self._resume is not None and self._resume.epoch == self.epoch:
            indices = indices[self._resume.batches * self.batch_size :]
            self._resume = None
        return iter(indices)


def loader_position(trainer: Any, sampler: ResumableSampler | None) -> TrainPosition:
    """The training position to save in a checkpoint: batches processed in the current epoch."""
    if trainer is None or sampler is None:
        return TrainPosition()
    processed = trainer.fit_loop.epoch_loop.batch_progress.current.processed
    return TrainPosition(epoch=sampler.epoch, batches=int(processed))


class EpochSampler(ResumableSampler):
    """A `ResumableSampler` whose items are ``(epoch, index)``, for datasets whose content depends on the
    epoch (the document order of a sharded corpus): DataLoader worker processes learn the epoch from the
    item itself, and a resumed epoch skips exactly as `ResumableSampler` does."""

    def epoch_indices(self) -> list[tuple[int, int]]:  # type: ignore[override]
        return [(self.epoch, i) for i in super().epoch_indices()]
