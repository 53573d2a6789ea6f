"""Refinement after Algorithm 1: keep the draft's blood where the CT shows blood inside the skull.

On real CT the masks of Algorithm 1 (``ichdemo.quantify.algorithm1``) spill over the lesion and miss parts of it:
the heatmaps are coarse (a 64 x 64 or 128 x 128 grid upsampled to the slice) and know nothing of density. The CT
itself does: acute blood is denser than brain and less dense than bone. This stage, per slice::

    intracranial = inside of the skull (bone threshold, closing, hole filling)           # intracranial_mask()
    candidates   = connected regions of blood density inside it, minus a rim at the inner table, opened
    kept         = candidates the model supports (draft overlap or heatmap level of a gated subtype)
    subtype      = anatomy (abuts the inner table as a layer -> SDH/EDH, else IPH/IVH/SAH), heatmap mass within
    labels       = kept regions, grown back into the rim and the opening's loss within blood density

The model's class gate decides *whether* a slice holds blood (no gated subtype -> nothing on that slice) and
*which* subtypes may appear; the CT decides *where*. Everything is 2D per slice: slices are 5 mm apart in most head
CT, too far for a shape prior across slices to pay for itself, and the gate is already per slice.

Physical values (defaults of ``RefineParams``) and where they come from:

- acute blood 50-95 HU. Clotted blood measures about 50-75 HU, rising to 80-100 HU with clot retraction (the
  density follows the haematocrit: New and Aronow, Radiology 1976; Radiopaedia, "Hounsfield unit" and
  "intracranial haemorrhage"). Grey matter is 37-45 HU and white matter 20-30 HU (same sources), so the band
  starts above grey matter plus a margin for noise; hyperacute or anaemic blood below 50 HU is the price.
- CSF 0-15 HU, fat about -100 HU, air -1000 HU: all outside the band.
- bone: cancellous bone 300-400 HU, cortical bone over 1000 HU (Radiopaedia, "Hounsfield unit"); 300 HU is the
  usual skull threshold of CT brain extraction. 8-bit windowed input saturates below that (a 40/120 brain window
  tops out at 100 HU), so the skull is found at ``min(bone_hu, top - saturation_margin_hu)`` when the data pile up
  at their maximum; see ``skull_threshold``.
- partial volume: a soft-tissue kernel spreads the 1500 HU inner table over about 1 mm, so a rim of 1-1.5 mm inside
  the skull passes through the blood band without being blood (the halo); ``rim_mm`` drops it from the seeds, and
  kept regions grow back into it (an SDH reaches the bone).
- a scanner whose brain reads dense (calibration offset, beam hardening) would put grey matter into a fixed band:
  the band's floor rises with the series' own brain density (``blood_band``), never below 50 HU.

Inputs are Hounsfield units; ``ichdemo.io.load_volume`` converts 8-bit images back through their window first
(CT-ICH's JPEGs: 40/120, HU = grey / 255 * 120 - 20).

Speed, one CPU thread: about 5 ms per 512 x 512 phantom slice with every subtype gated, 6-12 ms per 650 x 650
CT-ICH slice (noisier, more candidate regions), of which the intracranial mask is about 2-4 ms; a slice without a
gated subtype costs only its mask. cv2 does the morphology and labelling on the skull's bounding box, and the
per-region sums read only the seed pixels. The network takes 50-200 ms per slice on the same CPU.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

import cv2
import numpy as np
from scipy import ndimage

from ichdemo.constants import CLASSES
from ichdemo.errors import ConfigError, UnsupportedInputError
from ichdemo.quantify import as_numpy, check_spacing, check_vector

NUM_CLASSES = len(CLASSES)
EXTRA_AXIAL: tuple[str, ...] = ("SDH", "EDH")
"""Collections between the skull and the brain: they lie along the inner table (EDH always against bone)."""
INTRA_AXIAL: tuple[str, ...] = ("IPH", "IVH", "SAH")
"""Blood in the brain, its ventricles or its subarachnoid spaces."""

SATURATED_FRACTION = 2e-3
"""Share of voxels at the data's top level above which the top counts as a window's saturation, not a real value:
bone fills 3-8 % of a windowed head slice, while a real HU volume's maximum is a handful of voxels."""
HULL_FALLBACK_RATIO = 0.1
"""When the closed skull encloses less than this share of its own filled area (about 0.8 for a closed ring), the ring
is open: first a wider closing is tried, then the convex hull of the skull stands in for the inner table."""
BAND_CLIP_HU = 5.0
"""HU beyond the blood band at which values are clipped before smoothing (bone counts as slightly denser blood)."""
OPEN_RING_CLOSING = 3.0
"""Factor on ``closing_mm`` for the second try: seals a craniotomy's saw cuts and burr holes (up to ~2 cm)."""


# ----------------------------------------------------------------------------------------------------- parameters


