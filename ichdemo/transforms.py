"""Pure array transforms from a ``Volume`` to model input and back (MONAI-style: no dataset plumbing here).

The pipeline is: ``to_unit`` (window HU to [0, 1], or rescale pre-windowed grey) -> ``stack_slices`` (three
consecutive slices as channels, METHOD.md "Input") -> ``ResizeSpec.to_model`` (letterbox to the model's square input).
``ResizeSpec.to_source`` maps any model-grid array (input size or a heatmap at input/4) back onto the source pixel
grid exactly: same shape, pixel centres aligned, padding removed.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from ichdemo.constants import WINDOWS
from ichdemo.errors import ConfigError


def resolve_window(window: str | tuple[float, float]) -> tuple[float, float]:
    """Return (centre, width) in HU for a preset name or an explicit pair.

    Raises:
        ConfigError: unknown preset or a non-positive width.
    """
    if isinstance(window, str):
        if window not in WINDOWS:
            raise ConfigError(f"unknown window preset {window!r}; choose one of {', '.join(WINDOWS)}")
        return WINDOWS[window]
    centre, width = (float(v) for v in window)
    if width <= 0:
        raise ConfigError(f"window width must be positive, got {width}")
    return centre, width


def window(hu: np.ndarray, centre: float, width: float) -> np.ndarray:
    """Map HU to [0, 1]: centre - width/2 -> 0, centre + width/2 -> 1, clipped (float32)."""
    lo = centre - width / 2.0
    out = (np.asarray(hu, dtype=np.float32) - lo) / np.float32(width)
    return np.clip(out, 0.0, 1.0, out=out)


def to_unit(data: np.ndarray, prewindowed: bool, window_: str | tuple[float, float] = "paper") -> np.ndarray:
    """Bring a volume's values to [0, 1] the way the model saw them in training.

    Args:
        data: (S, H, W) HU, or 0..255 grey when ``prewindowed``.
        prewindowed: the window is baked into the pixels (PNG/JPG); they are only rescaled.
        window_: preset name or (centre, width); ignored for pre-windowed input.
    """
    if prewindowed:
        return np.clip(np.asarray(data, dtype=np.float32) / 255.0, 0.0, 1.0)
    return window(data, *resolve_window(window_))


def stack_slices(unit: np.ndarray) -> np.ndarray:
    """(S, H, W) -> (S, 3, H, W) with channels (i-1, i, i+1); edge slices repeated (METHOD.md DECIDE: repeat)."""
    if unit.ndim != 3:
        raise ValueError(f"expected (S, H, W), got shape {unit.shape}")
    idx = np.arange(unit.shape[0])
    prev_, next_ = np.maximum(idx - 1, 0), np.minimum(idx + 1, unit.shape[0] - 1)
    return np.stack([unit[prev_], unit, unit[next_]], axis=1)


@dataclass(frozen=True)
class ResizeSpec:
    """Letterbox geometry between a source grid (rows, cols) and a square model grid of ``size``.

    The source is scaled by ``scale`` so its longer side becomes ``size`` and centred with zero padding.
    """

    rows: int
    cols: int
    size: int

    @property
    def scale(self) -> float:
        return self.size / max(self.rows, self.cols)

    @property
    def inner(self) -> tuple[int, int]:
        """(rows, cols) of the source image inside the model grid."""
        return max(1, round(self.rows * self.scale)), max(1, round(self.cols * self.scale))

    @property
    def offset(self) -> tuple[int, int]:
        """(top, left) padding on the model grid."""
        r, c = self.inner
        return (self.size - r) // 2, (self.size - c) // 2

    def to_model(self, arr: np.ndarray) -> np.ndarray:
        """(..., rows, cols) -> (..., size, size) float32, bilinear (area when shrinking), zero padded."""
        r, c = self.inner
        top, left = self.offset
        out = np.zeros(arr.shape[:-2] + (self.size, self.size), dtype=np.float32)
        interp = cv2.INTER_AREA if self.scale < 1 else cv2.INTER_LINEAR
        out[..., top : top + r, left : left + c] = _resize_stack(arr, (r, c), interp)
        return out

    def to_source(self, arr: np.ndarray, nearest: bool = False) -> np.ndarray:
        """(..., h, w) on the model grid (any h = w, e.g. size or size/4) -> (..., rows, cols) on the source grid.

        Args:
            arr: model-grid maps; a heatmap at input/4 is first brought to ``size`` (bilinear).
            nearest: nearest-neighbour (label maps) instead of bilinear (heatmaps, probabilities).
        """
        if arr.shape[-1] != arr.shape[-2]:
            raise ValueError(f"model-grid arrays are square, got {arr.shape[-2:]}")
        interp = cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR
        if arr.shape[-1] != self.size:
            arr = _resize_stack(arr, (self.size, self.size), interp)
        r, c = self.inner
        top, left = self.offset
        inner = arr[..., top : top + r, left : left + c]
        return _resize_stack(inner, (self.rows, self.cols), interp)


def _resize_stack(arr: np.ndarray, shape: tuple[int, int], interp: int) -> np.ndarray:
    """Resize the last two axes of any-rank array with OpenCV, keeping the dtype for nearest."""
    lead = arr.shape[:-2]
    flat = np.ascontiguousarray(arr.reshape((-1,) + arr.shape[-2:]))
    if flat.dtype == np.float16 or (flat.dtype.kind in "iub" and interp != cv2.INTER_NEAREST):
        flat = flat.astype(np.float32)
    if flat.dtype == bool:
        flat = flat.astype(np.uint8)
    size = (shape[1], shape[0])  # cv2 wants (width, height)
    if flat.shape[1:] == shape:
        out = flat.copy()
    else:  # frame by frame: OpenCV's resize takes at most 4 channels for some dtypes and modes
        out = np.stack([cv2.resize(f, size, interpolation=interp) for f in flat])
    return np.ascontiguousarray(out).reshape(lead + shape)


def prepare(
    data: np.ndarray, prewindowed: bool, size: int, window_: str | tuple[float, float] = "paper"
) -> tuple[np.ndarray, ResizeSpec]:
    """Volume data (S, H, W) -> model input (S, 3, size, size) in [0, 1] and the geometry to map results back."""
    spec = ResizeSpec(int(data.shape[1]), int(data.shape[2]), int(size))
    return spec.to_model(stack_slices(to_unit(data, prewindowed, window_))), spec
