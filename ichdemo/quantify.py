"""From heatmaps to subtype masks and volumes: the paper's Algorithm 1, mL per subtype and the bedside ABC/2.

METHOD.md, "From heatmaps to masks". The pipeline is::

    maps255 = scale_heatmaps(maps, mode)               # (N, 5, H, W) raw maps -> 0..255
    labels = algorithm1(probs, maps255, c, m)           # (N, H, W) uint8, 0 = normal, k = CLASSES[k - 1]
    volumes_ml(labels, spacing), abc2_ml(labels, spacing)

DECIDE (heatmap scale), recorded here: ``scale_mode="image"`` (the default) divides each image's map of each class
by its own maximum, as the paper and Grad-CAM tools do; ``scale_mode="fixed"`` divides by one scale per class
stored with the model (fitted on validation data by ``ichdemo.calibrate.fit_fixed_scale``), so a mask threshold
means the same on every slice and series. With "image" a gated class always keeps its peak pixel (it maps to 255);
with "fixed" a weak map can fall below every threshold. The default stays "image" (the paper's protocol) until a
calibration run shows "fixed" gives the better Dice; a model's config.json may choose "fixed".

Speed: the app re-thresholds a cached series on every slider move, so ``algorithm1`` works slice-chunk by
slice-chunk with in-place integer ops (about 15 ms for 40 x 5 x 512 x 512 uint8 maps on one CPU core). Cache
``scale_heatmaps(maps, dtype=np.uint8)`` once per series: its rounding up makes ``map255 > m`` exact for integer m.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.spatial import ConvexHull

from ichdemo.constants import CLASSES
from ichdemo.errors import ConfigError

NUM_CLASSES = len(CLASSES)
SCALE_MODES = ("image", "fixed")
DEFAULT_CLASS_THRESHOLDS: tuple[float, ...] = (0.5,) * NUM_CLASSES
PAPER_MASK_THRESHOLDS: tuple[float, ...] = (75.0, 125.0, 125.0, 75.0, 25.0)
"""The paper's mask thresholds for its own LSE U-Net (IPH, IVH, SAH, SDH, EDH); Grad-CAM baselines used 150-200."""
CHUNK_SLICES = 4  # slices per chunk: keeps the temporaries of Algorithm 1 small (4 x 512 x 512 x 8 bytes)


def as_numpy(x: Any) -> np.ndarray:
    """Array-like or torch tensor (any device, bf16 included) -> numpy array, without importing torch."""
    if hasattr(x, "detach"):  # torch tensor: leave the autograd graph and the device at the boundary
        x = x.detach().cpu()
        if str(x.dtype) in ("torch.bfloat16", "torch.float16"):
            x = x.float()
        x = x.numpy()
    return np.asarray(x)


# ----------------------------------------------------------------------------------------------- thresholds


def _split(text: str, what: str) -> list[float]:
    parts = [p.strip() for p in str(text).split(",")]
    if len(parts) != NUM_CLASSES or any(p == "" for p in parts):
        raise ConfigError(f"need {NUM_CLASSES} comma-separated {what} ({','.join(CLASSES)}), got {text!r}")
    try:
        return [float(p) for p in parts]
    except ValueError as err:
        raise ConfigError(f"{what} must be numbers, got {text!r}") from err


def check_vector(values: Any, what: str, lo: float, hi: float) -> tuple[float, ...]:
    """Five finite numbers in [lo, hi] from a sequence, a {class name: value} dict or an "a,b,c,d,e" string.

    ``what`` names the values in error messages ("class thresholds", "mask thresholds", ...).
    """
    if isinstance(values, str):
        values = _split(values, what)
    if isinstance(values, dict):
        unknown = sorted(set(values) - set(CLASSES))
        missing = [c for c in CLASSES if c not in values]
        if unknown or missing:
            raise ConfigError(f"{what} keyed by class need exactly {', '.join(CLASSES)}; "
                              f"unknown {unknown}, missing {missing}")
        values = [values[c] for c in CLASSES]
    try:
        out = tuple(float(v) for v in np.asarray(values, dtype=float).ravel())
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{what} must be numbers, got {values!r}") from err
    if len(out) != NUM_CLASSES:
        raise ConfigError(f"need {NUM_CLASSES} {what} ({', '.join(CLASSES)}), got {len(out)}")
    bad = [f"{c}={v:g}" for c, v in zip(CLASSES, out) if not (np.isfinite(v) and lo <= v <= hi)]
    if bad:
        raise ConfigError(f"{what} must lie in [{lo:g}, {hi:g}]; out of range: {', '.join(bad)}")
    return out