@dataclass(frozen=True)
class RefineParams:
    """Physical settings of the refinement; every default is a physical value or a resolution argument.

    Attributes:
        blood_hu: acute blood density band in HU (clotted blood 50-75 HU, up to 95 with clot retraction; grey
            matter 37-45 HU stays below the lower bound with a margin for noise).
        blood_contrast_hu: least excess of acute blood over the series' lower-quartile intracranial density (white
            matter, 20-30 HU): the floor of the band rises to that quartile plus this when the brain reads dense (a
            scanner offset, beam hardening), and never falls below ``blood_hu[0]``; 0 turns it off.
        bone_hu: HU above which a voxel is skull (cancellous bone 300-400 HU, cortical > 1000 HU). When the input
            saturates below it (a windowed 8-bit image), the saturation level less ``saturation_margin_hu`` is used.
        saturation_margin_hu: tolerance below a saturated top: JPEG ringing moves saturated bone a few grey levels
            down (one level is 0.47 HU at width 120), blood stays below 95 HU.
        air_hu: HU at or below which a voxel is air or fat, not intracranial content (fat -100 HU, CSF >= 0 HU);
            saturated low ends (a window's bottom, e.g. -20 HU) are treated the same way.
        closing_mm: radius of the closing that seals sutures, vascular foramina and thin fracture lines so the skull
            ring encloses the brain (sutures and foramina are 1-4 mm wide).
        min_cranial_mm2: smallest enclosed section kept as intracranial on a slice (the posterior fossa near the
            foramen magnum is 2-3 cm across); smaller enclosures are air cells and sinuses.
        rim_mm: width of the inner-table partial-volume halo left out of the seeds: a soft-tissue kernel spreads
            the 1500 HU table over about 1 mm, and its tail stays above 50 HU for up to ~1.5 mm (4-5 pixels on
            the training CT-ICH slices, read by eye); kept regions grow back into it.
        smooth_mm: Gaussian sigma before thresholding: image noise (3-5 HU per pixel) would otherwise speckle grey
            matter into the band; 0.5 mm keeps a 2 mm sulcus.
        open_mm: width of the narrowest structure kept (opening): the falx and tentorium (1-2 mm, 50-60 HU) and
            noise specks go, a 2 mm clot stays.
        min_area_mm2: smallest kept region per slice, about a 3.5 mm disc (0.05 mL on a 5 mm slice): below it a
            region is as likely noise, a vessel or a calcification halo as blood.
        support: share of a candidate region covered by the raw draft (any subtype) for the model to support it;
            a quarter-resolution heatmap fills whole grid cells, so a lesion the draft found is mostly covered while
            a region the draft merely grazes is not.
        heat_support: mean heatmap level (0..1 of the 0..255 map) of one gated subtype inside a region that
            supports it without draft overlap. It overrules the draft's own threshold and argmax, so it asks for
            the map to stay near its peak over the whole region (three quarters of a per-image-scaled map's peak):
            diffuse maps of a weak model sit at 0.4-0.7 over the whole brain.
        extra_axial_mm: the region abuts the inner table when its nearest pixel is within this distance of it (the
            dura is about 1 mm thick, plus the rim and a pixel).
        layer_mm: an abutting region is an extra-axial layer when half its pixels lie within this depth of the
            table: an SDH crescent up to about 20 mm thick or an EDH lens (median depth a third of its thickness)
            passes, a lobar hematoma touching the cortex does not.
    """

    blood_hu: tuple[float, float] = (50.0, 95.0)
    blood_contrast_hu: float = 20.0
    bone_hu: float = 300.0
    saturation_margin_hu: float = 3.0
    air_hu: float = -200.0
    closing_mm: float = 3.0
    min_cranial_mm2: float = 300.0
    rim_mm: float = 1.5
    smooth_mm: float = 0.5
    open_mm: float = 1.0
    min_area_mm2: float = 10.0
    support: float = 0.3
    heat_support: float = 0.75
    extra_axial_mm: float = 3.0
    layer_mm: float = 10.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "blood_hu", _check_band(self.blood_hu))
        for f in fields(self):
            if f.name != "blood_hu":
                object.__setattr__(self, f.name, _check_number(f.name, getattr(self, f.name)))
        lo, hi = self.blood_hu
        if not self.bone_hu > hi:
            raise ConfigError(f"bone_hu ({self.bone_hu:g}) must exceed the blood band's top ({hi:g} HU)")
        if not self.air_hu < lo:
            raise ConfigError(f"air_hu ({self.air_hu:g}) must lie below the blood band ({lo:g} HU)")

    @classmethod
    def from_config(cls, cfg: dict | None) -> RefineParams:
        """Build from a dict of fields (``to_dict`` output, or a config holding one at "refine").

        Missing fields take the defaults; unknown keys are an error (usually typos).

        Raises:
            ConfigError: unknown key, not a number, or out of range.
        """
        cfg = dict(cfg or {})
        if isinstance(cfg.get("refine"), dict):
            cfg = dict(cfg["refine"])
        names = [f.name for f in fields(cls)]
        unknown = sorted(set(cfg) - set(names))
        if unknown:
            raise ConfigError(f"unknown refine setting(s) {unknown}; expected some of {names}")
        return cls(**cfg)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict; ``RefineParams.from_config(p.to_dict()) == p``."""
        out = asdict(self)
        out["blood_hu"] = list(self.blood_hu)
        return out


_RANGES: dict[str, tuple[float, float]] = {
    "blood_contrast_hu": (0.0, 100.0),
    "bone_hu": (60.0, 3000.0),
    "saturation_margin_hu": (0.0, 20.0),
    "air_hu": (-1024.0, 40.0),
    "closing_mm": (0.0, 20.0),
    "min_cranial_mm2": (0.0, 20000.0),
    "rim_mm": (0.0, 5.0),
    "smooth_mm": (0.0, 3.0),
    "open_mm": (0.0, 10.0),
    "min_area_mm2": (0.0, 5000.0),
    "support": (0.0, 1.0),
    "heat_support": (0.0, 1.0),
    "extra_axial_mm": (0.0, 30.0),
    "layer_mm": (0.0, 60.0),
}
"""Accepted range per scalar field: wide enough for any sensible scanner and window, narrow enough to catch a value
given in the wrong unit (cm for mm, a 0..255 level for a fraction)."""


def _check_number(name: str, value: Any) -> float:
    lo, hi = _RANGES[name]
    try:
        v = float(value)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"refine setting {name} must be a number, got {value!r}") from err
    if not (np.isfinite(v) and lo <= v <= hi):
        raise ConfigError(f"refine setting {name} must lie in [{lo:g}, {hi:g}], got {value!r}")
    return v


def _check_band(value: Any) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"blood_hu must be two numbers (low, high) in HU, got {value!r}") from err
    if not (np.isfinite(lo) and np.isfinite(hi) and -100.0 <= lo < hi <= 200.0):
        raise ConfigError(f"blood_hu must be (low, high) with -100 <= low < high <= 200 HU, got {value!r}")
    return lo, hi


# ----------------------------------------------------------------------------------------------------- results


@dataclass(frozen=True)
class Region:
    """One kept region on one slice, and why it was kept and typed as it was (plain data for reports).

    Attributes:
        slice: slice index.
        subtype: a name from ``CLASSES``.
        area_mm2: area after growing back into the rim (the seed had at least ``min_area_mm2``).
        draft_overlap: share of the seed region covered by the raw draft.
        heat: mean 0..1 heatmap level of ``subtype`` inside the seed region.
        depth_mm: mean distance of the seed region's pixels to the inner table.
        extra_axial: the anatomy test: it abuts the inner table and half of it lies within ``layer_mm`` of it.
        why: one human line.
    """

    slice: int
    subtype: str
    area_mm2: float
    draft_overlap: float
    heat: float
    depth_mm: float
    extra_axial: bool
    why: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class RefineResult:
    """Output of ``refine``.

    Attributes:
        labels: (S, H, W) uint8, 0 normal, k = ``CLASSES[k - 1]``.
        intracranial: (S, H, W) bool inside of the skull.
        intracranial_ml: its volume in mL.
        blood_band_hu: the density band used (``blood_band``).
        regions: every kept region, in slice order.
        params: the settings used.
    """

    labels: np.ndarray
    intracranial: np.ndarray
    intracranial_ml: float
    blood_band_hu: tuple[float, float]
    regions: list[Region] = field(default_factory=list)
    params: RefineParams = field(default_factory=RefineParams)


@dataclass
class Anatomy:
    """What refinement needs of a series that no threshold changes: computed once per series (``anatomy``), so that
    re-thresholding (a slider move in the app) only redoes the per-slice region work.

    Attributes:
        inside: (S, H, W) bool intracranial mask.
        skull: (bone, air) thresholds in HU (``skull_threshold``).
        band: the blood density band in HU (``blood_band``).
        intracranial_ml: the mask's volume in mL.
    """

    inside: np.ndarray
    skull: tuple[float, float]
    band: tuple[float, float]
    intracranial_ml: float
    _slices: dict[tuple[int, RefineParams], _Slice] = field(default_factory=dict, repr=False, compare=False)

    def candidates(self, hu: np.ndarray, s: int, row_mm: float, col_mm: float, params: RefineParams) -> _Slice:
        """Slice ``s``'s blood-density seed regions (``_candidates``) of the series ``hu`` this anatomy was computed
        for, kept once computed: no threshold changes them (a third of a slider move's work)."""
        key = (s, params)
        if key not in self._slices:
            self._slices[key] = _candidates(hu[s], self.inside[s], s, self.band, row_mm, col_mm, params)
        return self._slices[key]


def anatomy(hu: Any, spacing: Any, params: RefineParams | None = None) -> Anatomy:
    """The threshold-independent part of ``refine`` for a series (see ``Anatomy``)."""
    params = params or RefineParams()
    hu = _as_volume(hu)
    row_mm, col_mm = _in_plane_mm(spacing)
    skull = skull_threshold(hu, params)
    inside = _intracranial(hu, float(np.sqrt(row_mm * col_mm)), skull, params)
    ml = float(np.count_nonzero(inside)) * float(np.prod(np.asarray(spacing, float))) / 1000.0
    return Anatomy(inside, skull, blood_band(hu, inside, skull[0], params), ml)


# ----------------------------------------------------------------------------------------------------- helpers


def _in_plane_mm(spacing: Any) -> tuple[float, float]:
    sp = check_spacing(spacing)
    return float(sp[1]), float(sp[2])


def _opening_kernel(width_px: float) -> np.ndarray | None:
    """Structuring element whose opening removes structures narrower than ``width_px``; None for width < 2."""
    k = int(round(width_px))
    return None if k < 2 else cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))


