"""How an 8-bit image's grey levels were made from Hounsfield units, and the way back.

A PNG/JPG slice of a head CT is a display window: HU ``lo = centre - width / 2`` became grey 0, ``centre + width/2``
became 255, linearly in between, and everything outside was clipped. Knowing (centre, width) the grey levels map back
to HU exactly, up to the 8-bit rounding, inside the window; outside it only a bound is known (grey 0 means "at most
``lo``").

The window is declared (``parse_window``: a preset name, "C/W", "C,W" or a pair) or estimated from the image
(``estimate_window``) with the densities every head CT shares: brain parenchyma about 30-40 HU, CSF 0-15 HU, and
nothing intracranial below water. ``check_declared`` says when a declared window does not fit the image.

How well the estimate does (CT-ICH training patients turned back into HU and exported through each preset; slices
not used to set the priors): whole series are right for 40/120, 40/80, 80/200 and HU PNGs in 155 of 156, and sure
in 154 of them, none wrongly; on single slices that show a brain, 80/200 and HU PNGs are always right and sure,
while 40/120 and 40/80, both centred on 40 HU, are right in 97% and 87% and reported unsure in 33% and 51% (1 of
their 158 sure answers is wrong). Slices without a brain inside a skull (face, skull base, vertex) give an unsure
default.

Example:
    >>> w = parse_window("ctich")
    >>> float(grey_to_hu(np.array([0.0, 255.0]), w.centre, w.width)[1])
    100.0
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from ichdemo.constants import WINDOWS
from ichdemo.errors import ConfigError

GREY_MAX = 255.0

PRESETS: dict[str, tuple[float, float]] = {
    **{name: WINDOWS[name] for name in ("ctich", "brain", "subdural")},  # the usual exports first (in messages)
    **WINDOWS,
    "hu": (127.5, 255.0),
}
"""(centre, width) in HU of the windows an 8-bit head CT image is usually made with: the model presets of
``ichdemo.constants.WINDOWS`` ("ctich" is CT-ICH's JPEG window, HU = grey / 255 * 120 - 20; "brain" 40/80 and
"subdural" 80/200 are the RSNA ones; "bone" is 40/380 as in METHOD.md) and "hu", an HU-clipped export that stores
HU 0..255 as grey 0..255 directly."""

AUTO = ("auto", "")
"""Specs that ask for the estimate, like None."""

UNSURE_BELOW = 0.6
"""An estimate with a lower confidence is reported as unsure (``WindowEstimate.unsure``)."""

# Tissue priors of the estimate, in HU (see ``_penalty``); measured on CT-ICH slices and synthetic phantoms.
BRAIN_HU = (34.0, 5.0, 8.0)  # median intracranial HU: mode, sd below, sd above (partial volume of bone only adds)
SPREAD_HU = (10.5, 0.25)  # interquartile range of intracranial HU: median, log-sd (noise + grey/white contrast)
DARK_SLICE_HU = (-3.0, 27.0, 2.0, 6.0)  # darkest region of one slice: free range, sd below, sd above
DARK_STACK_HU = (3.0, 9.0, 2.0, 4.0)  # of a stack, which shows ventricles or cisterns: CSF, never below water
STACK_SLICES = 8  # slices showing a brain from which the stack prior applies
BRAIN_PLAUSIBLE_HU = (18.0, 58.0)  # a declared window putting the brain median outside this range is called wrong
PRIOR_NATS: dict[str, float] = {"paper": 1.5, "bone": 1.5}
"""Extra penalty of presets rarely used to export images (a prior, in nats); the others have none."""
_TEMPERATURE = 2.5  # penalties are divided by it for the posterior: real anchors vary more than the priors say
_FIT_OK = 4.5  # penalty (nats) up to which an estimate fits the priors; beyond it the confidence decays
_FIT_GAIN = 6.0  # a fitted centre/width replaces the best preset when it lowers the penalty by this much
_MAX_SLICES = 16  # slices of a stack looked at (evenly spaced)
_WORK_PX = 300  # slices are subsampled (strided, which keeps the noise) to about this many pixels a side


@dataclass(frozen=True)
class Window:
    """A linear display window in HU.

    Attributes:
        centre: HU shown as mid grey.
        width: HU range from grey 0 to grey 255 (positive).
        name: preset name, or "C/W" for an explicit window.
    """

    centre: float
    width: float
    name: str

    @property
    def lo(self) -> float:
        return self.centre - self.width / 2.0

    @property
    def hi(self) -> float:
        return self.centre + self.width / 2.0

    def __str__(self) -> str:
        pair = f"{self.centre:g}/{self.width:g}"
        return pair if self.name == pair else f"{self.name} {pair}"


@dataclass(frozen=True)
class WindowEstimate:
    """The window an image was most likely made with.

    Attributes:
        centre: HU.
        width: HU.
        name: preset name, "fitted" for a centre/width fitted to the image, or "default" when nothing could be
            measured.
        confidence: 0..1; below ``UNSURE_BELOW`` the estimate is a guess.
        reason: one line on what was measured and what else was close.
        candidates: posterior probability of each preset (empty when nothing could be measured).
    """

    centre: float
    width: float
    name: str
    confidence: float
    reason: str
    candidates: dict[str, float] = field(default_factory=dict)

    @property
    def unsure(self) -> bool:
        return self.confidence < UNSURE_BELOW

    @property
    def window(self) -> Window:
        return Window(self.centre, self.width, self.name)


# ---------------------------------------------------------------------------------------------------- parsing
_PAIR = re.compile(r"^\s*([-+]?\d+(?:\.\d*)?|[-+]?\.\d+)\s*[/,]\s*([-+]?\d+(?:\.\d*)?|[-+]?\.\d+)\s*$")


def _checked(centre: float, width: float, name: str | None = None) -> Window:
    """A valid window, named after the preset it equals (40/80 is "brain") or after its numbers."""
    if not (math.isfinite(centre) and math.isfinite(width)):
        raise ConfigError(f"window centre and width must be finite numbers, got {centre}/{width}")
    if width <= 0:
        raise ConfigError(f"window width must be positive, got {width:g} (centre/width, e.g. 40/80)")
    preset = next((n for n, (c, w) in PRESETS.items() if (c, w) == (centre, width)), None)
    return Window(float(centre), float(width), name or preset or f"{centre:g}/{width:g}")


def parse_window(spec: str | tuple[float, float] | Window | None) -> Window | None:
    """Read a declared image window.

    Args:
        spec: a preset name (``PRESETS``: "ctich", "brain", "subdural", "bone", "paper", "hu"; any case), "C/W" or
            "C,W" text (e.g. "40/120"), a (centre, width) pair, a ``Window``, or None / "auto" to estimate it.

    Returns:
        The window, or None when it is to be estimated.

    Raises:
        ConfigError: an unknown name, malformed text, a pair that is not two numbers, or a width that is not
            positive.
    """
    if spec is None or isinstance(spec, Window):
        return spec
    if isinstance(spec, str):
        text = spec.strip().lower()
        if text in AUTO:
            return None
        if text in PRESETS:
            return _checked(*PRESETS[text], name=text)
        match = _PAIR.match(text)
        if not match:
            raise ConfigError(
                f"image window {spec!r} not understood; give a preset ({', '.join(PRESETS)}), centre/width in HU "
                "such as '40/80' or '40,80', or 'auto' to estimate it from the image"
            )
        return _checked(float(match.group(1)), float(match.group(2)))
    try:
        centre, width = (float(v) for v in spec)
    except (TypeError, ValueError):
        raise ConfigError(f"image window must be a preset name or (centre, width) in HU, got {spec!r}") from None
    return _checked(centre, width)


# ---------------------------------------------------------------------------------------------------- mapping
def grey_to_hu(grey: np.ndarray, centre: float, width: float) -> np.ndarray:
    """Invert a linear window: grey 0..255 -> HU (float32); grey 0 gives ``lo``, 255 gives ``hi``.

    Args:
        grey: any shape, grey levels 0..255 (values outside are clipped).
        centre: window centre in HU.
        width: window width in HU (positive).
    """
    hu = np.clip(np.asarray(grey, dtype=np.float32), 0.0, GREY_MAX)  # a new array, then in place: one allocation
    hu *= np.float32(width / GREY_MAX)
    hu += np.float32(centre - width / 2.0)
    return hu


def hu_to_grey(hu: np.ndarray, centre: float, width: float) -> np.ndarray:
    """Apply a window the way an 8-bit export does: HU -> grey 0..255, rounded and clipped (uint8)."""
    lo = centre - width / 2.0
    grey = np.round((np.asarray(hu, dtype=np.float64) - lo) / width * GREY_MAX)
    return np.clip(grey, 0, GREY_MAX).astype(np.uint8)


# ---------------------------------------------------------------------------------------------------- anatomy
@dataclass(frozen=True)
class TissueStats:
    """Grey-level anchors measured inside the skull.

    Attributes:
        brain: median grey of intracranial pixels (parenchyma dominates).
        spread: their interquartile range in grey levels.
        dark: darkest smoothed, non-black intracranial grey (0.1th percentile: ventricles, cisterns or sulci), or
            None when all of it is black.
        pixels: intracranial pixels measured.
        slices: slices that showed a brain.
    """

    brain: float
    spread: float
    dark: float | None
    pixels: int
    slices: int

    @property
    def stack(self) -> bool:
        """Enough slices to expect CSF (ventricles, cisterns) among the darkest pixels."""
        return self.slices >= STACK_SLICES


def _disk(r: int) -> np.ndarray:
    y, x = np.ogrid[-r : r + 1, -r : r + 1]
    return x * x + y * y <= r * r


def _largest(mask: np.ndarray) -> np.ndarray:
    labels, n = ndimage.label(mask)
    if n == 0:
        return mask
    sizes = ndimage.sum_labels(mask, labels, range(1, n + 1))
    return labels == 1 + int(np.argmax(sizes))


def _head(grey: np.ndarray) -> np.ndarray:
    """The head: largest non-black region with its holes filled (air is black under every window)."""
    return ndimage.binary_fill_holes(_largest(grey > 12))


def _bone(grey: np.ndarray, head: np.ndarray) -> np.ndarray:
    """Saturated (or, when nothing saturates, the brightest) pixels of the head: the skull."""
    top = float(grey[head].max(initial=0))
    return head & (grey >= (250 if top >= 254 else 0.9 * top))


def intracranial_mask(grey: np.ndarray) -> np.ndarray | None:
    """Pixels inside the skull of one (H, W) slice, away from the bone; None when no skull encloses a brain.

    The brain is the largest region that the skull ring (saturated bone, small gaps closed) encloses, less black
    (air, fat) and its rim, if it covers 15% of the head and more than the bone does. Slices of the face, neck and
    skull base have none; neither have those near the vertex, where the vault's partial volume brightens the brain.
    """
    head = _head(grey)
    if head.sum() < 0.01 * grey.size:
        return None
    r = max(1, round(min(grey.shape) / 160))
    bone = _bone(grey, head)
    # Air and fat (sinuses, orbits) are black under every window; their partial-volume rims would pass for CSF.
    black = ndimage.binary_dilation(ndimage.median_filter(grey, size=3) <= 1, _disk(2 * r))
    for k in (2, 4, 6):
        ring = ndimage.binary_closing(bone, _disk(k * r))
        inside = ndimage.binary_fill_holes(ring) & ~ndimage.binary_dilation(ring, _disk(r))
        if not inside.any() or (grey[inside] <= 1).mean() > 0.05:
            continue
        inside = _largest(inside & ~black)
        if inside.sum() >= max(0.15 * head.sum(), bone.sum()):
            return inside
    return None


def _slices(grey: np.ndarray) -> np.ndarray:
    """(S, H, W) or (H, W) -> up to ``_MAX_SLICES`` evenly spaced slices, subsampled to about ``_WORK_PX``."""
    grey = np.asarray(grey, dtype=np.float32)
    if grey.ndim == 2:
        grey = grey[None]
    if grey.ndim != 3:
        raise ValueError(f"expected a (H, W) slice or an (S, H, W) stack of grey levels, got shape {grey.shape}")
    pick = np.unique(np.linspace(0, grey.shape[0] - 1, min(_MAX_SLICES, grey.shape[0])).round().astype(int))
    step = max(1, math.ceil(min(grey.shape[1:]) / _WORK_PX))
    return grey[pick, ::step, ::step]


def _anchors(g: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Intracranial grey levels of one slice, and its median-smoothed non-black ones (for the dark anchor)."""
    size = max(3, 2 * round(min(g.shape) / 200) + 1)
    core = ndimage.binary_erosion(mask, iterations=size // 2)
    # A grey closing drops dark specks (air bubbles, noise) smaller than the filter; ventricles and cisterns stay.
    smooth = ndimage.median_filter(ndimage.grey_closing(g, size=size), size=size)[core if core.any() else mask]
    return g[mask], smooth[smooth > 1]  # black is air or fat under every window: it says nothing of the window


def tissue_stats(grey: np.ndarray) -> TissueStats | None:
    """Measure the intracranial anchors of a slice or stack of grey levels (None when no slice shows a brain)."""
    values, darks = [], []
    for g in _slices(grey):
        mask = intracranial_mask(g)
        if mask is not None:
            v, d = _anchors(g, mask)
            values.append(v)
            darks.append(d)
    if not values:
        return None
    v, d = np.concatenate(values), np.concatenate(darks)
    q25, q50, q75 = np.percentile(v, [25, 50, 75])
    return TissueStats(
        brain=float(q50),
        spread=float(q75 - q25),
        dark=float(np.percentile(d, 0.1)) if d.size else None,
        pixels=int(v.size),
        slices=len(values),
    )


# ---------------------------------------------------------------------------------------------------- scoring
def _soft_range(x: np.ndarray, prior: tuple[float, float, float, float]) -> np.ndarray:
    """Nats of ``x`` under a prior free inside [prior[0], prior[1]] with Gaussian edges of sd prior[2], prior[3]."""
    lo, hi, sd_lo, sd_hi = prior
    return 0.5 * ((np.maximum(lo - x, 0) / sd_lo) ** 2 + (np.maximum(x - hi, 0) / sd_hi) ** 2)


def _penalty(stats: TissueStats, lo: np.ndarray | float, width: np.ndarray | float) -> np.ndarray:
    """Negative log-likelihood (nats, up to a constant) of the anchors if the image was made with (lo, width).

    The brain median is Gaussian around ``BRAIN_HU`` (wider above), the spread log-normal around ``SPREAD_HU``, the
    dark anchor free inside ``DARK_SLICE_HU`` (``DARK_STACK_HU`` for a stack) with Gaussian edges.
    """
    lo, width = np.asarray(lo, dtype=np.float64), np.asarray(width, dtype=np.float64)
    scale = width / GREY_MAX
    brain = lo + stats.brain * scale
    spread = np.maximum(stats.spread, 0.5) * scale  # an IQR under one grey level is not zero HU
    pen = 0.5 * ((brain - BRAIN_HU[0]) / np.where(brain < BRAIN_HU[0], BRAIN_HU[1], BRAIN_HU[2])) ** 2
    pen = pen + 0.5 * (np.log(spread / SPREAD_HU[0]) / SPREAD_HU[1]) ** 2
    if stats.dark is not None:
        pen = pen + _soft_range(lo + stats.dark * scale, DARK_STACK_HU if stats.stack else DARK_SLICE_HU)
    return pen


def _tissue_hu(stats: TissueStats, window: Window) -> tuple[float, float | None, float]:
    """(brain median, dark anchor or None, spread) in HU under ``window``."""
    scale = window.width / GREY_MAX
    dark = None if stats.dark is None else window.lo + stats.dark * scale
    return window.lo + stats.brain * scale, dark, stats.spread * scale


def _describe(stats: TissueStats, window: Window) -> str:
    brain, dark, spread = _tissue_hu(stats, window)
    dark_text = "" if dark is None else f", darkest CSF {dark:.0f} HU"
    return f"brain {brain:.0f} HU{dark_text}, spread {spread:.0f} HU"


def _fit(stats: TissueStats) -> tuple[Window, float]:
    """The (centre, width) on a 5 HU grid that best fits the tissue priors, and its penalty."""
    centres = np.arange(-50.0, 250.0 + 1e-6, 5.0)
    widths = np.arange(40.0, 600.0 + 1e-6, 5.0)
    c, w = np.meshgrid(centres, widths, indexing="ij")
    pen = _penalty(stats, c - w / 2, w)
    i, j = np.unravel_index(int(np.argmin(pen)), pen.shape)
    return Window(float(centres[i]), float(widths[j]), "fitted"), float(pen[i, j])


def _confidence(penalties: dict[str, float]) -> tuple[dict[str, float], float]:
    """Posterior of each candidate (its ``PRIOR_NATS`` already in ``penalties``) and the best one's confidence."""
    names = list(penalties)
    pen = np.array([penalties[n] for n in names])
    post = np.exp(-(pen - pen.min()) / _TEMPERATURE)
    post /= post.sum()
    fit = math.exp(-max(0.0, float(pen.min()) - _FIT_OK) / 2.0)
    return dict(zip(names, post.round(4).tolist())), float(post.max()) * fit


def _default_estimate(why: str) -> WindowEstimate:
    c, w = PRESETS["ctich"]
    return WindowEstimate(c, w, "default", 0.0, f"unsure: {why}; assumed ctich {c:g}/{w:g}")


def _estimate(stats: TissueStats) -> WindowEstimate:
    """Score every preset (and a fitted window) against measured anchors; see ``estimate_window``."""
    penalties = {n: float(_penalty(stats, c - w / 2, w)) + PRIOR_NATS.get(n, 0.0) for n, (c, w) in PRESETS.items()}
    posterior, confidence = _confidence(penalties)
    ranked = sorted(penalties, key=penalties.get)
    best = Window(*PRESETS[ranked[0]], ranked[0])
    fitted, fit_pen = _fit(stats)
    if penalties[best.name] - fit_pen > _FIT_GAIN:  # no preset comes close: a window of its own, never a sure one
        best, confidence = fitted, min(confidence, UNSURE_BELOW - 0.1) * math.exp(-max(0.0, fit_pen - _FIT_OK) / 2)
    runner = Window(*PRESETS[ranked[1]], ranked[1])
    lead = "unsure: " if confidence < UNSURE_BELOW else ""
    reason = (
        f"{lead}{best} fits ({_describe(stats, best)}); next {runner} (p={posterior[runner.name]:.2f}: "
        f"{_describe(stats, runner)}); {stats.slices} slice(s) measured"
    )
    return WindowEstimate(best.centre, best.width, best.name, round(confidence, 3), reason, posterior)


def estimate_window(grey: np.ndarray) -> WindowEstimate:
    """Estimate the window an 8-bit head CT image was made with, from the tissue densities inside the skull.

    Three anchors are measured inside the skull (``tissue_stats``): the median grey (brain parenchyma, about
    30-40 HU), its interquartile range (about 10 HU of noise and grey/white contrast) and the darkest smoothed
    region (CSF of the ventricles and cisterns, 3-9 HU over a stack; on one slice anything from water to
    parenchyma). Each preset is scored by how far these land from their known HU (``_penalty``); a centre/width
    fitted on a grid replaces the best preset only when no preset comes close. The confidence is the best preset's
    posterior (penalties tempered by ``_TEMPERATURE``), lowered when even the best fits poorly.

    Args:
        grey: (S, H, W) stack or (H, W) slice of grey levels 0..255.

    Returns:
        The estimate; ``name`` "default" (ctich, confidence 0) when no slice shows a brain inside a skull.
    """
    stats = tissue_stats(grey)
    if stats is None:
        return _default_estimate("no brain inside a skull found in the image")
    return _estimate(stats)


def check_declared(grey: np.ndarray, centre: float, width: float) -> str | None:
    """A warning when a declared window does not fit the image, else None.

    A declared window is implausible when the brain would come out outside ``BRAIN_PLAUSIBLE_HU``, when CSF would
    be well below water, or when the estimate confidently prefers a window that gives the brain other HU.

    Args:
        grey: (S, H, W) stack or (H, W) slice of grey levels 0..255.
        centre: declared window centre in HU.
        width: declared window width in HU.
    """
    stats = tissue_stats(grey)
    if stats is None:
        return None
    declared = _checked(centre, width)
    brain, dark, _ = _tissue_hu(stats, declared)
    problems = []
    if not BRAIN_PLAUSIBLE_HU[0] <= brain <= BRAIN_PLAUSIBLE_HU[1]:
        low, high = BRAIN_PLAUSIBLE_HU
        problems.append(f"brain tissue would be at {brain:.0f} HU (expected {low:g}-{high:g})")
    if dark is not None and dark < DARK_SLICE_HU[0] - 3 * DARK_SLICE_HU[2]:
        problems.append(f"the darkest CSF would be at {dark:.0f} HU, below water")
    estimate = _estimate(stats)
    if not estimate.unsure and not _same_mapping(stats, estimate.window, declared):
        problems.append(f"the image looks like {estimate.window} (confidence {estimate.confidence:.2f})")
    return f"declared image window {declared} looks wrong: " + "; ".join(problems) if problems else None


def _same_mapping(stats: TissueStats, a: Window, b: Window, tol_hu: float = 5.0) -> bool:
    """True when two windows give HU within ``tol_hu`` of each other at the image's CSF, brain and bright brain."""
    greys = [stats.brain, min(GREY_MAX, stats.brain + 2 * stats.spread)]
    greys += [] if stats.dark is None else [stats.dark]
    diff = grey_to_hu(np.array(greys), a.centre, a.width) - grey_to_hu(np.array(greys), b.centre, b.width)
    return bool(np.all(np.abs(diff) <= tol_hu))