def parse_thresholds(text: str, kind: str = "class") -> tuple[float, ...]:
    """Parse "a,b,c,d,e" (IPH, IVH, SAH, SDH, EDH) into five validated floats (the CLI's threshold flags).

    Args:
        text: comma-separated numbers, spaces allowed.
        kind: "class" (probabilities, [0, 1]) or "mask" (heatmap levels, [0, 255]).

    Raises:
        ConfigError: unknown kind, wrong count, not a number, NaN or out of range.
    """
    if kind not in ("class", "mask"):
        raise ConfigError(f"threshold kind must be 'class' or 'mask', got {kind!r}")
    hi = 1.0 if kind == "class" else 255.0
    return check_vector(text, f"{kind} thresholds", 0.0, hi)


@dataclass(frozen=True)
class Thresholds:
    """Everything Algorithm 1 needs besides the network: stored in a model's config.json under "thresholds".

    Attributes:
        class_thresholds: c_k, probability above which subtype k is present on a slice, in [0, 1].
        mask_thresholds: m_k, level of the 0..255 heatmap above which a pixel belongs to subtype k.
        scale_mode: "image" (per image and class max, the paper) or "fixed" (``scale`` per class).
        scale: five positive raw-heatmap values mapped to 255 when ``scale_mode == "fixed"``, else None.
    """

    class_thresholds: tuple[float, ...] = DEFAULT_CLASS_THRESHOLDS
    mask_thresholds: tuple[float, ...] = PAPER_MASK_THRESHOLDS
    scale_mode: str = "image"
    scale: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        c = check_vector(self.class_thresholds, "class thresholds", 0.0, 1.0)
        object.__setattr__(self, "class_thresholds", c)
        object.__setattr__(self, "mask_thresholds", check_vector(self.mask_thresholds, "mask thresholds", 0.0, 255.0))
        if self.scale_mode not in SCALE_MODES:
            raise ConfigError(f"scale_mode must be one of {SCALE_MODES}, got {self.scale_mode!r}")
        if self.scale_mode == "fixed":
            if self.scale is None:
                raise ConfigError("scale_mode 'fixed' needs a per-class 'scale' (5 positive numbers)")
            scale = check_vector(self.scale, "heatmap scale values", 0.0, np.inf)
            if min(scale) <= 0:
                raise ConfigError(f"heatmap scale must be positive per class, got {scale}")
            object.__setattr__(self, "scale", scale)
        elif self.scale is not None:
            object.__setattr__(self, "scale", check_vector(self.scale, "heatmap scale values", 0.0, np.inf))

    @classmethod
    def from_config(cls, cfg: dict | None) -> Thresholds:
        """Build from a dict of the fields (``to_dict`` output), or from a model config holding one at "thresholds".

        Missing fields take the defaults; unknown keys are an error (they are usually typos).
        """
        cfg = dict(cfg or {})
        if isinstance(cfg.get("thresholds"), dict):
            cfg = dict(cfg["thresholds"])
        fields = ("class_thresholds", "mask_thresholds", "scale_mode", "scale")
        unknown = sorted(set(cfg) - set(fields))
        if unknown:
            raise ConfigError(f"unknown threshold setting(s) {unknown}; expected {list(fields)}")
        return cls(**cfg)

    def to_dict(self) -> dict:
        """JSON-ready dict (lists of floats); ``Thresholds.from_config(t.to_dict()) == t``."""
        return {
            "class_thresholds": list(self.class_thresholds),
            "mask_thresholds": list(self.mask_thresholds),
            "scale_mode": self.scale_mode,
            "scale": None if self.scale is None else list(self.scale),
        }

    def replace(self, **changes: Any) -> Thresholds:
        """A copy with some fields changed (e.g. CLI overrides), validated again; None values are ignored."""
        merged = {**self.to_dict(), **{k: v for k, v in changes.items() if v is not None}}
        return Thresholds.from_config(merged)


# ----------------------------------------------------------------------------------------------- heatmaps


def _check_maps(maps: np.ndarray) -> None:
    if maps.ndim != 4 or maps.shape[1] != NUM_CLASSES:
        raise ValueError(f"heatmaps must be (N, {NUM_CLASSES}, H, W), got shape {maps.shape}")