def _saturated_level(hu: np.ndarray, level: float) -> bool:
    """True when a share of voxels sits at ``level`` (the volume's min or max), as a window's clipping makes.

    Every other row and column is enough to count a share of 0.2 % and costs a quarter."""
    sub = hu[:, ::2, ::2]
    near = np.abs(sub - np.float32(level)) <= 0.5
    return float(np.count_nonzero(near)) >= SATURATED_FRACTION * sub.size


def skull_threshold(hu: np.ndarray, params: RefineParams) -> tuple[float, float]:
    """HU thresholds (bone, air) for this volume, allowing for a window that clipped the data.

    Full-range HU: ``(bone_hu, air_hu)``. When the data pile up at a top below ``bone_hu`` (a 40/120 window
    saturates bone at 100 HU), the skull is whatever reached that top: ``top - saturation_margin_hu``. Likewise a
    saturated bottom above ``air_hu`` (-20 HU for 40/120, where fat and air both land) is air.

    Raises:
        UnsupportedInputError: the data saturate at or below the blood band's bottom, so bone and blood cannot be
            told apart (a window too narrow for this stage; give HU input or a window reaching above ~95 HU).
    """
    lo, hi = float(hu.min()), float(hu.max())
    bone, air = params.bone_hu, params.air_hu
    if hi < bone and _saturated_level(hu, hi):
        bone = hi - params.saturation_margin_hu
        if bone <= params.blood_hu[0]:
            raise UnsupportedInputError(
                f"the input saturates at {hi:g} HU, inside or below acute blood ({params.blood_hu[0]:g}-"
                f"{params.blood_hu[1]:g} HU): bone and blood cannot be told apart; give HU input or a wider window"
            )
    if lo > air and _saturated_level(hu, lo):
        air = lo + params.saturation_margin_hu
    return bone, air


