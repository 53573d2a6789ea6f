"""Scans as the training code sees them, and the torch ``Dataset`` of 3-slice stacks over them.

Every data source (CT-ICH, RSNA, BHSD, phantoms) is turned into a list of ``Series``: one scan of one patient with
slice labels in ``CLASSES`` order, a way to read its slices in [0, 1] (windowed HU or rescaled grey, see
``ichdemo.transforms.to_unit``) and, where they exist, label maps. ``SliceStackDataset`` then serves the three
consecutive slices around each slice as channels (METHOD.md "Input"), resized to the model's square input.

Mask convention (label maps, int): 0 normal, k = 1..5 subtype ``CLASSES[k-1]``, ``MASK_ANY`` (6) a hemorrhage
pixel whose subtype is unknown (CT-ICH marks "any hemorrhage" only), ``MASK_NONE`` (-1) on slices without a mask.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from ichdemo.constants import CLASSES
from ichdemo.transforms import ResizeSpec

MASK_ANY = 6
"""Label-map value of a hemorrhage pixel of unknown subtype."""

MASK_NONE = -1
"""Label-map value of every pixel of a slice that has no mask."""


@dataclass
class Series:
    """One scan: slice labels, and slices read on demand.

    Subclasses (or ``ArraySeries``) implement ``read`` and ``read_mask``.

    Attributes:
        patient: patient identifier (splits are by patient).
        name: series identifier, unique within the data source.
        labels: (S, 5) float32 slice labels in ``CLASSES`` order.
        spacing: (slice, row, col) mm, for volumes; None when unknown.
        mask_slices: indices of the slices that have a label map.
        neighbours: (S, 2) indices of the slices used as channels 0 and 2 around each slice; by default i-1 and
            i+1 with the edge slice repeated (METHOD.md DECIDE: repeat). Sources with gaps in the slice numbering
            repeat the centre slice across a gap instead of jumping over it.
    """

    patient: str
    name: str
    labels: np.ndarray
    spacing: tuple[float, float, float] | None = None
    mask_slices: tuple[int, ...] = ()
    neighbours: np.ndarray | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, dtype=np.float32).reshape(-1, len(CLASSES))
        if self.neighbours is None:
            idx = np.arange(len(self))
            self.neighbours = np.stack([np.maximum(idx - 1, 0), np.minimum(idx + 1, len(self) - 1)], axis=1)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def read(self, indices: Sequence[int]) -> np.ndarray:
        """Slices ``indices`` as (n, H, W) float32 in [0, 1]."""
        raise NotImplementedError

    def read_mask(self, index: int) -> np.ndarray | None:
        """The (H, W) label map of slice ``index`` (see the module's mask convention), or None."""
        return None


@dataclass
class ArraySeries(Series):
    """A series held in memory (phantoms, tests, small caches).

    Attributes:
        unit: (S, H, W) float32 in [0, 1].
        masks: (S, H, W) int label maps, or None; only ``mask_slices`` are served.
    """

    unit: np.ndarray | None = field(default=None, repr=False)
    masks: np.ndarray | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.unit is None or self.unit.ndim != 3 or self.unit.shape[0] != len(self):
            shape = None if self.unit is None else self.unit.shape
            raise ValueError(f"unit must be (S, H, W) with S = {len(self)} labelled slices, got {shape}")
        if self.masks is not None and self.masks.shape != self.unit.shape:
            raise ValueError(f"masks shape {self.masks.shape} differs from the images' {self.unit.shape}")

    def read(self, indices: Sequence[int]) -> np.ndarray:
        return np.asarray(self.unit[list(indices)], dtype=np.float32)

    def read_mask(self, index: int) -> np.ndarray | None:
        if self.masks is None or index not in self.mask_slices:
            return None
        return np.asarray(self.masks[index])


def mask_to_model(mask: np.ndarray, size: int) -> np.ndarray:
    """(H, W) label map -> (size, size) on the letterbox grid of ``ResizeSpec`` (nearest neighbour, 0 padding)."""
    spec = ResizeSpec(int(mask.shape[0]), int(mask.shape[1]), int(size))
    r, c = spec.inner
    top, left = spec.offset
    out = np.zeros((spec.size, spec.size), dtype=np.int16)
    small = cv2.resize(mask.astype(np.int16), (c, r), interpolation=cv2.INTER_NEAREST)
    out[top : top + r, left : left + c] = small
    return out


class SliceStackDataset(Dataset):
    """3-slice stacks of every slice of some series, letterboxed to ``size`` x ``size``.

    Items are dicts: ``image`` (3, size, size) float32 in [0, 1]; ``labels`` (5,) float32; ``mask`` (size, size)
    int64 label map (all ``MASK_NONE`` when the slice has none); ``has_mask`` bool; ``index`` (int, position in this
    dataset). Normalisation to the model's mean/std is the model side's business.

    Args:
        series: the scans.
        size: model input side in pixels.
        cache: keep each series' resized slices in memory after the first read (uint8, size x size per slice).
    """

    def __init__(self, series: Sequence[Series], size: int, cache: bool = True) -> None:
        self.series = list(series)
        self.size = int(size)
        self.cache = cache
        self._cache: dict[int, np.ndarray] = {}
        self.items = [(s, i) for s, ser in enumerate(self.series) for i in range(len(ser))]

    def __len__(self) -> int:
        return len(self.items)

    @property
    def labels(self) -> np.ndarray:
        """(N, 5) slice labels of every item, in item order (``items`` may be a subset of the slices)."""
        if not self.items:
            return np.zeros((0, len(CLASSES)), np.float32)
        offsets = np.cumsum([0] + [len(ser) for ser in self.series])
        rows = [offsets[s] + i for s, i in self.items]
        return np.concatenate([ser.labels for ser in self.series], axis=0)[rows]

    @property
    def patients(self) -> list[str]:
        """Patient of every item, in item order."""
        return [self.series[s].patient for s, _ in self.items]

    def mask_items(self) -> list[int]:
        """Indices of the items whose slice has a label map."""
        return [k for k, (s, i) in enumerate(self.items) if i in self.series[s].mask_slices]

    def preload(self, threads: int = 8) -> None:
        """Fill the cache for every series now (threads decode in parallel), so that DataLoader workers forked
        afterwards share it instead of each decoding every series again."""
        if not self.cache:
            return
        todo = sorted({s for s, _ in self.items} - set(self._cache))
        with ThreadPoolExecutor(max(1, threads)) as pool:
            list(pool.map(lambda s: self._stack(s, 0), todo))

    def _stack(self, s: int, i: int) -> np.ndarray:
        ser = self.series[s]
        idx = [int(ser.neighbours[i, 0]), i, int(ser.neighbours[i, 1])]
        if not self.cache:
            raw = ser.read(idx)
            return ResizeSpec(raw.shape[1], raw.shape[2], self.size).to_model(raw)
        if s not in self._cache:
            raw = ser.read(range(len(ser)))
            resized = ResizeSpec(raw.shape[1], raw.shape[2], self.size).to_model(raw)
            self._cache[s] = np.round(np.clip(resized, 0, 1) * 255).astype(np.uint8)
        return self._cache[s][idx].astype(np.float32) / 255.0

    def _mask(self, s: int, i: int) -> np.ndarray | None:
        m = self.series[s].read_mask(i)
        if m is None:
            return None
        return mask_to_model(m, self.size)

    def __getitem__(self, k: int) -> dict:
        s, i = self.items[k]
        mask = self._mask(s, i)
        has_mask = mask is not None
        if mask is None:
            mask = np.full((self.size, self.size), MASK_NONE, dtype=np.int64)
        return {
            "image": torch.from_numpy(np.ascontiguousarray(self._stack(s, i))),
            "labels": torch.from_numpy(self.series[s].labels[i].copy()),
            "mask": torch.from_numpy(np.rint(mask).astype(np.int64)),
            "has_mask": has_mask,
            "index": k,
        }