def scale_heatmaps(
    maps: Any,
    mode: str = "image",
    scale: Any = None,
    dtype: Any = np.float32,
) -> np.ndarray:
    """Rescale raw heatmaps to the 0..255 range that mask thresholds refer to.

    Negative values are clipped to 0 first (Grad-CAM's ReLU; the LSE U-Net map's Grad-CAM is ReLU of a rescaled
    map, METHOD.md), NaN counts as 0.

    Args:
        maps: (N, 5, H, W) raw maps (float16/32/64, or a torch tensor).
        mode: "image": each (image, class) map divided by its own max (an all-zero map stays 0); "fixed": divided
            by ``scale[k]`` per class and clipped to 255.
        scale: (5,) positive per-class scale for "fixed".
        dtype: np.float32 (default) or np.uint8. uint8 rounds UP, so ``out > m`` equals the float comparison for
            any integer m (the cacheable form for the app).

    Returns:
        (N, 5, H, W) array of ``dtype`` in [0, 255].
    """
    maps = as_numpy(maps)
    _check_maps(maps)
    if mode not in SCALE_MODES:
        raise ConfigError(f"scale mode must be one of {SCALE_MODES}, got {mode!r}")
    if mode == "fixed":
        if scale is None:
            raise ConfigError("scale mode 'fixed' needs a per-class scale")
        factor = 255.0 / np.asarray(check_vector(scale, "heatmap scale values", 1e-30, np.inf), dtype=np.float64)
    dtype = np.dtype(dtype)
    if dtype not in (np.dtype(np.float32), np.dtype(np.float64), np.dtype(np.uint8)):
        raise ValueError(f"dtype must be float32, float64 or uint8, got {dtype}")
    out = np.empty(maps.shape, dtype=dtype)
    for s0 in range(0, maps.shape[0], CHUNK_SLICES):
        chunk = np.fmax(maps[s0 : s0 + CHUNK_SLICES].astype(np.float32), 0.0)  # (n, 5, H, W), NaN -> 0
        if mode == "image":
            peak = chunk.max(axis=(2, 3), keepdims=True)
            f = np.divide(255.0, peak, out=np.zeros_like(peak), where=peak > 0)
        else:
            f = factor.astype(np.float32)[None, :, None, None]
        chunk *= f
        np.minimum(chunk, 255.0, out=chunk)
        if dtype == np.uint8:
            np.ceil(chunk, out=chunk)
        out[s0 : s0 + CHUNK_SLICES] = chunk
    return out


# ----------------------------------------------------------------------------------------------- Algorithm 1


def algorithm1(
    probs: Any,
    maps255: Any,
    class_thresholds: Any,
    mask_thresholds: Any,
) -> np.ndarray:
    """The paper's Algorithm 1: class gate, mask threshold, argmax over (normal, 5 subtypes).

    For each image, channel 0 (normal) is zeros; channel k is ``map_k`` where ``probs[k] > c_k`` and
    ``map_k > m_k``, else 0; the label is the argmax over the 6 channels, ties going to the lowest channel, so a
    pixel where every channel is 0 is 0 (normal).

    Args:
        probs: (N, 5) slice probabilities (or (5,) for one image).
        maps255: (N, 5, H, W) heatmaps on the 0..255 scale (or (5, H, W)); uint8 is fastest.
        class_thresholds: (5,) c_k in [0, 1].
        mask_thresholds: (5,) m_k in [0, 255].

    Returns:
        (N, H, W) (or (H, W)) uint8 label map, 0 = normal, k = CLASSES[k - 1].
    """
    probs, maps = as_numpy(probs), as_numpy(maps255)
    single = maps.ndim == 3
    if single:
        probs, maps = probs[None], maps[None]
    _check_maps(maps)
    if probs.shape != maps.shape[:2]:
        raise ValueError(f"probs shape {probs.shape} does not match heatmaps {maps.shape[:2]}")
    c = np.asarray(check_vector(class_thresholds, "class thresholds", 0.0, 1.0))
    m = np.asarray(check_vector(mask_thresholds, "mask thresholds", 0.0, 255.0))
    if maps.dtype.kind == "f" and maps.dtype.itemsize > 4:
        maps = maps.astype(np.float32)  # ordering keys come from float32 bits
    elif maps.dtype.kind not in "fu" or (maps.dtype.kind == "u" and maps.dtype != np.uint8):
        maps = maps.astype(np.float32)
    labels = _algorithm1_chunks(probs > c[None, :], maps, m)
    return labels[0] if single else labels