def _bbox(mask: np.ndarray) -> tuple[slice, slice]:
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """uint8 0/1 mask -> pixels not reachable from the border through background (the mask plus its holes)."""
    h, w = mask.shape
    pad = np.zeros((h + 2, w + 2), np.uint8)
    pad[1:-1, 1:-1] = mask
    ff = np.zeros((h + 4, w + 4), np.uint8)
    cv2.floodFill(pad, ff, (0, 0), 2)
    return (pad[1:-1, 1:-1] != 2).astype(np.uint8)


def _components(mask: np.ndarray, connectivity: int = 8) -> tuple[int, np.ndarray, np.ndarray]:
    """(count with background, int32 labels, pixel count per label) of a uint8 mask.

    cv2's plain labelling plus a bincount: several times faster than ``connectedComponentsWithStats``.
    """
    n, lab = cv2.connectedComponents(mask, connectivity=connectivity, ltype=cv2.CV_32S)
    return n, lab, np.bincount(lab.ravel(), minlength=n)


def _keep_sections(interior: np.ndarray, min_px: float) -> np.ndarray:
    """Components of an enclosed interior that are big enough to be cranial fossae (not sinuses or air cells)."""
    n, lab, area = _components(interior, connectivity=4)
    ok = area >= max(min_px, 1.0)
    ok[0] = False
    return ok[lab] if ok.any() else np.zeros(interior.shape, bool)


def _closing(mask: np.ndarray, radius_px: float) -> np.ndarray:
    """Closing by a square of side 2r + 1: cv2's separable fast path (a disc costs ten times more at 0.3 mm
    pixels); it seals gaps up to 2r wide, which is all the skull needs."""
    r = max(1, int(round(radius_px)))
    return cv2.morphologyEx(mask, cv2.MORPH_CLOSE, cv2.getStructuringElement(cv2.MORPH_RECT, (2 * r + 1, 2 * r + 1)))


def _enclosed(bone: np.ndarray, soft: np.ndarray, radius_px: float, min_px: float) -> tuple[np.ndarray, int]:
    """Sections enclosed by the bone after a closing, and the pixel count of the closed bone with its holes."""
    closed = _closing(bone, radius_px)
    filled = _fill_holes(closed)
    interior = (filled.astype(bool) & (closed == 0) & soft).astype(np.uint8)
    return _keep_sections(interior, min_px), int(np.count_nonzero(filled))


