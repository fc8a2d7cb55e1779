"""Token-budget batching: variable-length examples grouped by length into batches of at most N tokens.

Fixed-size batches of variable-length sentences waste most of their positions on padding, and their
cost varies with the lengths. Batches cut by a token budget (fairseq's ``--max-tokens``) hold many short
sentences or a few long ones, with little padding and about constant cost per step.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from zoo.data.resumable import ResumableSampler


def token_budget_batches(lengths: np.ndarray, order: np.ndarray, max_tokens: int) -> list[list[int]]:
    """Cut ``order`` (indices sorted by length) into consecutive batches of at most ``max_tokens``
    positions, padding counted: ``len(batch) * max(lengths[batch]) <= max_tokens``."""
    batches: list[list[int]] = []
    start, longest = 0, 0
    sizes = lengths[order].tolist()
    for i, size in enumerate(sizes):
        if size > max_tokens:
            raise ValueError(f"pair {order[i]} needs {size} positions, more than max_tokens={max_tokens}")
        longest = max(longest, size)
        if (i + 1 - start) * longest > max_tokens:
            batches.append(order[start:i].tolist())
            start, longest = i, size
    if start < len(sizes):
        batches.append(order[start:].tolist())
    return batches


class TokenBudgetSampler(ResumableSampler):
    """Length-bucketed batches of at most ``max_tokens`` positions (padding counted), for
    ``DataLoader(dataset, sampler=..., batch_size=None)``: it yields one list of indices per batch.

    Each epoch, pairs are shuffled, sorted by length (a stable sort: equal lengths stay shuffled) and cut
    into batches under the budget; the batches are shuffled; until their number divides by the number
    of ranks the batch with most pairs is halved; rank ``r`` reads batches ``r, r + world, ...``. So
    every pair is read exactly once per epoch, by one rank, and every rank runs the same number of steps.
    The order depends only on ``(seed, epoch)``; like `ResumableSampler` it can skip the batches a
    resumed run already consumed. Being a ``DistributedSampler``, Lightning leaves it in place under DDP.

    Args:
        lengths: (N,) positions each pair needs (`ParallelExamples.lengths`).
        max_tokens: Budget per batch: ``batch size * longest pair``.
        **kwargs: Other arguments: `ResumableSampler` (forwarded): ``shuffle`` (training; ``False`` keeps
            the length order, for evaluation), ``seed`` (epoch ``e`` draws from ``(seed, e)``),
            ``num_replicas``, ``rank``.
    """

    def __init__(
        self,
        lengths: np.ndarray,
        *,
        max_tokens: int,
        **kwargs: Any,
    ) -> None:
        lengths = np.asarray(lengths)
        super().__init__(lengths, batch_size=1, **kwargs)
        if len(lengths) < self.num_replicas:
            raise ValueError(f"{len(lengths)} pairs cannot give each of {self.num_replicas} ranks a batch")
        self.lengths, self.max_tokens = lengths, max_tokens
        self._cached: tuple[int, list[list[int]]] | None = None

    def epoch_batches(self) -> list[list[int]]:
        """Every rank's batches of the current epoch, in reading order (rank ``r`` reads ``r::world``)."""
        if self._cached is not None and self._cached[0] == self.epoch:
            return self._cached[1]
        rng = np.random.default_rng((self.seed, self.epoch))
        order = rng.permutation(len(self.lengths)) if self.shuffle else np.arange(len(self.lengths))
        order = order[np.argsort(self.lengths[order], kind="stable")]
        batches = token_budget_batches(self.lengths, order, self.max_tokens)
        if self.shuffle:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        while len(batches) % self.num_replicas:
            i = max(range(len(batches)), key=lambda j: len(batches[j]))
            if len(batches[i]) < 2:
                raise ValueError(
                    f"cannot share {len(batches)} one-pair batches evenly between "
                    f"{self.num_replicas} ranks; raise max_tokens"
                )
            half = len(batches[i]) // 2
            batches[i : i + 1] = [batches[i][:half], batches[i][half:]]
        self._cached = (self.epoch, batches)
        return batches

    def __len__(self) -> int:
        return len(self.epoch_batches()) // self.num_replicas

    def __iter__(self):
        batches = self.epoch_batches()[self.rank :: self.num_replicas]
        if self._resume is not None and self._resume.epoch == self.epoch:
            batches = batches[self._resume.batches :]
            self._resume = None
        return iter(batches)