def _algorithm1_chunks(gate: np.ndarray, maps: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Running max of (value << 3 | tag) over classes; tag = 5 - k so equal values keep the lowest class."""
    n, _, h, w = maps.shape
    is_u8 = maps.dtype == np.uint8
    key_dtype = np.uint16 if is_u8 else np.uint64
    # integer maps: v > m  <=>  v > floor(m); 255 disables a class (no uint8 exceeds it)
    thr_all = np.floor(m).astype(np.uint8) if is_u8 else m.astype(np.float32)
    off = np.uint8(255) if is_u8 else np.float32(np.inf)
    cs = min(CHUNK_SLICES, n) or 1
    best, key = np.empty((cs, h, w), key_dtype), np.empty((cs, h, w), key_dtype)
    passed = np.empty((cs, h, w), bool)
    f32 = np.empty((cs, h, w), np.float32)
    labels = np.empty((n, h, w), np.uint8)
    for s0 in range(0, n, cs):
        s1 = min(n, s0 + cs)
        b, ky, ok, f = best[: s1 - s0], key[: s1 - s0], passed[: s1 - s0], f32[: s1 - s0]
        b[...] = 0
        for k in range(NUM_CLASSES):
            g = gate[s0:s1, k]
            if not g.any():
                continue
            v = maps[s0:s1, k]  # (n, H, W)
            thr = np.where(g, thr_all[k], off).astype(maps.dtype if is_u8 else np.float32)[:, None, None]
            # ordering key: the uint8 value, or the float32 bit pattern (monotone for non-negative floats), << 3
            if is_u8:
                np.greater(v, thr, out=ok)
                np.left_shift(v, 3, out=ky, dtype=key_dtype)
            else:
                f[...] = v
                np.greater(f, thr, out=ok)
                np.left_shift(f.view(np.uint32), 3, out=ky, dtype=key_dtype)
            ky |= key_dtype(NUM_CLASSES - k)
            ky *= ok
            np.maximum(b, ky, out=b)
        np.bitwise_and(b, key_dtype(7), out=ky)
        np.subtract(key_dtype(NUM_CLASSES + 1), ky, out=ky)  # tag t -> label 6 - t = k + 1
        ky *= b > 0
        labels[s0:s1] = ky
    return labels


def labels_from_heatmaps(probs: Any, maps: Any, thresholds: Thresholds) -> np.ndarray:
    """Raw maps -> label map with a ``Thresholds`` (scale, then Algorithm 1). Cache the scaled maps when you can."""
    maps255 = scale_heatmaps(maps, thresholds.scale_mode, thresholds.scale, dtype=np.float32)
    return algorithm1(probs, maps255, thresholds.class_thresholds, thresholds.mask_thresholds)


# ----------------------------------------------------------------------------------------------- volumes


def check_spacing(spacing: Any) -> np.ndarray:
    """(slice, row, col) mm as 3 positive finite floats, or a ``ConfigError`` naming the problem."""
    try:
        sp = np.asarray(spacing, dtype=float).ravel()
    except (TypeError, ValueError) as err:
        raise ConfigError(f"spacing must be 3 numbers (slice, row, col) in mm, got {spacing!r}") from err
    if sp.shape != (3,) or not np.all(np.isfinite(sp)) or np.any(sp <= 0):
        raise ConfigError(f"spacing must be 3 positive numbers (slice, row, col) in mm, got {spacing!r}")
    return sp


def _check_labels(labels: Any) -> np.ndarray:
    labels = as_numpy(labels)
    if labels.ndim != 3:
        raise ValueError(f"label volume must be (S, H, W), got shape {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() > NUM_CLASSES):
        raise ValueError(f"labels must lie in 0..{NUM_CLASSES}, got {labels.min()}..{labels.max()}")
    return labels


def voxel_counts(labels: Any) -> np.ndarray:
    """(6,) voxel count per label value 0..5 of a label map."""
    labels = as_numpy(labels)
    return np.array([np.count_nonzero(labels == k) for k in range(NUM_CLASSES + 1)], dtype=np.int64)


def volumes_ml(labels: Any, spacing: Any) -> dict[str, float]:
    """Hemorrhage volume per subtype: voxel count x voxel volume (mm^3) / 1000 (METHOD.md, Volume).

    Args:
        labels: (S, H, W) label map 0..5.
        spacing: (slice, row, col) voxel spacing in mm (``Volume.spacing``).

    Returns:
        {"IPH": mL, ..., "EDH": mL, "total": mL of all subtypes}.
    """
    labels, sp = _check_labels(labels), check_spacing(spacing)
    ml = voxel_counts(labels)[1:] * float(np.prod(sp)) / 1000.0
    out = {name: float(v) for name, v in zip(CLASSES, ml)}
    out["total"] = float(ml.sum())
    return out


# ----------------------------------------------------------------------------------------------- ABC/2


def _outline_points(mask2d: np.ndarray, row_mm: float, col_mm: float) -> np.ndarray:
    """Pixel-corner points (mm) of the leftmost and rightmost pixel of every row: enough for the convex hull."""
    rows = np.flatnonzero(mask2d.any(axis=1))
    sub = mask2d[rows]
    first = sub.argmax(axis=1)
    last = sub.shape[1] - 1 - sub[:, ::-1].argmax(axis=1)
    pts = []
    for dr in (-0.5, 0.5):
        pts.append(np.stack([rows + dr, first - 0.5], axis=1))
        pts.append(np.stack([rows + dr, last + 0.5], axis=1))
    return np.concatenate(pts) * np.array([row_mm, col_mm])


def feret_diameters(mask2d: np.ndarray, row_mm: float, col_mm: float) -> tuple[float, float]:
    """A = longest diameter (max Feret) of a 2D mask; B = its extent perpendicular to A. Both in mm.

    Pixels count as squares (corner to corner), as a radiologist's caliper spans the lesion's outer edges.
    B is the caliper width across A (for convex lesions the longest chord perpendicular to A).
    """
    pts = _outline_points(mask2d, row_mm, col_mm)  # every pixel is a square, so never degenerate
    hull = pts[ConvexHull(pts).vertices]
    d = hull[:, None, :] - hull[None, :, :]
    dist = np.sqrt((d**2).sum(-1))
    i, j = np.unravel_index(int(dist.argmax()), dist.shape)
    a = float(dist[i, j])
    u = (hull[j] - hull[i]) / a
    proj = hull @ np.array([-u[1], u[0]])
    return a, float(proj.max() - proj.min())


def _abc2_one(mask: np.ndarray, sp: np.ndarray, c_method: str) -> float:
    areas = mask.reshape(mask.shape[0], -1).sum(axis=1)
    if areas.max(initial=0) == 0:
        return 0.0
    s = int(areas.argmax())
    a, b = feret_diameters(mask[s], sp[1], sp[2])
    if c_method == "count":
        n_slices = float(np.count_nonzero(areas))
    else:  # Kothari 1996: >= 75% of the largest area counts 1, 25-75% counts 0.5, less 0
        rel = areas / areas.max()
        n_slices = float(np.count_nonzero(rel >= 0.75) + 0.5 * np.count_nonzero((rel >= 0.25) & (rel < 0.75)))
    return a * b * n_slices * sp[0] / 2.0 / 1000.0


def abc2_ml(labels: Any, spacing: Any, c_method: str = "count") -> dict[str, float]:
    """The bedside ABC/2 volume estimate per subtype, measured on the label map as a radiologist would.

    Variant: each subtype's voxels are measured as one lesion (as ABC/2 is read off a scan, not per fragment).
    A = longest in-plane diameter (max Feret, pixel edges included) on the slice with the largest area of the
    subtype; B = the lesion's extent perpendicular to A on that slice; C = number of slices containing the
    subtype x slice spacing ("count", the default), or Kothari's weighted count ("weighted": slices with >= 75%
    of the largest area count 1, 25-75% count 0.5, smaller ones 0). Volume = A * B * C / 2 (mm^3) / 1000 = mL.
    "total" applies the same to all hemorrhage together.

    Args:
        labels: (S, H, W) label map 0..5.
        spacing: (slice, row, col) in mm.
        c_method: "count" or "weighted".

    Returns:
        {"IPH": mL, ..., "EDH": mL, "total": mL}.
    """
    if c_method not in ("count", "weighted"):
        raise ConfigError(f"c_method must be 'count' or 'weighted', got {c_method!r}")
    labels, sp = _check_labels(labels), check_spacing(spacing)
    out = {name: _abc2_one(labels == k + 1, sp, c_method) for k, name in enumerate(CLASSES)}
    out["total"] = _abc2_one(labels > 0, sp, c_method)
    return out