def _hull_interior(bone: np.ndarray, soft: np.ndarray, radius_px: float, min_px: float) -> np.ndarray:
    """Open ring: the convex hull of the largest piece of (closed) bone stands in for the missing inner table.

    The largest piece only, so the scanner table's arcs do not stretch the hull over the air below the head."""
    closed = _closing(bone, radius_px)
    n, lab, area = _components(closed)
    if n <= 1:
        return np.zeros(bone.shape, bool)
    area[0] = 0
    skull = (lab == int(np.argmax(area))).astype(np.uint8)
    hull = np.zeros(bone.shape, np.uint8)
    cv2.fillConvexPoly(hull, cv2.convexHull(cv2.findNonZero(skull)), 1)
    return _keep_sections((hull.astype(bool) & (closed == 0) & soft).astype(np.uint8), min_px)


def _intracranial_slice(
    hu2d: np.ndarray, bone_thr: float, air_thr: float, px_mm: float, params: RefineParams
) -> np.ndarray:
    """(H, W) HU -> (H, W) bool inside of the skull on one slice (see ``intracranial_mask``)."""
    bone = (hu2d >= bone_thr).astype(np.uint8)
    out = np.zeros(hu2d.shape, bool)
    if not bone.any():
        return out  # above the vertex or below the skull: no cavity to speak of
    r, min_px = params.closing_mm / px_mm, params.min_cranial_mm2 / (px_mm * px_mm)
    # the cavity lies within the bone's bounding box: work on that crop, padded with background so that the
    # closings see no image border (cv2 would treat the outside as bone when eroding)
    box = _bbox(bone)
    pad = int(np.ceil(OPEN_RING_CLOSING * r)) + 2
    bone, soft = np.pad(bone[box], pad), np.pad(hu2d[box] > air_thr, pad)
    # a closed ring encloses most of its filled area; a craniotomy's saw cuts and burr holes need a wider closing;
    # an open ring (vertex cut tangentially, craniectomy) encloses nothing, and its convex hull stands in
    for radius in (r, OPEN_RING_CLOSING * r):
        inside, filled = _enclosed(bone, soft, radius, min_px)
        if np.count_nonzero(inside) >= HULL_FALLBACK_RATIO * filled:
            break
    else:
        inside = _hull_interior(bone, soft, r, min_px)
    out[box] = inside[pad:-pad, pad:-pad]
    return out


def intracranial_mask(hu: Any, spacing: Any, params: RefineParams | None = None) -> np.ndarray:
    """Inside of the skull, slice by slice.

    Per slice: bone = HU >= the skull threshold (``skull_threshold``: ``bone_hu``, or the saturation level of a
    windowed input); a closing of ``closing_mm`` seals sutures and foramina; what the closed skull encloses, less
    air and bone, in sections of at least ``min_cranial_mm2`` (several at the skull base: the fossae), is inside.
    The scanner table and the headrest are open arcs, so they enclose nothing. When the ring is open (the vertex
    cut tangentially, a craniectomy) the closed bone's convex hull replaces it; a slice without bone is empty.

    Args:
        hu: (S, H, W) Hounsfield units (8-bit windowed images as ``ichdemo.io.load_volume`` converts them).
        spacing: (slice, row, col) mm.
        params: settings (defaults when None).

    Returns:
        (S, H, W) bool.

    Raises:
        ValueError: not a 3-D array. ConfigError: bad spacing. UnsupportedInputError: see ``skull_threshold``.
    """
    params = params or RefineParams()
    hu = _as_volume(hu)
    row_mm, col_mm = _in_plane_mm(spacing)
    return _intracranial(hu, float(np.sqrt(row_mm * col_mm)), skull_threshold(hu, params), params)


def _intracranial(hu: np.ndarray, px_mm: float, thresholds: tuple[float, float], params: RefineParams) -> np.ndarray:
    out = np.zeros(hu.shape, bool)
    for s in range(hu.shape[0]):
        out[s] = _intracranial_slice(hu[s], thresholds[0], thresholds[1], px_mm, params)
    return out


def _as_volume(hu: Any) -> np.ndarray:
    hu = as_numpy(hu)
    if hu.ndim != 3:
        raise ValueError(f"CT volume must be (S, H, W) in HU, got shape {hu.shape}")
    return np.ascontiguousarray(hu, dtype=np.float32)


def blood_band(hu: np.ndarray, inside: np.ndarray, bone_thr: float, params: RefineParams) -> tuple[float, float]:
    """The density band (HU) of acute blood for this series.

    The top is ``blood_hu[1]``, lowered below a saturated window's skull level. The floor is ``blood_hu[0]``,
    raised when the brain itself reads dense: the lower quartile of the intracranial voxels (white matter, 20-30 HU,
    on a calibrated scanner) plus ``blood_contrast_hu``. Blood's contrast to brain is what survives a scanner's
    calibration offset or beam hardening; on a calibrated scan the floor stays ``blood_hu[0]``.
    """
    lo = params.blood_hu[0]
    hi = min(params.blood_hu[1], bone_thr - params.saturation_margin_hu)
    if params.blood_contrast_hu > 0 and inside.any():
        sample = hu[:, ::2, ::2][inside[:, ::2, ::2]]  # every other row and column: a quartile needs no more
        if sample.size:
            lo = max(lo, float(np.percentile(sample, 25)) + params.blood_contrast_hu)
    return lo, hi


