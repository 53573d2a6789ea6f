"""Class imbalance (most slices are normal): per-slice sampling weights and BCE ``pos_weight``.

Two configurable remedies, usable together or apart:
- ``sample_weights``: each slice belongs to the group of its rarest positive subtype, or to "normal"; its weight is
  ``count(group) ** -power``. ``power`` 0 is uniform sampling, 1 draws every group equally often.
- ``pos_weight``: negatives / positives per subtype, capped, for ``BCEWithLogitsLoss(pos_weight=...)``.

``WeightedEpochSampler`` draws with replacement from the weights and, under DDP, gives each rank its own
interleaved share of the same draw, like ``DistributedSampler`` does for uniform sampling.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Sampler


def slice_groups(labels: np.ndarray) -> np.ndarray:
    """(N, 5) labels -> (N,) group: 0 normal, k+1 for the rarest positive subtype k of that slice."""
    labels = np.asarray(labels) > 0
    counts = labels.sum(axis=0).astype(np.float64)
    rarity = np.where(labels, counts[None, :], np.inf)  # (N, 5): count of each positive subtype
    groups = np.argmin(rarity, axis=1) + 1
    groups[~labels.any(axis=1)] = 0
    return groups


def sample_weights(labels: np.ndarray, power: float = 0.5) -> np.ndarray:
    """(N,) float64 sampling weights, ``count(group) ** -power`` (see module docstring)."""
    if power < 0:
        raise ValueError(f"power must be >= 0, got {power}")
    groups = slice_groups(labels)
    counts = np.bincount(groups, minlength=6).astype(np.float64)
    return counts[groups] ** -power


def pos_weight(labels: np.ndarray, cap: float = 10.0) -> np.ndarray:
    """(5,) float32 negatives/positives per subtype, clipped to [1, cap]; 1 for a subtype with no positive."""
    labels = np.asarray(labels) > 0
    pos = labels.sum(axis=0).astype(np.float64)
    neg = labels.shape[0] - pos
    ratio = np.where(pos > 0, neg / np.maximum(pos, 1), 1.0)
    return np.clip(ratio, 1.0, cap).astype(np.float32)


class WeightedEpochSampler(Sampler[int]):
    """Weighted sampling with replacement, seeded per epoch, split across DDP ranks.

    Args:
        weights: (N,) non-negative sampling weights.
        num_samples: draws per epoch over all ranks (default N); each rank gets ceil(num_samples / world_size).
        rank: this process's rank.
        world_size: number of processes.
        seed: base seed; call ``set_epoch`` every epoch, as for ``DistributedSampler``.
    """

    def __init__(
        self, weights: np.ndarray, num_samples: int | None = None, rank: int = 0, world_size: int = 1, seed: int = 0
    ) -> None:
        self.weights = torch.as_tensor(np.asarray(weights, dtype=np.float64))
        if self.weights.numel() == 0 or float(self.weights.sum()) <= 0:
            raise ValueError("sampling weights are empty or all zero")
        self.per_rank = -(-(num_samples or len(self.weights)) // world_size)
        self.rank, self.world_size, self.seed, self.epoch = rank, world_size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        """Reseed for ``epoch`` (same draw on every rank, different shares)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return self.per_rank

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        draw = torch.multinomial(self.weights, self.per_rank * self.world_size, replacement=True, generator=g)
        return iter(draw[self.rank :: self.world_size].tolist())
