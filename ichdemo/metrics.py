"""Evaluation metrics of METHOD.md ("Evaluation protocol"): AUROC, pooled Dice per class, instance Dice.

Definitions chosen here (DECIDE where the paper is silent):

- ``binary_dice``: 2|A n B| / (|A| + |B|); both empty gives ``empty`` (default 1.0: nothing to find, nothing
  found). Use ``empty=np.nan`` to leave such cases out of a mean.
- ``dice_per_class``: one Dice per class over ALL pixels pooled (the paper's table, Normal = label 0 included);
  a class absent from both prediction and truth is NaN (not scorable) and "AVG" is the mean of the defined ones.
  For a test set too big for memory, sum ``confusion_matrix`` over scans and call ``dice_from_confusion``.
- ``instance_dice``: per scan and subtype. Connected components are 3D with 26-connectivity (every voxel touching
  a face, edge or corner). "scan" mode (default, the paper's "per scan and subtype"): one Dice of the predicted vs
  true mask of the subtype in that scan, counted only when the true mask has a component of more than
  ``min_voxels`` voxels. "component" mode: one Dice per true component of more than ``min_voxels`` voxels,
  against the predicted components of that subtype that touch it.
- ``summarize``: mean and sample standard deviation (ddof=1; NaN for fewer than 2 values), NaNs dropped.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
from scipy import ndimage
from sklearn.metrics import roc_auc_score

from ichdemo.constants import CLASSES
from ichdemo.quantify import as_numpy

DICE_NAMES: tuple[str, ...] = ("Normal", *CLASSES)
"""Names of label values 0..5 in Dice tables."""


def _nanmean(values: list[float]) -> float:
    finite = [v for v in values if not np.isnan(v)]
    return float(np.mean(finite)) if finite else float("nan")


def auroc_per_class(y_true: Any, probs: Any, names: tuple[str, ...] = CLASSES) -> dict[str, float]:
    """Area under the ROC curve per subtype, and "AVG" = mean over the classes where it is defined.

    Args:
        y_true: (N, K) 0/1 slice labels.
        probs: (N, K) predicted probabilities (or any scores).
        names: K class names.

    Returns:
        {name: AUROC or NaN when that column holds a single label value, ..., "AVG": mean of the defined ones}.
    """
    y, p = as_numpy(y_true), as_numpy(probs)
    if y.shape != p.shape or y.ndim != 2 or y.shape[1] != len(names):
        raise ValueError(f"y_true {y.shape} and probs {p.shape} must both be (N, {len(names)})")
    out = {}
    for k, name in enumerate(names):
        col = y[:, k] > 0.5
        out[name] = float(roc_auc_score(col, p[:, k])) if 0 < col.sum() < len(col) else float("nan")
    out["AVG"] = _nanmean(list(out.values()))
    return out


def binary_dice(a: Any, b: Any, empty: float = 1.0) -> float:
    """Dice of two boolean masks (non-zero = foreground): 2|A n B| / (|A| + |B|); ``empty`` when both are empty."""
    a, b = as_numpy(a).astype(bool, copy=False), as_numpy(b).astype(bool, copy=False)
    if a.shape != b.shape:
        raise ValueError(f"masks differ in shape: {a.shape} vs {b.shape}")
    total = int(np.count_nonzero(a)) + int(np.count_nonzero(b))
    return 2.0 * int(np.count_nonzero(a & b)) / total if total else float(empty)


def confusion_matrix(pred: Any, true: Any, num_classes: int = 6) -> np.ndarray:
    """(num_classes, num_classes) pixel counts, rows = true label, columns = predicted label."""
    pred, true = as_numpy(pred), as_numpy(true)
    if pred.shape != true.shape:
        raise ValueError(f"prediction {pred.shape} and truth {true.shape} differ in shape")
    for arr, what in ((pred, "prediction"), (true, "truth")):
        if arr.size and (arr.min() < 0 or arr.max() >= num_classes):
            raise ValueError(f"{what} labels must lie in 0..{num_classes - 1}, got {arr.min()}..{arr.max()}")
    n2 = num_classes * num_classes
    if n2 <= 256 and true.size:  # one uint8 code per voxel and OpenCV's histogram: a series in milliseconds
        code = true.astype(np.uint8).ravel() * np.uint8(num_classes) + pred.astype(np.uint8).ravel()
        hist = cv2.calcHist([code.reshape(-1, 1)], [0], None, [n2], [0, n2])
        return np.rint(hist.ravel()).astype(np.int64).reshape(num_classes, num_classes)
    idx = true.astype(np.intp).ravel() * num_classes + pred.astype(np.intp).ravel()
    return np.bincount(idx, minlength=n2).reshape(num_classes, num_classes)


def dice_from_confusion(cm: np.ndarray) -> np.ndarray:
    """Per-class Dice 2 TP / (true count + predicted count) from a confusion matrix; NaN where both are 0."""
    cm = np.asarray(cm, dtype=np.float64)
    denom = cm.sum(axis=0) + cm.sum(axis=1)
    return np.divide(2.0 * np.diag(cm), denom, out=np.full(len(cm), np.nan), where=denom > 0)


def dice_per_class(
    pred_labels: Any, true_labels: Any, num_classes: int = 6, names: tuple[str, ...] | None = None
) -> dict[str, float]:
    """Dice per class over all pixels pooled, Normal (label 0) included, and "AVG" over the defined classes.

    Args:
        pred_labels: label map(s), any shape, values 0..num_classes-1.
        true_labels: same shape.
        num_classes: 6 for Normal + 5 subtypes.
        names: names of label values; default ("Normal", IPH, ..., EDH) for 6 classes, else "0", "1", ...

    Returns:
        {"Normal": d0, "IPH": d1, ..., "AVG": mean of the non-NaN ones}; NaN for a class in neither map.
    """
    if names is None:
        names = DICE_NAMES if num_classes == len(DICE_NAMES) else tuple(str(k) for k in range(num_classes))
    dice = dice_from_confusion(confusion_matrix(pred_labels, true_labels, num_classes))
    out = {name: float(d) for name, d in zip(names, dice)}
    out["AVG"] = _nanmean(list(dice))
    return out


def _components(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """26-connected components (8-connected in 2D): label image and size of each component 1..n."""
    labelled, n = ndimage.label(mask, structure=np.ones((3,) * mask.ndim, dtype=bool))
    sizes = np.bincount(labelled.ravel(), minlength=n + 1)[1:]
    return labelled, sizes


def instance_dice(
    pred_labels_vol: Any,
    true_labels_vol: Any,
    min_voxels: int = 3000,
    mode: str = "scan",
    names: tuple[str, ...] = CLASSES,
) -> dict[str, list[float]]:
    """Instance Dice of one scan, per subtype, over lesions of more than ``min_voxels`` voxels.

    Args:
        pred_labels_vol: (S, H, W) predicted label map, values 0..len(names).
        true_labels_vol: (S, H, W) true label map.
        min_voxels: a true lesion (26-connected component) counts only with more voxels than this.
        mode: "scan": at most one Dice per subtype, the whole predicted vs true subtype mask, counted when the
            true mask has a component over ``min_voxels``; "component": one Dice per such true component, against
            the union of the predicted components of that subtype that overlap it.
        names: names of label values 1..K.

    Returns:
        {name: list of Dice values} (empty lists where nothing qualifies); extend the lists over scans and
        ``summarize`` each.
    """
    if mode not in ("scan", "component"):
        raise ValueError(f"mode must be 'scan' or 'component', got {mode!r}")
    pred, true = as_numpy(pred_labels_vol), as_numpy(true_labels_vol)
    if pred.shape != true.shape or pred.ndim not in (2, 3):
        raise ValueError(f"prediction {pred.shape} and truth {true.shape} must be the same (S, H, W) shape")
    out: dict[str, list[float]] = {}
    for k, name in enumerate(names, start=1):
        t, p = true == k, pred == k
        labelled, sizes = _components(t)
        big = np.flatnonzero(sizes > min_voxels) + 1
        if mode == "scan":
            out[name] = [binary_dice(p, t)] if len(big) else []
            continue
        pred_cc, _ = _components(p)
        scores = []
        for comp in big:
            inst = labelled == comp
            touching = np.unique(pred_cc[inst])
            scores.append(binary_dice(np.isin(pred_cc, touching[touching > 0]), inst))
        out[name] = scores
    return out


def summarize(values: Any) -> tuple[float, float]:
    """(mean, sample sd with ddof=1) of the non-NaN values; (NaN, NaN) if none, sd NaN for a single value."""
    v = np.asarray(list(values), dtype=np.float64)
    v = v[~np.isnan(v)]
    if v.size == 0:
        return float("nan"), float("nan")
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else float("nan")