# ----------------------------------------------------------------------------------------------------- per slice


@dataclass
class _Slice:
    """What one slice's decisions need, cropped to the intracranial bounding box."""

    index: int
    box: tuple[slice, slice]
    blood: np.ndarray  # (h, w) bool, blood density inside the skull (rim included)
    depth: np.ndarray  # (h, w) float32 mm to the inner table (0 outside)
    seeds: np.ndarray  # (h, w) int32 candidate region labels, 0 = none
    count: int  # number of candidate labels (background included)


def _depth_mm(inside: np.ndarray, row_mm: float, col_mm: float) -> np.ndarray:
    """Distance (mm) of every inside pixel to the nearest outside one: the inner table, or bone within the cavity."""
    pad = np.pad(inside, 1).astype(np.uint8)  # the crop's border counts as outside
    if abs(row_mm - col_mm) <= 0.01 * max(row_mm, col_mm):
        d = cv2.distanceTransform(pad, cv2.DIST_L2, cv2.DIST_MASK_5) * np.float32(row_mm)  # 5x5 mask: ~1 % error
    else:  # anisotropic pixels: exact Euclidean distance in mm (slower, rare)
        d = ndimage.distance_transform_edt(pad, sampling=(row_mm, col_mm)).astype(np.float32)
    return d[1:-1, 1:-1]


def _smooth(img: np.ndarray, band: tuple[float, float], sigma_row: float, sigma_col: float) -> np.ndarray:
    """Gaussian smoothing of HU clipped a little beyond the blood band.

    Clipping first keeps the skull's 1500 HU from bleeding into an SDH that lies against it (bone counts as just
    above the band) and costs one blur, against two for a normalised convolution over the intracranial mask."""
    lo, hi = band
    img = np.clip(img, lo - BAND_CLIP_HU, hi + BAND_CLIP_HU)
    if max(sigma_row, sigma_col) < 0.25:
        return img
    return cv2.GaussianBlur(img, (0, 0), sigmaX=sigma_col, sigmaY=sigma_row)


def _candidates(
    hu2d: np.ndarray,
    inside: np.ndarray,
    s: int,
    band: tuple[float, float],
    row_mm: float,
    col_mm: float,
    params: RefineParams,
) -> _Slice:
    """Blood-density seed regions of one slice (crop of its intracranial box)."""
    box = _bbox(inside)
    px = float(np.sqrt(row_mm * col_mm))
    inside_c = inside[box]
    img = _smooth(hu2d[box], band, params.smooth_mm / row_mm, params.smooth_mm / col_mm)
    blood = (img >= band[0]) & (img <= band[1]) & inside_c
    depth = _depth_mm(inside_c, row_mm, col_mm)
    seeds = (blood & (depth > params.rim_mm)).astype(np.uint8)
    kernel = _opening_kernel(params.open_mm / px)
    if kernel is not None:
        seeds = cv2.morphologyEx(seeds, cv2.MORPH_OPEN, kernel)
    n, lab = cv2.connectedComponents(seeds, connectivity=8, ltype=cv2.CV_32S)
    return _Slice(s, box, blood, depth, lab, n)


def _region_stats(
    sl: _Slice, draft: np.ndarray, maps: np.ndarray, gated: np.ndarray, params: RefineParams
) -> dict[str, np.ndarray]:
    """Per candidate label: area (px), draft overlap, heat per subtype (mean 0..1), mean depth, contact tests.

    Only the seed pixels are read (a few percent of the slice), so the per-label sums cost little."""
    rows, cols = np.nonzero(sl.seeds)
    lab, n = sl.seeds[rows, cols], sl.count
    area = np.bincount(lab, minlength=n).astype(np.float64)
    safe = np.maximum(area, 1.0)
    heat = np.zeros((NUM_CLASSES, n))
    for k in np.flatnonzero(gated):
        heat[k] = np.bincount(lab, weights=maps[k][sl.box][rows, cols], minlength=n) / (255.0 * safe)
    depth = sl.depth[rows, cols]
    return {
        "area": area,
        "overlap": np.bincount(lab, weights=draft[sl.box][rows, cols], minlength=n) / safe,
        "heat": heat,
        "abuts": np.bincount(lab, weights=depth <= params.extra_axial_mm, minlength=n) > 0,
        "layer": np.bincount(lab, weights=depth <= params.layer_mm, minlength=n) >= 0.5 * area,
        "mean_depth": np.bincount(lab, weights=depth, minlength=n) / safe,
    }


def _choose(names: list[str], mass: np.ndarray) -> str:
    """The subtype of ``names`` with the most heat mass (ties: CLASSES order)."""
    return max(names, key=lambda c: (mass[CLASSES.index(c)], -CLASSES.index(c)))


