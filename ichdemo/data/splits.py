"""Patient-level splits (never by slice), saved beside the checkpoint so an evaluation can find its held-out data.

``split_patients`` stratifies by subtype: every subtype seen in at least two non-test patients gets at least one
validation patient (so its validation AUROC exists) while keeping one in training. ``require_classes`` is the check
that stops a run before training when a subtype has no positive slice in a split.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ichdemo.constants import CLASSES
from ichdemo.errors import ConfigError

SPLIT_FILE = "split.json"
"""File name of the split inside a checkpoint folder."""


@dataclass
class Split:
    """Patients per part. ``test`` patients are held out of training and validation entirely."""

    train: list[str]
    val: list[str]
    test: list[str] = field(default_factory=list)
    seed: int = 0
    source: str = ""

    def part(self, name: str) -> list[str]:
        """Patients of part ``name`` ("train", "val", "test" or "all")."""
        if name == "all":
            return self.train + self.val + self.test
        if name not in ("train", "val", "test"):
            raise ConfigError(f"unknown split part {name!r}; choose train, val, test or all")
        return list(getattr(self, name))

    def save(self, folder: str | Path) -> Path:
        """Write ``split.json`` into ``folder`` and return its path."""
        path = Path(folder) / SPLIT_FILE
        path.write_text(json.dumps(asdict(self), indent=2))
        return path

    @classmethod
    def load(cls, path: str | Path) -> Split:
        """Read a split from ``split.json`` or from the checkpoint folder holding it."""
        path = Path(path)
        if path.is_dir():
            path = path / SPLIT_FILE
        if not path.is_file():
            raise ConfigError(f"no split file at {path}")
        return cls(**json.loads(path.read_text()))


def split_patients(
    patient_labels: Mapping[str, np.ndarray],
    val_fraction: float = 0.2,
    seed: int = 0,
    test: Iterable[str] = (),
    source: str = "",
) -> Split:
    """Split patients into train/val, stratified by subtype, with ``test`` patients held out.

    Args:
        patient_labels: per patient, a (5,) or (S, 5) array of slice labels; a patient "has" a subtype when any
            slice is positive.
        val_fraction: share of the non-test patients that go to validation (at least one patient).
        seed: shuffling seed; the same inputs and seed give the same split.
        test: patients held out entirely (e.g. CT-ICH 77 to 81, the only ones with masks).
        source: the data spec, recorded in the split.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ConfigError(f"val_fraction must be in (0, 1), got {val_fraction}")
    test_set = {str(p) for p in test}
    missing = sorted(test_set - {str(p) for p in patient_labels})
    if missing:
        raise ConfigError(f"held-out patient(s) {', '.join(missing)} not in the data")
    rng = np.random.default_rng(seed)
    pool = [str(p) for p in patient_labels if str(p) not in test_set]
    pool = [pool[i] for i in rng.permutation(len(pool))]
    has = {p: np.asarray(patient_labels[p]).reshape(-1, len(CLASSES)).max(axis=0) > 0 for p in pool}
    n_val = min(max(1, round(val_fraction * len(pool))), max(len(pool) - 1, 0))
    val: list[str] = []
    # rarest subtype first, so a scarce subtype is not exhausted by a common one's pick
    for k in np.argsort([sum(has[p][k] for p in pool) for k in range(len(CLASSES))], kind="stable"):
        with_k = [p for p in pool if has[p][k]]
        if len(with_k) >= 2 and not any(p in val for p in with_k) and len(val) < max(n_val, 1):
            val.append(next(p for p in with_k if p not in val))
    for p in pool:
        if len(val) >= n_val:
            break
        if p not in val:
            val.append(p)
    train = [p for p in pool if p not in val]
    return Split(train=sorted(train), val=sorted(val), test=sorted(test_set), seed=seed, source=source)


def require_classes(labels: np.ndarray, where: str) -> None:
    """Raise ``ConfigError`` naming every subtype with no positive slice in ``labels`` (N, 5).

    Args:
        labels: slice labels of one split part.
        where: the part's name for the message, e.g. "training split".
    """
    labels = np.asarray(labels).reshape(-1, len(CLASSES))
    if labels.shape[0] == 0:
        raise ConfigError(f"the {where} has no slices")
    absent = [c for c, n in zip(CLASSES, labels.sum(axis=0)) if n <= 0]
    if absent:
        raise ConfigError(
            f"the {where} has no positive slice for {', '.join(absent)} ({labels.shape[0]} slices); every subtype "
            "needs examples: add data, change the split (--val-fraction, --seed, --test-patients) or use other data"
        )
