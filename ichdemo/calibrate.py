"""Calibration of Algorithm 1: class thresholds by Youden's J, mask thresholds by a joint grid search on Dice.

METHOD.md, "From heatmaps to masks". Results go into the model's config.json through
``ichdemo.quantify.Thresholds(...).to_dict()``.

Class thresholds (``youden_thresholds``): per subtype, the point of the ROC curve (sklearn ``roc_curve``) with the
largest TPR - FPR. Algorithm 1 gates with ``prob > c`` while ROC points count ``prob >= t`` as positive, so the
returned c lies halfway between that score and the next lower one: same TPR and FPR, and a margin on both sides.
A subtype whose labels hold a single value gets 0.5 and a warning in the returned report.

Mask thresholds (``grid_search_mask_thresholds``), "jointly" made precise: one vector (m_IPH, ..., m_EDH) taken
from grid^5 (8^5 = 32768 vectors for the paper's grid 25..200 step 25) maximising ONE objective computed from
Algorithm 1's full 6-way label maps, so that subtypes competing for a pixel through the argmax interact:

- subtype label masks (0..5): the mean over the subtypes present in the masks of their Dice pooled over all given
  pixels (Normal left out: it is ~0.99 whatever the thresholds);
- binary any-hemorrhage masks (CT-ICH): the Dice of ``labels > 0`` against the mask, pooled (8-bit masks are
  foreground above 127: CT-ICH's JPEG masks hold 1s and 254s of compression noise).

How it stays fast and exact: a pixel's predicted label for a threshold vector depends only on its signature
(per subtype, how many grid values its gated map exceeds; the order of its subtypes' values; its true label).
Pixels are compressed to their unique signatures with counts (typically a few thousand), and all grid vectors are
scored on those in chunks ("exhaustive", exact). When signatures x vectors exceed ``budget``, a cyclic coordinate
ascent is run instead from the per-class optimum and from every uniform vector ("coordinate", near-exact); the
report says which method ran. Ties go to the higher (more conservative) thresholds.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.metrics import roc_curve

from ichdemo.constants import CLASSES
from ichdemo.errors import ConfigError, UnsupportedInputError
from ichdemo.quantify import CHUNK_SLICES, NUM_CLASSES, as_numpy, check_vector

PAPER_GRID: tuple[int, ...] = tuple(range(25, 201, 25))
DEFAULT_BUDGET = 200_000_000  # signature x vector evaluations for the exhaustive search (a few seconds)


# ----------------------------------------------------------------------------------------------- class thresholds


def youden_thresholds(y_true: Any, probs: Any) -> tuple[np.ndarray, dict]:
    """Class thresholds c_k maximising Youden's J = TPR - FPR, per subtype.

    Args:
        y_true: (N, 5) 0/1 slice labels (validation set).
        probs: (N, 5) predicted probabilities.

    Returns:
        (thresholds (5,) in [0, 1], report): report[name] = {"threshold", "j", "tpr", "fpr", "positives",
        "negatives"}; report["warnings"] lists subtypes that could not be calibrated (set to 0.5).
    """
    y, p = as_numpy(y_true), as_numpy(probs).astype(np.float64)
    if y.shape != p.shape or y.ndim != 2 or y.shape[1] != NUM_CLASSES:
        raise ValueError(f"y_true {y.shape} and probs {p.shape} must both be (N, {NUM_CLASSES})")
    thresholds = np.full(NUM_CLASSES, 0.5)
    report: dict = {"warnings": []}
    for k, name in enumerate(CLASSES):
        col = y[:, k] > 0.5
        pos, neg = int(col.sum()), int((~col).sum())
        entry = {"positives": pos, "negatives": neg}
        if pos == 0 or neg == 0:
            report["warnings"].append(f"{name}: {pos} positive and {neg} negative slices; threshold left at 0.5")
            entry.update(threshold=0.5, j=float("nan"), tpr=float("nan"), fpr=float("nan"))
        else:
            thresholds[k], entry["j"], entry["tpr"], entry["fpr"] = _youden_one(col, p[:, k])
            entry["threshold"] = float(thresholds[k])
        report[name] = entry
    return thresholds, report


def _youden_one(y: np.ndarray, p: np.ndarray) -> tuple[float, float, float, float]:
    fpr, tpr, thr = roc_curve(y, p, drop_intermediate=False)  # thr descending; thr[0] = inf (nothing positive)
    j = tpr - fpr
    i = int(np.flatnonzero(j >= j.max() - 1e-12)[0])  # ties (up to rounding) go to the highest threshold
    if i == 0:
        c = float(thr[1])  # "nothing positive": gate above the highest score
    else:
        lower = thr[i + 1] if i + 1 < len(thr) else min(0.0, thr[i])
        c = float((thr[i] + lower) / 2.0)  # prob > c  <=>  prob >= thr[i]
    return float(np.clip(c, 0.0, 1.0)), float(tpr[i] - fpr[i]), float(tpr[i]), float(fpr[i])


def fit_fixed_scale(maps: Any, y_true: Any = None, quantile: float = 0.5) -> tuple[np.ndarray, dict]:
    """Per-class scale for ``scale_mode="fixed"``: a quantile of the per-slice peak of the raw map.

    With the median (default) over slices positive for the class, the peak of a typical positive slice maps to
    about 255, so mask thresholds keep the meaning they have with per-image scaling, but stay fixed across slices.

    Args:
        maps: (N, 5, H, W) raw heatmaps of validation slices.
        y_true: (N, 5) slice labels; None uses every slice for every class.
        quantile: in (0, 1].

    Returns:
        (scale (5,) positive, report with "warnings" for classes without positives or without a positive peak).
    """
    if not 0.0 < quantile <= 1.0:
        raise ConfigError(f"quantile must lie in (0, 1], got {quantile}")
    maps = as_numpy(maps)
    if maps.ndim != 4 or maps.shape[1] != NUM_CLASSES:
        raise ValueError(f"heatmaps must be (N, {NUM_CLASSES}, H, W), got shape {maps.shape}")
    peaks = np.concatenate([np.fmax(maps[s : s + CHUNK_SLICES].astype(np.float32), 0).max(axis=(2, 3))
                            for s in range(0, len(maps), CHUNK_SLICES)])  # (N, 5)
    y = np.ones(peaks.shape, bool) if y_true is None else as_numpy(y_true) > 0.5
    scale, warnings = np.ones(NUM_CLASSES), []
    for k, name in enumerate(CLASSES):
        sel = peaks[y[:, k], k]
        if sel.size == 0:
            warnings.append(f"{name}: no positive slice; scale from all slices")
            sel = peaks[:, k]
        value = float(np.quantile(sel, quantile)) if sel.size else 0.0
        if value > 0:
            scale[k] = value
        else:
            warnings.append(f"{name}: heatmap never positive; scale set to 1.0")
    return scale, {"quantile": quantile, "warnings": warnings, "scale": scale.tolist()}


# ----------------------------------------------------------------------------------------------- mask thresholds


@dataclass
class _Signatures:
    """Unique pixel signatures: levels (U, 5), subtype order (U, 5), truth (U,), counts (U,), constant part."""

    levels: np.ndarray
    order: np.ndarray
    truth: np.ndarray
    counts: np.ndarray
    inactive: np.ndarray  # (n_truth,) pixel counts per true value of pixels never predicted (label 0 always)
    binary: bool

    @property
    def n_truth(self) -> int:
        return 2 if self.binary else NUM_CLASSES + 1


def _mask_kind(masks: np.ndarray, mask_kind: str) -> bool:
    """True for binary any-hemorrhage masks."""
    if mask_kind == "auto":
        if masks.dtype == bool or (masks.size > 0 and masks.max() > NUM_CLASSES):
            return True
        if masks.size and masks.max() <= 1:
            raise ConfigError("masks hold only 0 and 1: pass mask_kind='binary' (any hemorrhage) or 'labels' "
                              "(label 1 = IPH)")
        return False
    if mask_kind not in ("labels", "binary"):
        raise ConfigError(f"mask_kind must be 'auto', 'labels' or 'binary', got {mask_kind!r}")
    return mask_kind == "binary"


def _binary_cut(masks: np.ndarray) -> float:
    """Foreground is ``mask > cut``: 127 for 8-bit masks (0/255 JPEG masks carry 1s and 254s of noise), else 0."""
    return 127.0 if masks.dtype != bool and masks.size and masks.max() > NUM_CLASSES else 0.0


def _encode_chunk(v: np.ndarray, t: np.ndarray, grid: np.ndarray, binary: bool) -> tuple[np.ndarray, np.ndarray]:
    """Codes of the active pixels of one chunk, and counts per true value of the inactive ones."""
    levels = np.searchsorted(grid, v, side="left").astype(np.int64)  # (n, 5, H, W): passes grid[g] iff g < level
    levels = np.moveaxis(levels, 1, -1)  # (n, H, W, 5)
    active = levels.max(axis=-1) > 0
    inactive = np.bincount(t[~active].astype(np.intp), minlength=2 if binary else NUM_CLASSES + 1)
    la, ta = levels[active], t[active].astype(np.int64)  # (P, 5), (P,)
    code = ta
    for k in range(NUM_CLASSES):
        code = (code << 4) | la[:, k]
    if not binary:  # the order of values among passing subtypes decides the argmax (ties: lowest class first)
        va = np.where(la > 0, np.moveaxis(v, 1, -1)[active], -1.0)
        order = np.argsort(-va, axis=1, kind="stable")
        for j in range(NUM_CLASSES):
            code = (code << 3) | order[:, j]
    return code, inactive


def _signatures(probs, maps255, masks, class_thresholds, grid, binary) -> _Signatures:
    gate = probs > np.asarray(class_thresholds)[None, :]  # (N, 5)
    truth = (masks > _binary_cut(masks)) if binary else masks
    codes, inactive = [], 0
    for s0 in range(0, len(maps255), CHUNK_SLICES):
        v = maps255[s0 : s0 + CHUNK_SLICES].astype(np.float32) * gate[s0 : s0 + CHUNK_SLICES, :, None, None]
        code, ina = _encode_chunk(v, truth[s0 : s0 + CHUNK_SLICES], grid, binary)
        codes.append(code)
        inactive = inactive + ina
    uniq, counts = np.unique(np.concatenate(codes), return_counts=True)
    order = np.zeros((len(uniq), NUM_CLASSES), np.int64)
    if not binary:
        for j in reversed(range(NUM_CLASSES)):
            order[:, j] = uniq & 7
            uniq = uniq >> 3
    levels = np.zeros((len(order), NUM_CLASSES), np.int64)
    for k in reversed(range(NUM_CLASSES)):
        levels[:, k] = uniq & 15
        uniq = uniq >> 4
    return _Signatures(levels, order, uniq, counts.astype(np.float64), np.asarray(inactive, np.float64), binary)


def _confusions(sig: _Signatures, vectors: np.ndarray) -> np.ndarray:
    """(C, n_pred, n_truth) pixel counts for C grid-index vectors (C, 5); n_pred = 6 (labels) or 2 (binary)."""
    passes = vectors[:, None, :] < sig.levels[None, :, :]  # (C, U, 5)
    if sig.binary:
        pred, n_pred = passes.any(axis=2).astype(np.intp), 2
    else:
        in_order = np.take_along_axis(passes, np.broadcast_to(sig.order, passes.shape), axis=2)
        first = in_order.argmax(axis=2)  # (C, U) position of the highest passing subtype
        winner = np.take_along_axis(np.broadcast_to(sig.order, passes.shape), first[..., None], axis=2)[..., 0]
        pred, n_pred = np.where(in_order.any(axis=2), winner + 1, 0), NUM_CLASSES + 1
    nc, nt = len(vectors), sig.n_truth
    idx = (np.arange(nc)[:, None] * n_pred + pred) * nt + sig.truth[None, :]
    cm = np.bincount(idx.ravel(), weights=np.broadcast_to(sig.counts, idx.shape).ravel(), minlength=nc * n_pred * nt)
    cm = cm.astype(np.float64, copy=False).reshape(nc, n_pred, nt)  # an empty bincount comes back as int64
    cm[:, 0, :] += sig.inactive
    return cm


def _scores(cm: np.ndarray, binary: bool) -> tuple[np.ndarray, np.ndarray]:
    """Objective (C,) and per-subtype Dice (C, 5) (binary: the any-hemorrhage Dice repeated) from confusions."""
    if binary:
        tp, pred_pos, true_pos = cm[:, 1, 1], cm[:, 1, :].sum(1), cm[:, :, 1].sum(1)
        denom = pred_pos + true_pos
        dice = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
        return dice, np.repeat(dice[:, None], NUM_CLASSES, axis=1)
    k = np.arange(1, NUM_CLASSES + 1)
    tp = cm[:, k, k]  # (C, 5)
    pred_pos, true_pos = cm[:, k, :].sum(2), cm[:, :, k].sum(1)
    denom = pred_pos + true_pos
    dice = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
    present = true_pos[0] > 0
    return dice[:, present].mean(axis=1), dice


def _evaluate(sig: _Signatures, vectors: np.ndarray, chunk_elems: int = 4_000_000) -> tuple[np.ndarray, np.ndarray]:
    step = max(1, chunk_elems // max(1, len(sig.counts) * NUM_CLASSES))
    parts = [_scores(_confusions(sig, vectors[i : i + step]), sig.binary) for i in range(0, len(vectors), step)]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def _best(scores: np.ndarray) -> int:
    """Index of the best score; vectors are listed from high to low thresholds, so ties go to the higher ones."""
    return int(np.argmax(scores))


def _independent(sig: _Signatures, n_grid: int) -> np.ndarray:
    """Per-class optimum with the other subtypes switched off (grid index n_grid = never passes)."""
    best = np.empty(NUM_CLASSES, np.int64)
    for k in range(NUM_CLASSES):
        vecs = np.full((n_grid, NUM_CLASSES), n_grid)
        vecs[:, k] = np.arange(n_grid)[::-1]
        objective, dice = _evaluate(sig, vecs)
        best[k] = vecs[_best(objective if sig.binary else dice[:, k]), k]
    return best


def _coordinate_ascent(sig: _Signatures, start: np.ndarray, n_grid: int) -> tuple[np.ndarray, float]:
    current = start.copy()
    score = float(_evaluate(sig, current[None])[0][0])
    improved = True
    while improved:
        improved = False
        for k in range(NUM_CLASSES):
            vecs = np.repeat(current[None], n_grid, axis=0)
            vecs[:, k] = np.arange(n_grid)[::-1]
            objective = _evaluate(sig, vecs)[0]
            i = _best(objective)
            if objective[i] > score + 1e-12:
                current, score, improved = vecs[i].copy(), float(objective[i]), True
    return current, score


def _all_vectors(n_grid: int) -> np.ndarray:
    """Every grid-index vector, high thresholds first (for the tie rule)."""
    return np.array(list(itertools.product(range(n_grid - 1, -1, -1), repeat=NUM_CLASSES)), dtype=np.int64)


def grid_search_mask_thresholds(
    probs: Any,
    maps255: Any,
    masks: Any,
    class_thresholds: Any,
    grid: Iterable[float] = PAPER_GRID,
    joint: bool = True,
    mask_kind: str = "auto",
    method: str = "auto",
    budget: int = DEFAULT_BUDGET,
) -> tuple[np.ndarray, dict]:
    """Mask thresholds m_k maximising Dice of Algorithm 1's labels on slices that have masks.

    Args:
        probs: (N, 5) slice probabilities.
        maps255: (N, 5, H, W) heatmaps on the 0..255 scale, as Algorithm 1 sees them.
        masks: (N, H, W) true label maps 0..5, or binary any-hemorrhage masks (bool, 0/1, or 8-bit 0/255 where
            foreground is > 127, robust to JPEG noise).
        class_thresholds: (5,) c_k used for the gate.
        grid: candidate mask thresholds (default 25, 50, ..., 200).
        joint: True searches the joint grid (see the module docstring); False picks each class's own optimum
            with the other subtypes switched off (labels: its own Dice; binary: Dice against all hemorrhage).
        mask_kind: "auto" (bool or values > 5 -> binary, else labels), "labels" or "binary" (for 0/1 masks).
        method: "auto", "exhaustive" or "coordinate" for the joint search.
        budget: largest signatures x vectors count "auto" searches exhaustively.

    Returns:
        (best (5,) mask thresholds, table): table holds "best", "score", "objective", "method", "grid",
        "independent", "curves" (objective vs each class's threshold, the others at their best), "class_dice"
        (each subtype's own Dice along the same curves), "signatures", "pixels" and "warnings".
    """
    probs, maps, masks = as_numpy(probs), as_numpy(maps255), as_numpy(masks)
    c = np.asarray(check_vector(class_thresholds, "class thresholds", 0.0, 1.0))
    grid_arr = np.asarray(sorted(set(float(g) for g in grid)), dtype=np.float64)
    if grid_arr.size == 0 or grid_arr.min() < 0 or grid_arr.max() > 255 or grid_arr.size > 15:
        raise ConfigError(f"mask threshold grid needs 1 to 15 values in [0, 255], got {list(grid_arr)}")
    if method not in ("auto", "exhaustive", "coordinate"):
        raise ConfigError(f"method must be 'auto', 'exhaustive' or 'coordinate', got {method!r}")
    binary = _check_inputs(probs, maps, masks, mask_kind)
    sig = _signatures(probs, maps, masks, c, grid_arr, binary)
    n = len(grid_arr)
    independent = _independent(sig, n)
    best, used = independent, "independent"
    if joint:
        best, used = _joint(sig, n, independent, method, budget)
    return grid_arr[best], _table(sig, grid_arr, best, independent, used, maps.shape[0])


def _check_inputs(probs: np.ndarray, maps: np.ndarray, masks: np.ndarray, mask_kind: str) -> bool:
    """Validate shapes and mask values; return True for binary masks."""
    if maps.ndim != 4 or maps.shape[1] != NUM_CLASSES or probs.shape != maps.shape[:2]:
        raise ValueError(f"need probs (N, 5) and heatmaps (N, 5, H, W); got {probs.shape} and {maps.shape}")
    if masks.shape != (maps.shape[0], *maps.shape[2:]):
        raise ValueError(f"masks {masks.shape} must be (N, H, W) matching heatmaps {maps.shape}")
    if not np.any(masks):
        raise UnsupportedInputError("the masks hold no hemorrhage pixel; mask thresholds cannot be calibrated")
    binary = _mask_kind(masks, mask_kind)
    if not binary and (masks.min() < 0 or masks.max() > NUM_CLASSES):
        raise ValueError(f"label masks must lie in 0..{NUM_CLASSES}, got {masks.min()}..{masks.max()}")
    return binary


def _joint(sig: _Signatures, n: int, independent: np.ndarray, method: str, budget: int) -> tuple[np.ndarray, str]:
    if method == "exhaustive" or (method == "auto" and n**NUM_CLASSES * len(sig.counts) <= budget):
        vectors = _all_vectors(n)
        return vectors[_best(_evaluate(sig, vectors)[0])], "exhaustive"
    starts = [independent] + [np.full(NUM_CLASSES, g) for g in range(n - 1, -1, -1)]
    results = [_coordinate_ascent(sig, s, n) for s in starts]
    scores = [r[1] for r in results]
    return results[int(np.argmax(scores))][0], "coordinate"


def _table(sig: _Signatures, grid: np.ndarray, best: np.ndarray, independent: np.ndarray, used: str,
           n_slices: int) -> dict:
    objective, _ = _evaluate(sig, best[None])
    curves, class_dice = {}, {}
    for k, name in enumerate(CLASSES):
        vecs = np.repeat(best[None], len(grid), axis=0)
        vecs[:, k] = np.arange(len(grid))
        obj, dice = _evaluate(sig, vecs)
        curves[name], class_dice[name] = obj.tolist(), dice[:, k].tolist()
    no_signal = [name for k, name in enumerate(CLASSES) if not np.any(sig.levels[:, k] > 0)]
    warnings = [f"{name}: no gated heatmap pixel above {grid[0]:g}; threshold not calibrated (set to {grid[-1]:g})"
                for name in no_signal]
    if not sig.binary:
        absent = [name for k, name in enumerate(CLASSES)
                  if not np.any(sig.truth == k + 1) and sig.inactive[k + 1] == 0]
        warnings += [f"{name}: absent from the masks; its threshold only limits false positives" for name in absent]
    return {
        "best": dict(zip(CLASSES, grid[best].tolist())),
        "score": float(objective[0]),
        "objective": "binary_dice" if sig.binary else "mean_subtype_dice",
        "method": used,
        "grid": grid.tolist(),
        "independent": dict(zip(CLASSES, grid[independent].tolist())),
        "curves": curves,
        "class_dice": class_dice,
        "signatures": int(len(sig.counts)),
        "pixels": int(sig.counts.sum() + sig.inactive.sum()),
        "slices": int(n_slices),
        "warnings": warnings,
    }