def subtype_rule(gated: list[str], mass: np.ndarray, abuts: bool, layer: bool) -> tuple[str | None, str]:
    """Type a kept region from the gated subtypes, their heat mass within it and its anatomy.

    The rule:

    - extra-axial (it abuts the inner table and half of it lies within ``layer_mm`` of it): the gated SDH/EDH with
      more heat mass; if neither is gated, the gated intra-axial subtype with most mass (convexity SAH or a
      cortical IPH: the gate says there is no extra-axial blood on this slice).
    - otherwise intra-axial: the gated IPH/IVH/SAH with most mass. If only SDH/EDH are gated, a region that abuts
      the table keeps the extra-axial subtype with more mass (a thick EDH lens is deeper than ``layer_mm``); a deep
      region far from the table is SDH when SDH is gated (falcine and tentorial SDH lie along the dura's deep
      reflections, away from the inner table) and is dropped when only EDH is gated (an EDH always lies against
      bone).

    Args:
        gated: names of the subtypes whose class gate is open on this slice (non-empty).
        mass: (5,) heat mass per subtype inside the region.
        abuts, layer: the anatomy tests.

    Returns:
        (subtype or None to drop the region, a short reason).
    """
    extra = [c for c in gated if c in EXTRA_AXIAL]
    intra = [c for c in gated if c in INTRA_AXIAL]
    if abuts and layer:
        if extra:
            return _choose(extra, mass), "a layer on the inner table: extra-axial"
        return _choose(intra, mass), "a layer on the inner table, but no extra-axial subtype gated"
    if intra:
        return _choose(intra, mass), "intra-axial (not a layer on the inner table)"
    if abuts:
        return _choose(extra, mass), "abuts the inner table; only extra-axial subtypes gated"
    if "SDH" in extra:
        return "SDH", "deep, only extra-axial subtypes gated: falcine or tentorial SDH"
    return None, "deep, and only EDH gated (an EDH lies against bone)"


def _decide(
    sl: _Slice, stats: dict[str, np.ndarray], gated: np.ndarray, px_area: float, params: RefineParams
) -> tuple[np.ndarray, list[Region], list[int]]:
    """Per candidate label: the label value to write (0 = drop); the kept regions' records and their labels."""
    names = [CLASSES[k] for k in np.flatnonzero(gated)]
    out = np.zeros(sl.count, np.uint8)
    regions, ids = [], []
    for r in range(1, sl.count):
        area_mm2 = stats["area"][r] * px_area
        if area_mm2 < params.min_area_mm2:
            continue
        overlap, heat = float(stats["overlap"][r]), stats["heat"][:, r]
        best_heat = float(heat.max())
        if overlap < params.support and best_heat < params.heat_support:
            continue
        sub, reason = subtype_rule(names, heat, bool(stats["abuts"][r]), bool(stats["layer"][r]))
        if sub is None:
            continue
        k = CLASSES.index(sub)
        out[r] = k + 1
        evidence = f"draft covers {overlap:.0%}" if overlap >= params.support else f"{sub} heat {best_heat:.2f}"
        regions.append(
            Region(
                sl.index,
                sub,
                float(area_mm2),
                overlap,
                float(heat[k]),
                float(stats["mean_depth"][r]),
                bool(stats["abuts"][r] and stats["layer"][r]),
                f"{evidence}; {reason}",
            )
        )
        ids.append(r)
    return out, regions, ids


def _grow_back(ids: np.ndarray, blood: np.ndarray, radius_px: float) -> np.ndarray:
    """Grow kept regions (ids > 0) back into the blood-density pixels that the rim and the opening took from them.

    A geodesic dilation (3 x 3 steps through blood-density pixels only), so what is added stays connected to its
    region; where two regions meet the higher id wins. Ids travel as float32 (exact up to 2^24), which cv2 dilates.
    """
    out = ids.astype(np.float32)
    if not out.any():
        return ids
    step = np.ones((3, 3), np.uint8)
    for _ in range(int(round(radius_px))):
        grown = cv2.dilate(out, step)
        add = (out == 0) & blood & (grown > 0)
        if not add.any():
            break
        out[add] = grown[add]
    return out.astype(np.int32)


def _refine_slice(
    sl: _Slice,
    draft: np.ndarray,
    maps: np.ndarray,
    gated: np.ndarray,
    spacing_rc: tuple[float, float],
    params: RefineParams,
) -> tuple[np.ndarray | None, tuple[slice, slice], list[Region]]:
    """One slice's candidates with at least one gated subtype -> (labels on the intracranial box or None, the box,
    regions)."""
    row_mm, col_mm = spacing_rc
    stats = _region_stats(sl, draft, maps, gated, params)
    lut, regions, ids = _decide(sl, stats, gated, row_mm * col_mm, params)
    if not regions:
        return None, sl.box, []
    kept = np.where(lut[sl.seeds] > 0, sl.seeds, 0)
    px = float(np.sqrt(row_mm * col_mm))
    grown = _grow_back(kept, sl.blood, (params.rim_mm + params.open_mm / 2.0) / px)
    area = np.bincount(grown.ravel(), minlength=sl.count) * (row_mm * col_mm)
    regions = [replace(reg, area_mm2=float(area[i])) for reg, i in zip(regions, ids)]
    return lut[grown], sl.box, regions


# ----------------------------------------------------------------------------------------------------- refine


def _check_inputs(hu, probs, maps255, raw_labels, class_thresholds):
    hu = _as_volume(hu)
    probs = np.asarray(as_numpy(probs), dtype=np.float64)
    maps = as_numpy(maps255)
    raw = as_numpy(raw_labels)
    s, h, w = hu.shape
    if probs.shape != (s, NUM_CLASSES):
        raise ValueError(f"probs must be (S, {NUM_CLASSES}) = ({s}, {NUM_CLASSES}), got {probs.shape}")
    if maps.shape != (s, NUM_CLASSES, h, w):
        raise ValueError(
            f"maps255 must be (S, {NUM_CLASSES}, H, W) = {(s, NUM_CLASSES, h, w)} on the CT's grid, got {maps.shape}"
        )
    if raw.shape != (s, h, w):
        raise ValueError(f"raw_labels must be (S, H, W) = {(s, h, w)}, got {raw.shape}")
    c = np.asarray(check_vector(class_thresholds, "class thresholds", 0.0, 1.0))
    return hu, probs, maps, raw, c


def refine(
    hu: Any,
    probs: Any,
    maps255: Any,
    raw_labels: Any,
    class_thresholds: Any,
    spacing: Any,
    params: RefineParams | None = None,
    known: Anatomy | None = None,
) -> RefineResult:
    """Refine Algorithm 1's draft with the CT's densities: blood-density regions inside the skull that the model
    supports, typed by anatomy and heatmap mass (module docstring; ``subtype_rule`` for the typing).

    Args:
        hu: (S, H, W) Hounsfield units on the source grid (``ichdemo.io.load_volume`` converts windowed 8-bit images).
        probs: (S, 5) slice probabilities.
        maps255: (S, 5, H, W) heatmaps on the 0..255 scale, on the source grid (uint8 or float).
        raw_labels: (S, H, W) uint8 from ``algorithm1`` (0 normal, k = CLASSES[k - 1]).
        class_thresholds: (5,) c_k; a subtype is gated on a slice when its probability exceeds c_k.
        spacing: (slice, row, col) mm.
        params: settings (defaults when None).
        known: the series' ``anatomy`` (with the same ``params``) when already computed.

    Returns:
        ``RefineResult`` with the refined labels, the intracranial mask, its volume and the kept regions.

    Raises:
        ValueError: shapes that do not match. ConfigError: bad thresholds or spacing.
        UnsupportedInputError: a window that saturates inside the blood band (``skull_threshold``).
    """
    params = params or RefineParams()
    hu, probs, maps, raw, c = _check_inputs(hu, probs, maps255, raw_labels, class_thresholds)
    row_mm, col_mm = _in_plane_mm(spacing)
    known = known or anatomy(hu, spacing, params)
    inside, band = known.inside, known.band
    gate = probs > c[None, :]
    labels = np.zeros(hu.shape, np.uint8)
    regions: list[Region] = []
    for s in range(hu.shape[0]):
        if not gate[s].any() or not inside[s].any():
            continue  # the gate decides whether there is blood; the CT only where
        sl = known.candidates(hu, s, row_mm, col_mm, params)
        out, box, found = _refine_slice(sl, raw[s] > 0, maps[s], gate[s], (row_mm, col_mm), params)
        if out is not None:
            labels[s][box] = out
            regions += found
    return RefineResult(labels, inside, known.intracranial_ml, band, regions, params)


def blood_regions(
    hu: Any,
    spacing: Any,
    slices: Any = None,
    params: RefineParams | None = None,
    known: Anatomy | None = None,
) -> np.ndarray:
    """What the CT alone says could be acute blood: the candidate regions of ``refine`` (blood density inside the
    skull, at least ``min_area_mm2``, grown back into the rim), with no model evidence asked for.

    Calibration uses them as pseudo-masks on slices labelled positive, where no annotated mask exists: they need no
    annotation, and they are what refined drafts can at best become.

    Args:
        hu: (S, H, W) Hounsfield units; ``spacing`` (slice, row, col) mm.
        slices: indices of the slices to fill (default all); the others stay empty.
        params: settings (defaults when None); ``known`` the series' ``anatomy`` when already computed.

    Returns:
        (S, H, W) bool.
    """
    params = params or RefineParams()
    hu = _as_volume(hu)
    row_mm, col_mm = _in_plane_mm(spacing)
    known = known or anatomy(hu, spacing, params)
    out = np.zeros(hu.shape, bool)
    px = float(np.sqrt(row_mm * col_mm))
    for s in range(hu.shape[0]) if slices is None else slices:
        if not known.inside[s].any():
            continue
        sl = known.candidates(hu, s, row_mm, col_mm, params)
        area = np.bincount(sl.seeds.ravel(), minlength=sl.count) * (row_mm * col_mm)
        keep = area >= params.min_area_mm2
        keep[0] = False
        kept = np.where(keep[sl.seeds], sl.seeds, 0)
        grown = _grow_back(kept, sl.blood, (params.rim_mm + params.open_mm / 2.0) / px)
        out[s][sl.box] = grown > 0
    return out
