"""Seeded synthetic head CT phantoms in HU with known hemorrhage masks: data where every voxel's truth is known.

A phantom is an axial head CT volume built from simple analytic shapes in millimetres: scalp, a skull ring (dense
tables around a softer diploe, thicker at the base, petrous ridges and a sphenoid sinus low down), brain parenchyma
with a cortical grey ribbon around white matter, sulci and the interhemispheric and Sylvian fissures, lateral,
third and fourth ventricles, deep grey nuclei, and the basal cisterns around the midbrain and pons. Hemorrhages of
the five subtypes are placed where they occur:

- IPH: an irregular blob in the parenchyma (basal ganglia/thalamus, lobar or cerebellar), never in a ventricle,
  with a thin rim of oedema;
- IVH: blood in the dependent (posterior, i.e. higher row) part of the ventricles, with a level that is horizontal
  in the image because gravity does not follow the head's rotation;
- SAH: sulci, fissures and/or basal cisterns filled with blood;
- SDH: a crescent along the inner table over a long arc and many slices (it crosses sutures);
- EDH: a biconvex lens against the inner table, short in arc and height (sutures stop it).
Extra-axial collections push the brain inward (a radial warp), so the cortex follows the crescent or the lens.

Conventions: arrays are (S, H, W) = (slice, row, col); slice 0 is the most inferior (skull base) and the last the
vertex; row 0 is anterior, higher rows posterior (the patient lies supine, so "dependent" means higher rows);
column 0 is the patient's right (radiological display). Label 0 is normal, k + 1 is ``CLASSES[k]``.

The anatomy depends only on ``seed`` (and the grid): ``generate_phantom(3, ())`` and ``generate_phantom(3, ("IPH",))``
show the same head, except where an SDH or EDH pushes the brain. Each lesion has its own random stream, so adding a
subtype does not move the others.

Example:
    >>> p = generate_phantom(seed=3, subtypes=("IPH", "SDH"))
    >>> p.hu.shape, p.truth_ml["IPH"] > 0
    ((24, 256, 256), True)
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

from ichdemo.constants import CLASSES
from ichdemo.errors import ConfigError

DEFAULT_SHAPE: tuple[int, int, int] = (24, 256, 256)
FIELD_OF_VIEW_MM: tuple[float, float, float] = (120.0, 230.4, 230.4)
"""Default extent (slice, row, col) in mm: ``spacing = FIELD_OF_VIEW_MM / shape`` gives (5.0, 0.9, 0.9) by default."""
MIN_FIELD_OF_VIEW_MM: tuple[float, float, float] = (80.0, 200.0, 200.0)
"""A smaller grid cannot hold a head from skull base to vertex."""

HU_AIR = -1000.0
HEMORRHAGE_HU_RANGE: tuple[float, float] = (50.0, 90.0)
"""Every labelled voxel's final HU lies in this range (acute blood)."""

MIN_LESION_ML = 0.5
MIN_LESION_VOXELS = 25
"""A requested subtype always has at least ``min_lesion_voxels(spacing)`` voxels (0.5 mL, and never under 25)."""

PRIORITY: tuple[str, ...] = ("EDH", "SDH", "IPH", "IVH", "SAH")
"""Where two lesions would overlap, the earlier subtype here keeps the voxel (compartment-defining collections win).

Lesions are placed in this order, each outside the ones before it, so the minimum size still holds afterwards."""

DATASET_WEIGHTS: dict[str, float] = {"IPH": 0.25, "IVH": 0.17, "SAH": 0.25, "SDH": 0.23, "EDH": 0.10}
"""Relative frequency of each subtype in ``phantom_dataset`` (EDH rarest, as in clinical series)."""

_HEAD_HEIGHT_MM = 122.0  # skull base (t = 0) to vertex (t = 1)
_T_WIDEST = 0.42  # normalised height of the widest axial section


@dataclass
class Phantom:
    """A synthetic head CT with its ground truth.

    Attributes:
        hu: (S, H, W) float32 Hounsfield units.
        labels: (S, H, W) uint8, 0 normal, k + 1 for ``CLASSES[k]``.
        spacing: (slice, row, col) voxel spacing in mm.
        slice_labels: (S, 5) uint8, 1 where the slice holds any voxel of that subtype (``CLASSES`` order).
        truth_ml: true volume in mL of every subtype in ``CLASSES`` (0.0 when absent).
        seed: the generator seed.
        subtypes: the requested subtypes, in ``CLASSES`` order.
        masks: noise-free anatomy as (S, H, W) bool arrays: "head", "skull", "brain" (intracranial tissue inside the
            inner table, CSF included), "parenchyma" (grey, white and deep grey matter without hemorrhage), "grey",
            "ventricles", "subarachnoid" (sulci, fissures and cisterns, where SAH may lie).
    """

    hu: np.ndarray
    labels: np.ndarray
    spacing: tuple[float, float, float]
    slice_labels: np.ndarray
    truth_ml: dict[str, float]
    seed: int
    subtypes: tuple[str, ...]
    masks: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    noise_hu: float = 5.0

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.hu.shape)  # type: ignore[return-value]

    @property
    def voxel_ml(self) -> float:
        """Volume of one voxel in mL."""
        return float(np.prod(self.spacing)) / 1000.0

    @property
    def affine(self) -> np.ndarray:
        """RAS affine of ``hu.transpose(2, 1, 0)``, the geometry ``write_phantom`` gives both formats."""
        return phantom_affine(self.shape, self.spacing)


# --------------------------------------------------------------------------------------------------------------------
# Grid and head geometry
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class _Grid:
    """Per-voxel coordinates in mm; head-frame arrays broadcast to (S, H, W)."""

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    x: np.ndarray  # (S, H, W) head frame, patient left positive (columns increase)
    y: np.ndarray  # (S, H, W) head frame, posterior positive (rows increase)
    z: np.ndarray  # (S, 1, 1) mm above the skull base
    t: np.ndarray  # (S, 1, 1) z / head height: 0 skull base, 1 vertex
    row_mm: np.ndarray  # (1, H, 1) image row position in mm (gravity axis)
    core: tuple[slice, slice]  # rows, cols holding every voxel within 65 mm of the head axis (deep structures)


@dataclass
class _Waves:
    """A smooth random field: a normalised sum of plane waves cos(k . p + phase) in 3-D (mm)."""

    k: np.ndarray  # (n, 3) wave vectors, rad/mm
    phase: np.ndarray  # (n,)

    @classmethod
    def sample(cls, rng: np.random.Generator, n: int, wavelength: tuple[float, float]) -> _Waves:
        k = rng.normal(size=(n, 3))
        k *= (2 * np.pi / rng.uniform(*wavelength, size=n) / np.linalg.norm(k, axis=1))[:, None]
        return cls(k.astype(np.float32), rng.uniform(0, 2 * np.pi, n).astype(np.float32))

    def __call__(self, px, py, pz) -> np.ndarray:
        out = np.zeros(np.broadcast_shapes(np.shape(px), np.shape(py), np.shape(pz)), np.float32)
        for (kx, ky, kz), ph in zip(self.k, self.phase, strict=True):
            out += np.cos(kx * px + ky * py + kz * pz + ph)
        return out * np.float32(math.sqrt(2.0 / len(self.phase)))  # unit variance


@dataclass
class _Head:
    """Random anatomy parameters of one head (sizes in mm)."""

    a: float  # inner-table semi-axis, left-right, at the widest section
    b: float  # inner-table semi-axis, anterior-posterior
    egg: float  # frontal narrowing
    harmonics: np.ndarray  # (n, 3): order, amplitude, phase of inner-table bumps
    skull: float  # vault thickness
    scalp: float
    rim: float  # CSF between inner table and cortex (atrophy)
    atrophy: float  # scales sulcal width and ventricle size
    grey_hu: float
    white_hu: float
    csf_hu: float
    ribbon: float  # cortical grey thickness
    sulci: _Waves  # zero set = sulcal axes
    bend: _Waves  # shifts the zero set with depth, so sulci curve and branch
    sulcal_depth: _Waves
    midline: np.ndarray  # (4,) waviness of the interhemispheric fissure: amp1, phase1, amp2, phase2
    asym: np.ndarray  # (6,) small left/right differences of the ventricles


def _sample_head(rng: np.random.Generator) -> _Head:
    return _Head(
        a=float(rng.uniform(60.0, 68.0)),
        b=float(rng.uniform(76.0, 86.0)),
        egg=float(rng.uniform(0.02, 0.06)),
        harmonics=np.stack([np.arange(2, 6), rng.uniform(0.004, 0.018, 4), rng.uniform(0, 2 * np.pi, 4)], axis=1),
        skull=float(rng.uniform(5.0, 7.5)),
        scalp=float(rng.uniform(4.0, 7.0)),
        rim=float(rng.uniform(0.4, 1.6)),
        atrophy=float(rng.uniform(0.85, 1.35)),
        grey_hu=float(rng.uniform(38.0, 42.0)),
        white_hu=float(rng.uniform(25.0, 28.5)),
        csf_hu=float(rng.uniform(3.0, 9.0)),
        ribbon=float(rng.uniform(2.4, 3.2)),
        sulci=_Waves.sample(rng, 24, (11.0, 15.0)),
        bend=_Waves.sample(rng, 8, (20.0, 35.0)),
        sulcal_depth=_Waves.sample(rng, 8, (25.0, 50.0)),
        midline=np.array([rng.uniform(0.5, 1.5), rng.uniform(0, 6.3), rng.uniform(0.2, 0.6), rng.uniform(0, 6.3)]),
        asym=rng.uniform(-1.0, 1.0, 6),
    )


def _default_spacing(shape: tuple[int, int, int]) -> tuple[float, float, float]:
    return tuple(float(f / n) for f, n in zip(FIELD_OF_VIEW_MM, shape, strict=True))  # type: ignore[return-value]


def _check_args(seed, shape, spacing, subtypes, noise_hu) -> tuple[tuple[int, int, int], tuple[float, float, float]]:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"phantom seed must be a non-negative integer, got {seed!r}")
    if len(shape) != 3 or any(int(n) < 1 for n in shape):
        raise ConfigError(f"phantom shape must be three positive sizes (slices, rows, cols), got {shape!r}")
    shape = tuple(int(n) for n in shape)
    spacing = _default_spacing(shape) if spacing is None else tuple(float(s) for s in spacing)
    if len(spacing) != 3 or any(not s > 0 for s in spacing):
        raise ConfigError(f"phantom spacing must be three positive sizes in mm, got {spacing!r}")
    fov = [n * s for n, s in zip(shape, spacing, strict=True)]
    if any(f < m for f, m in zip(fov, MIN_FIELD_OF_VIEW_MM, strict=True)):
        raise ConfigError(
            f"field of view {fov[0]:.0f} x {fov[1]:.0f} x {fov[2]:.0f} mm cannot hold a head; need at least "
            f"{MIN_FIELD_OF_VIEW_MM[0]:.0f} x {MIN_FIELD_OF_VIEW_MM[1]:.0f} x {MIN_FIELD_OF_VIEW_MM[2]:.0f} mm "
            "(use more pixels or a coarser spacing, or leave spacing out)"
        )
    unknown = [s for s in subtypes if s not in CLASSES]
    if unknown or len(set(subtypes)) != len(subtypes):
        raise ConfigError(f"subtypes must be distinct names from {', '.join(CLASSES)}; got {list(subtypes)}")
    if not noise_hu >= 0:
        raise ConfigError(f"noise_hu must be >= 0, got {noise_hu}")
    return shape, spacing  # type: ignore[return-value]


def _make_grid(shape, spacing, rng: np.random.Generator) -> _Grid:
    """Image coordinates -> head frame: a random offset, a few degrees of in-plane rotation and a slight pitch."""
    s, h, w = shape
    ds, dr, dc = spacing
    # centre the stack on the default 120 mm coverage, with a few mm of random placement along the axis
    z = (np.arange(s, dtype=np.float32) + 0.5) * ds + rng.uniform(-3.0, 4.0) + 0.5 * (120.0 - s * ds)
    z = z.astype(np.float32).reshape(s, 1, 1)
    cols = ((np.arange(w, dtype=np.float32) - (w - 1) / 2) * dc).reshape(1, 1, w)
    rows = ((np.arange(h, dtype=np.float32) - (h - 1) / 2) * dr).reshape(1, h, 1)
    off_x, off_y = rng.uniform(-7.0, 7.0), rng.uniform(-6.0, 6.0)
    pitch_x, pitch_y = rng.uniform(-0.04, 0.04), rng.uniform(-0.08, 0.08)
    cx = (off_x + pitch_x * (z - 60.0)).astype(np.float32)
    cy = (off_y + pitch_y * (z - 60.0)).astype(np.float32)
    ang = math.radians(rng.uniform(-6.0, 6.0))
    ca, sa = np.float32(math.cos(ang)), np.float32(math.sin(ang))
    dx, dy = cols - cx, rows - cy
    x = ca * dx + sa * dy
    y = -sa * dx + ca * dy
    near = ((np.abs(x) < 65.0) & (np.abs(y) < 65.0)).any(axis=0)
    r_idx, c_idx = np.nonzero(near.any(axis=1))[0], np.nonzero(near.any(axis=0))[0]
    core = (slice(r_idx[0], r_idx[-1] + 1), slice(c_idx[0], c_idx[-1] + 1)) if r_idx.size else (slice(0), slice(0))
    return _Grid(shape, spacing, x.astype(np.float32), y.astype(np.float32), z, z / _HEAD_HEIGHT_MM, rows, core)


def _wrap(a: np.ndarray | float) -> np.ndarray:
    return (np.asarray(a) + np.pi) % (2 * np.pi) - np.pi


class _AngleTable:
    """Per-voxel lookup of functions of (slice, polar angle) tabulated on a fine angle grid.

    Everything that depends on the direction only (skull outline, thickness, sulcal fields, lesion profiles) is
    computed on an (S, n) table and interpolated, which is far cheaper than trigonometry on every voxel.
    The angle is 0 anterior and +pi/2 toward the patient's left; the +-pi seam lies on the posterior midline.
    """

    n = 1440

    def __init__(self, x: np.ndarray, y: np.ndarray):
        self.theta = np.arctan2(x, -y)
        pos = (self.theta + np.pi) * np.float32(self.n / (2 * np.pi))
        i0 = np.floor(pos)
        self.w = (pos - i0).astype(np.float32)
        i0 = i0.astype(np.int32) % self.n
        offset = (np.arange(x.shape[0], dtype=np.int32) * self.n).reshape(-1, 1, 1)
        self.i0 = i0 + offset
        self.i1 = (i0 + 1) % self.n + offset
        self.grid = (np.arange(self.n, dtype=np.float32) * (2 * np.pi / self.n) - np.pi).reshape(1, -1)

    def __call__(self, table: np.ndarray) -> np.ndarray:
        flat = np.ascontiguousarray(np.broadcast_to(table, (self.i0.shape[0], self.n)), np.float32).ravel()
        lo, hi = np.take(flat, self.i0), np.take(flat, self.i1)
        return lo + self.w * (hi - lo)

    def many(self, *tables: np.ndarray) -> list[np.ndarray]:
        return [self(t) for t in tables]

    def d_dtheta(self, table: np.ndarray) -> np.ndarray:
        """Derivative of a periodic (S, n) table along the angle, per radian."""
        step = 2 * np.pi / self.n
        return (np.roll(table, -1, axis=1) - np.roll(table, 1, axis=1)) / np.float32(2 * step)


def _vault_profile(z: np.ndarray, half_height: float, low_height: float) -> np.ndarray:
    """In-plane scale of an egg-shaped vault at height z (mm): an ellipsoid above the widest section, flatter below."""
    dz = z - _T_WIDEST * _HEAD_HEIGHT_MM
    hh = np.where(dz >= 0, half_height, low_height)
    return np.sqrt(np.clip(1.0 - (dz / hh) ** 2, 0.0, None)).astype(np.float32)


def _inner_radius_base(head: _Head, theta: np.ndarray) -> np.ndarray:
    """Inner-table radius (mm) at the widest section as a function of the polar angle."""
    c, s = np.cos(theta), np.sin(theta)
    r = head.a * head.b / np.sqrt((head.a * c) ** 2 + (head.b * s) ** 2)
    r = r * (1.0 - head.egg * c)  # c = +1 anterior: frontal narrower, occipital wider
    for order, amp, phase in head.harmonics:
        r = r * (1.0 + amp * np.cos(order * theta + phase))
    return r.astype(np.float32)


def _skull_thickness(head: _Head, theta: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Vault thickness (mm): thin over the temporal squama, thicker frontally/occipitally and toward the base."""
    side = np.abs(np.sin(theta)) ** 2  # 1 at the temporal bones
    base = 1.0 + 1.2 * np.clip((0.32 - t) / 0.32, 0.0, 1.0)
    return (head.skull * (1.0 - 0.35 * side) * base).astype(np.float32)


@dataclass
class _Vault:
    r: np.ndarray  # (S, H, W) radius from the head axis, mm
    angles: _AngleTable
    rb: np.ndarray  # (1, n) inner-table radius at the widest section per table angle
    r_inner: np.ndarray  # (S, H, W) inner-table radius along each voxel's ray
    r_outer: np.ndarray
    r_scalp: np.ndarray

    @property
    def theta(self) -> np.ndarray:
        return self.angles.theta


_UP = (1.0 - _T_WIDEST) * _HEAD_HEIGHT_MM  # vault half-height above the widest section
_LOW = 1.6 * _T_WIDEST * _HEAD_HEIGHT_MM  # flatter below it


def _vault(head: _Head, g: _Grid) -> _Vault:
    angles = _AngleTable(g.x, g.y)
    rb = _inner_radius_base(head, angles.grid)  # (1, n)
    thick = _skull_thickness(head, angles.grid, g.t[:, :, 0])  # (S, n)
    zz = g.z[:, :, 0]
    r_inner = rb * _vault_profile(zz, _UP, _LOW)
    r_outer = (rb + thick) * _vault_profile(zz, _UP + thick, _LOW + thick)
    outer_s = rb + thick + head.scalp
    r_scalp = outer_s * _vault_profile(zz, _UP + thick + head.scalp, _LOW + thick + head.scalp)
    return _Vault(np.hypot(g.x, g.y), angles, rb, *angles.many(r_inner, r_outer, r_scalp))


# --------------------------------------------------------------------------------------------------------------------
# Brain anatomy (evaluated in the warped frame so extra-axial collections push it)
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class _Brain:
    hu: np.ndarray  # noise-free HU of intracranial content (valid where inside)
    inside: np.ndarray  # bool, within the cortex surface + CSF rim
    csf: np.ndarray  # bool, any CSF (rim, sulci, fissures, cisterns, ventricles)
    sah_space: np.ndarray  # bool, sulci, fissures and cisterns slightly widened: where SAH may lie
    ventricles: np.ndarray  # bool
    midline_ventricles: np.ndarray  # bool, third and fourth
    grey: np.ndarray  # bool, cortical ribbon, deep grey nuclei, brainstem
    deep_grey: np.ndarray  # bool
    parenchyma: np.ndarray  # bool
    depth: np.ndarray  # mm below the inner table (warped)
    sylvian: np.ndarray  # bool, Sylvian fissures (widened)
    cisterns: np.ndarray  # bool
    fissure: np.ndarray  # bool, interhemispheric


def _metaballs(balls: Sequence[tuple[float, ...]], x, y, z) -> np.ndarray:
    """Sum of anisotropic Gaussians (cx, cy, cz, rx, ry, rz) in mm; > exp(-1) is the blob (one ball: its ellipsoid).

    Each ball touches only the few slices within 3 of its z radii, so the loop stays cheap.
    """
    out = np.zeros(np.broadcast_shapes(x.shape, y.shape), np.float32)
    zz = z[:, 0, 0]
    for cx, cy, cz, rx, ry, rz in balls:
        qz = ((zz - cz) / rz) ** 2
        ks = np.nonzero(qz < 9.0)[0]
        if ks.size == 0:
            continue
        lo, hi = ks[0], ks[-1] + 1
        q = ((x[lo:hi] - cx) / rx) ** 2 + ((y[lo:hi] - cy) / ry) ** 2 + qz[lo:hi, None, None]
        out[lo:hi] += np.exp(-q)
    return out


def _ventricle_balls(head: _Head, side: int) -> list[tuple[float, ...]]:
    """One lateral ventricle as a C-shaped chain of balls: frontal horn, body, atrium, occipital and temporal horns."""
    k = head.atrophy
    sx, sy = head.a / 64.0, head.b / 81.0
    a = head.asym
    w = 1.0 + 0.12 * (a[0] if side > 0 else -a[0])  # one ventricle slightly larger
    chain = [  # x, y (mm at a 64 x 81 head), t, rx, ry, rz (mm)
        (4.5, -12.0, 0.49, 2.6, 5.0, 8.0),  # frontal horn, diverging forward and outward
        (7.5, -20.0, 0.49, 3.6, 5.0, 8.0),
        (10.5, -27.0, 0.48, 3.0, 4.0, 7.0),
        (6.0, -10.0, 0.55, 3.4, 9.0, 8.0),  # body
        (8.5, 4.0, 0.57, 3.6, 9.0, 8.0),
        (13.0, 17.0, 0.52, 4.5, 7.0, 9.0),  # atrium
        (17.0, 24.0, 0.47, 5.5, 6.0, 8.0),
        (16.0, 35.0, 0.46, 3.0, 6.0, 6.0),  # occipital horn
        (24.0, 10.0, 0.38, 2.2, 5.5, 6.0),  # temporal horn
        (26.0, -3.0, 0.33, 2.0, 5.0, 5.0),
    ]
    return [
        (side * x * sx, y * sy + 1.5 * a[1], t * _HEAD_HEIGHT_MM + 2.0 * a[2], rx * k * w, ry * w, rz)
        for x, y, t, rx, ry, rz in chain
    ]


def _ventricles(head: _Head, x, y, z) -> tuple[np.ndarray, np.ndarray]:
    """(lateral ventricles, third and fourth ventricles) as bool masks."""
    right = _metaballs(_ventricle_balls(head, -1), x, y, z) > np.exp(-1)
    left = _metaballs(_ventricle_balls(head, +1), x, y, z) > np.exp(-1)
    septum = 0.9  # mm: the septum pellucidum keeps the two lateral ventricles apart
    lateral = (right & (x < -septum)) | (left & (x > septum))
    lateral &= ~_caudate_heads(head, x, y, z)  # the caudate heads indent the frontal horns' lateral walls
    k = head.atrophy
    third = _metaballs([(0.0, 2.0, 0.43 * _HEAD_HEIGHT_MM, 1.4 * k, 9.0, 7.0)], x, y, z) > np.exp(-1)
    fourth = _metaballs([(0.0, 0.31 * head.b, 0.13 * _HEAD_HEIGHT_MM, 6.0, 3.2, 6.0)], x, y, z) > np.exp(-1)
    return lateral, third | fourth


def _caudate_heads(head: _Head, x, y, z) -> np.ndarray:
    sx, sy = head.a / 64.0, head.b / 81.0
    balls = [(side * 13.0 * sx, -17.0 * sy, 0.50 * _HEAD_HEIGHT_MM, 4.0, 6.5, 10.0) for side in (-1, 1)]
    return _metaballs(balls, x, y, z) > np.exp(-1)


def _deep_grey(head: _Head, x, y, z) -> np.ndarray:
    """Caudate heads, lentiform nuclei and thalami."""
    sx, sy = head.a / 64.0, head.b / 81.0
    hz = _HEAD_HEIGHT_MM
    balls = []
    for side in (-1, 1):
        balls += [
            (side * 22.0 * sx, -4.0 * sy, 0.44 * hz, 5.0, 11.0, 9.0),  # lentiform nucleus
            (side * 8.5 * sx, 11.0 * sy, 0.44 * hz, 6.0, 9.0, 8.0),  # thalamus
        ]
    return (_metaballs(balls, x, y, z) > np.exp(-1)) | _caudate_heads(head, x, y, z)


def _sulcal_fields(head: _Head, v: _Vault, z: np.ndarray):
    """Sulcal fields on the (slice, angle) table: value and angular derivative of the zero-set field and of its
    depth bend, and the sulcal depth (mm). The fields live on the inner-table surface, so sulci keep their ~10 mm
    spacing from the widest section up to the vertex and are continuous from slice to slice."""
    theta = v.angles.grid
    z = z.reshape(-1, 1)
    rho = v.rb * _vault_profile(z, _UP, _LOW)  # (S, n)
    px, py, pz = rho * np.sin(theta), -rho * np.cos(theta), np.broadcast_to(z, rho.shape)
    f, h = head.sulci(px, py, pz), head.bend(px, py, pz)
    depth = 5.0 + 13.0 * np.clip(0.5 + 0.35 * head.sulcal_depth(px, py, pz), 0.0, 1.0)
    return f, v.angles.d_dtheta(f), h, v.angles.d_dtheta(h), depth.astype(np.float32)


def _sulci(head: _Head, v: _Vault, r: np.ndarray, d_b: np.ndarray, z: np.ndarray, dc: float):
    """Sulci: returns (gap to the nearest sulcal axis, sulcal depth, half width), all mm, (S, H, W).

    A sulcus is the zero set of a smooth random field on the brain surface, followed radially inward; the zero set
    shifts with depth (bend), so sulci curve, and neighbouring ones sometimes join.
    """
    f, df, h, dh, depth = _sulcal_fields(head, v, z)
    f, df, h, dh, sdepth = v.angles.many(f, df, h, dh, depth)
    bend = np.float32(0.05) * d_b
    val = f + bend * h
    dval = df + bend * dh
    gap = np.abs(val) * np.maximum(r, 1.0) / np.maximum(np.abs(dval), 0.6)  # |F| / |dF/ds|
    half = 0.5 * np.maximum(0.9 * head.atrophy, 0.75 * dc) * (1.0 + 0.6 * np.clip(1.0 - d_b / sdepth, 0, 1))
    return gap.astype(np.float32), sdepth, half.astype(np.float32)


def _fissure_gap(head: _Head, x, y, t) -> np.ndarray:
    """Distance (mm) to the interhemispheric fissure: a slightly wavy midline cleft, absent where the corpus
    callosum, the diencephalon or the brainstem cross the midline (inf there)."""
    a1, p1, a2, p2 = head.midline
    sy = head.b / 81.0
    cc = (t > 0.36) & (t < 0.68)
    central = np.where(t < 0.36, (y > -32.0 * sy) & (y < 36.0 * sy), cc & (y > -33.0 * sy) & (y < 30.0 * sy))
    near = (np.abs(x) < 8.0) & ~central & (t >= 0.24)  # lowest slices: brainstem and vermis on the midline
    out = np.full(x.shape, np.inf, np.float32)
    yn = y[near]
    out[near] = np.abs(x[near] - a1 * np.sin(yn / 23.0 + p1) - a2 * np.sin(yn / 9.0 + p2))
    return out


def _sylvian_gap(head: _Head, x, y, t) -> np.ndarray:
    """Distance (mm) to the Sylvian fissures: clefts from the lateral surface running medially and slightly
    forward, curving, present from t 0.30 to 0.48 (inf elsewhere)."""
    sx, sy = head.a / 64.0, head.b / 81.0
    ax = np.abs(x)
    u = np.clip((ax - 34.0 * sx) / (30.0 * sx), 0.0, 1.0)  # 0 at the insula, 1 at the surface
    axis_y = (-10.0 + 6.0 * u - 3.0 * np.sin(np.pi * u)) * sy
    gap = np.abs(y - axis_y) - 0.5 - 0.8 * u  # wider where it opens on the surface
    present = (t > 0.30) & (t < 0.46) & (ax > 34.0 * sx)
    return np.where(present, gap, np.inf).astype(np.float32)


def _cisterns(head: _Head, x, y, t) -> tuple[np.ndarray, np.ndarray]:
    """Basal cisterns (perimesencephalic ring, suprasellar star, quadrigeminal, prepontine) and the brainstem."""
    sy = head.b / 81.0
    mid = (t > 0.23) & (t < 0.37)
    qm = (x / 12.5) ** 2 + ((y - 9.0 * sy) / 10.5) ** 2
    notch = (np.abs(x) < 2.5 + 0.25 * (9.0 * sy - y)) & (y < 3.0 * sy)  # interpeduncular cistern
    midbrain = mid & (qm < 1.0) & ~notch
    ring = mid & (((qm >= 1.0) & (qm < 1.22)) | ((qm < 1.0) & notch))
    ang = np.arctan2(x, -(y + 9.0 * sy))
    supra = mid & (t < 0.32) & (np.hypot(x, y + 9.0 * sy) < 8.5 * (1.0 + 0.22 * np.cos(5 * ang)))
    quad = mid & (t > 0.27) & ((x / 7.0) ** 2 + ((y - 23.0 * sy) / 3.5) ** 2 < 1.0)
    low = t <= 0.23
    qp = (x / 14.0) ** 2 + ((y - 12.0 * sy) / 11.0) ** 2
    pons = low & (qp < 1.0)
    prepontine = low & (qp >= 1.0) & (qp < 1.45) & (y < 12.0 * sy)
    return ring | supra | quad | prepontine, midbrain | pons


def _central(head: _Head, core: tuple[slice, slice], x, y, z, t) -> list[np.ndarray]:
    """Deep structures, computed on the central crop only: cisterns, brainstem, lateral ventricles, third and
    fourth ventricles, deep grey nuclei (bool masks of the full shape)."""
    xc, yc = x[:, core[0], core[1]], y[:, core[0], core[1]]
    parts = [*_cisterns(head, xc, yc, t), *_ventricles(head, xc, yc, z), _deep_grey(head, xc, yc, z)]
    out = []
    for part in parts:
        full = np.zeros(x.shape, bool)
        full[:, core[0], core[1]] = part
        out.append(full)
    return out


def _brain(head: _Head, v: _Vault, x, y, r, z, t, dc: float, core: tuple[slice, slice]) -> _Brain:
    depth = v.r_inner - r  # mm below the inner table
    inside = depth > 0
    d_b = depth - head.rim  # mm below the cortical surface
    cortex = d_b >= 0
    gap, sdepth, half = _sulci(head, v, r, d_b, z, dc)
    in_sulcus_depth = cortex & (d_b < sdepth)
    sulcus = in_sulcus_depth & (gap < half)
    dist_sulcus = np.where(in_sulcus_depth, gap - half, np.hypot(np.maximum(gap - half, 0), d_b - sdepth))
    fis_gap = _fissure_gap(head, x, y, t) - 0.6 * head.atrophy
    syl_gap = _sylvian_gap(head, x, y, t) - 0.9 * head.atrophy
    fissure, sylvian = cortex & (fis_gap < 0), cortex & (syl_gap < 0)
    cisterns, stem, lateral, midline, deep = _central(head, core, x, y, z, t)
    ventricles = lateral | midline

    dist_csf = np.minimum(np.minimum(np.maximum(d_b, 0), dist_sulcus), np.minimum(fis_gap, syl_gap))
    grey = inside & (dist_csf < head.ribbon)
    # posterior fossa below the tentorium (a tent sloping up and back from the incisura)
    cerebellum = (y > (0.02 + 1.6 * np.clip(t - 0.12, 0.0, None)) * head.b + 0.35 * np.abs(x)) & (t < 0.26)
    grey |= deep | stem
    csf = inside & ((d_b < 0) | sulcus | fissure | sylvian | cisterns | ventricles) & ~stem
    hu = np.where(grey, np.float32(head.grey_hu), np.float32(head.white_hu))
    mixed = np.float32(0.5 * (head.grey_hu + head.white_hu))
    hu = np.where(stem | (cerebellum & ~grey), mixed, hu)
    hu = np.where(deep & ~stem, np.float32(head.grey_hu - 2.5), hu)  # nuclei a shade darker than cortex
    hu = np.where(csf, np.float32(head.csf_hu), hu)
    wide = (in_sulcus_depth & (gap < half + 0.7)) | (syl_gap < 0.3) | fissure | cisterns
    sah_space = inside & cortex & wide & ~ventricles & ~stem
    parenchyma = inside & ~csf
    return _Brain(
        hu,
        inside,
        csf,
        sah_space,
        ventricles & inside,
        midline & inside,
        grey & parenchyma,
        deep & parenchyma,
        parenchyma,
        depth,
        inside & (syl_gap < 0.3),
        cisterns & inside & ~stem,
        fissure & inside,
    )


# --------------------------------------------------------------------------------------------------------------------
# Skull, skull base and scalp (unwarped frame)
# --------------------------------------------------------------------------------------------------------------------


def _segment_distance(x, y, p0: tuple[float, float], p1: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """Distance (mm) from each point to the segment p0-p1, and the position (0 at p0, 1 at p1) of its foot."""
    vx, vy = p1[0] - p0[0], p1[1] - p0[1]
    u = np.clip(((x - p0[0]) * vx + (y - p0[1]) * vy) / (vx * vx + vy * vy), 0.0, 1.0)
    return np.hypot(x - p0[0] - u * vx, y - p0[1] - u * vy), u


def _skull_base(head: _Head, g: _Grid) -> tuple[np.ndarray, np.ndarray]:
    """Bone and air inside the cranial outline of the lowest slices: petrous ridges with mastoid air cells,
    clivus, sphenoid sinus, and the sloping floor of the anterior cranial fossa with the frontal sinus.

    Returns (bone, air) bool masks; both are empty above t = 0.26.
    """
    bone = np.zeros(g.x.shape, bool)
    air = np.zeros(g.x.shape, bool)
    low = np.nonzero(g.t[:, 0, 0] < 0.26)[0]
    if low.size == 0:
        return bone, air
    sl = slice(0, low[-1] + 1)
    bone[sl], air[sl] = _skull_base_slab(head, g.x[sl], g.y[sl], g.t[sl])
    return bone, air


def _skull_base_slab(head: _Head, x, y, t) -> tuple[np.ndarray, np.ndarray]:
    """``_skull_base`` on the lowest slices only (x, y, t of those slices)."""
    bone = np.zeros(x.shape, bool)
    air = np.zeros(x.shape, bool)
    a, b = head.a, head.b
    w_pet = 12.0 * np.clip((0.22 - t) / 0.22, 0.0, 1.0)  # ridges widen toward the base
    for side in (-1, 1):
        d, u = _segment_distance(x, y, (side * 0.18 * a, -0.08 * b), (side * 0.90 * a, 0.16 * b))
        ridge = d < 0.5 * w_pet * (0.3 + 0.7 * u)
        cells = (np.cos(1.4 * x) * np.cos(1.4 * y) > 0.55) & (u > 0.75) & (d < 0.3 * w_pet)
        bone |= ridge
        air |= ridge & cells & (t < 0.14)
    low = t < 0.14
    clivus = low & (np.abs(x) < 4.0) & (y > -0.17 * b) & (y < -0.04 * b)
    q_sinus = (x / (0.2 * a)) ** 2 + ((y + 0.30 * b) / (0.12 * b)) ** 2
    bone |= clivus | (low & (q_sinus < 1.3))
    air |= low & (q_sinus < 1.0)
    # orbital roofs: domed plates rising laterally and forward; the gyri recti reach further forward medially
    floor = (-y / b + 0.35 * (x / a) ** 2) > 0.62 + 3.0 * np.clip(t - 0.04, 0.0, None)
    bone |= floor
    air |= floor & (t < 0.2) & (((x / (0.16 * a)) ** 2 + ((y + 0.86 * b) / (0.07 * b)) ** 2) < 1.0)
    return bone & ~air, air


def _skull_hu(v: _Vault) -> np.ndarray:
    """Dense inner and outer tables around a softer diploe (about 1500 / 800 HU)."""
    u = np.clip((v.r - v.r_inner) / np.maximum(v.r_outer - v.r_inner, 1e-3), 0.0, 1.0)
    return (1550.0 - 800.0 * (4.0 * u * (1.0 - u)) ** 2).astype(np.float32)


def _scalp_hu(v: _Vault) -> np.ndarray:
    """Skin, galea and muscle ~40 HU around a thin subcutaneous fat layer."""
    u = np.clip((v.r - v.r_outer) / np.maximum(v.r_scalp - v.r_outer, 1e-3), 0.0, 1.0)
    fat = np.exp(-(((u - 0.5) / 0.12) ** 2))
    return (40.0 - 70.0 * fat).astype(np.float32)


# --------------------------------------------------------------------------------------------------------------------
# Hemorrhages
# --------------------------------------------------------------------------------------------------------------------


def min_lesion_voxels(spacing: Sequence[float]) -> int:
    """Smallest voxel count a requested subtype is guaranteed to have on a grid of this spacing."""
    return max(MIN_LESION_VOXELS, math.ceil(MIN_LESION_ML * 1000.0 / float(np.prod(spacing))))


def _z_window(g: _Grid, t_lo: float, t_hi: float, margin_mm: float, rng: np.random.Generator) -> float:
    """A random height (mm) inside [t_lo, t_hi] of the head and inside the covered stack (minus a margin)."""
    zz = g.z[:, 0, 0]
    lo = max(t_lo * _HEAD_HEIGHT_MM, float(zz[0]) + margin_mm)
    hi = min(t_hi * _HEAD_HEIGHT_MM, float(zz[-1]) - margin_mm)
    if lo > hi:  # stack barely covers the range: take the middle of the overlap
        lo = hi = 0.5 * (max(t_lo * _HEAD_HEIGHT_MM, float(zz[0])) + min(t_hi * _HEAD_HEIGHT_MM, float(zz[-1])))
    return float(rng.uniform(lo, hi))


def _extra_axial_thickness(kind: str, rng: np.random.Generator, g: _Grid, v: _Vault, theta0: float, grow: float):
    """Thickness (mm) of an SDH crescent or an EDH lens along the inner table, as a field over (theta, z).

    SDH: long arc (90-180 degrees) and tall (45-90 mm), thin (2.5-11 mm) with tapering ends; the inner margin follows
    the brain, so it is concave toward it. EDH: short arc (35-65 degrees) and 20-40 mm tall, thick (10-24 mm) with an
    elliptic profile: a biconvex lens. ``grow`` > 1 enlarges a lesion that came out under the minimum size.
    """
    dth = _wrap(v.angles.grid - theta0)  # (1, n)
    z = g.z[:, :, 0]  # (S, 1)
    if kind == "SDH":
        half_arc, half_z = rng.uniform(0.8, 1.55), rng.uniform(22.0, 45.0)
        peak = rng.uniform(2.5, 11.0) * grow
        z0 = _z_window(g, 0.35, 0.80, 0.5 * g.spacing[0], rng)
        u = np.clip(1.0 - np.abs(dth / half_arc) ** 2.5, 0.0, None) * np.clip(
            1.0 - np.abs((z - z0) / half_z) ** 2.5, 0.0, None
        )
        thick = peak * u**0.6
    else:
        half_arc, half_z = rng.uniform(0.3, 0.55), rng.uniform(11.0, 21.0) * min(grow, 1.6)
        peak = rng.uniform(10.0, 24.0) * grow
        z0 = _z_window(g, 0.35, 0.78, 0.5 * g.spacing[0], rng)
        thick = peak * np.sqrt(np.clip(1.0 - (dth / half_arc) ** 2 - ((z - z0) / half_z) ** 2, 0.0, None))
    return np.minimum(v.angles(thick.astype(np.float32)), 0.45 * v.r_inner)


def _extra_axial_mask(thick: np.ndarray, v: _Vault) -> np.ndarray:
    depth = v.r_inner - v.r
    return (depth > 0) & (depth <= thick) & (thick > 0.3)


def _blob(rng: np.random.Generator, x, y, z, centre, radii) -> np.ndarray:
    """Normalised radius of an irregular blob (< 1 inside): an ellipsoid with a few random low-frequency lobes."""
    waves = [
        (rng.normal(size=3), rng.uniform(1.5, 4.5), rng.uniform(0.06, 0.13), rng.uniform(0, 6.3)) for _ in range(5)
    ]
    out = np.full(x.shape, np.float32(9.0))
    zz = np.broadcast_to(z, x.shape)
    box = (np.abs(zz - centre[2]) < 2.2 * radii[2]) & (np.abs(x - centre[0]) < 2.2 * radii[0])
    box &= np.abs(y - centre[1]) < 2.2 * radii[1]  # lobes keep the blob within 1.65x its radii
    dx, dy, dz = (x[box] - centre[0]) / radii[0], (y[box] - centre[1]) / radii[1], (zz[box] - centre[2]) / radii[2]
    rho = np.sqrt(dx * dx + dy * dy + dz * dz) + np.float32(1e-6)
    bump = np.zeros_like(rho)
    for k, norm, amp, phase in waves:
        k = k * (norm / np.linalg.norm(k))
        bump += np.float32(amp) * np.cos((k[0] * dx + k[1] * dy + k[2] * dz) / rho + phase)
    out[box] = rho / (1.0 + bump)
    return out


def _iph(rng: np.random.Generator, b: _Brain, x, y, z, head: _Head, grow: float):
    """Intraparenchymal blob: basal ganglia/thalamus (55%), lobar (35%) or cerebellar (10%); returns (mask, rho)."""
    kind = rng.choice(["deep", "lobar", "cerebellar"], p=[0.55, 0.35, 0.10])
    zz = np.broadcast_to(z, x.shape)
    deep = b.deep_grey
    cerebellar = b.parenchyma & (zz < 0.22 * _HEAD_HEIGHT_MM) & (y > 0.2 * head.b)
    lobar = b.parenchyma & ~b.grey & (b.depth > 14.0) & (b.depth < 32.0)
    cand = {"deep": deep, "lobar": lobar, "cerebellar": cerebellar}[kind]
    if not cand.any():
        cand = b.parenchyma & (b.depth > 10.0)
    if not cand.any():
        cand = b.parenchyma
    flat = np.flatnonzero(cand)
    i = np.unravel_index(flat[rng.integers(flat.size)], cand.shape)
    centre = (float(x[i]), float(y[i]), float(zz[i]))
    vol_ml = math.exp(rng.uniform(math.log(3.0), math.log(55.0))) * grow**3
    r_eq = (3.0 * vol_ml * 1000.0 / (4.0 * math.pi)) ** (1.0 / 3.0)
    radii = r_eq * rng.uniform(0.75, 1.3, 3)
    radii *= r_eq / float(np.prod(radii)) ** (1.0 / 3.0)
    rho = _blob(rng, x, y, zz, centre, radii)
    return (rho < 1.0) & b.parenchyma & ~b.ventricles, rho


def _ivh(rng: np.random.Generator, b: _Brain, x, row_mm, grow: float) -> np.ndarray:
    """Blood layering in the dependent part of one or both lateral ventricles (a horizontal fluid level in the
    image), sometimes as a cast that also fills the third and fourth ventricles."""
    vent = b.ventricles
    side = rng.choice([-1, 0, 1], p=[0.35, 0.3, 0.35])
    sel = vent & ((x * side > 0) if side else True)
    if int(sel.sum()) < 10:
        sel = vent
    rows = np.broadcast_to(row_mm, vent.shape)[sel]
    if rows.size == 0:
        return np.zeros(vent.shape, bool)
    frac = min(0.95, rng.uniform(0.15, 0.55) * grow)
    level = float(np.quantile(rows, 1.0 - frac))
    mask = sel & (row_mm >= level)
    if rng.random() < 0.25:  # cast: third and fourth ventricles filled too
        mask |= b.midline_ventricles
    return mask


def _sah(rng: np.random.Generator, b: _Brain, theta, z, g: _Grid, grow: float) -> np.ndarray:
    """Blood in the subarachnoid spaces: over the convexity (sulci of a sector), in one Sylvian fissure and its
    neighbouring sulci, or basal (cisterns, both Sylvian fissures, anterior interhemispheric fissure)."""
    kind = rng.choice(["convexity", "sylvian", "basal"], p=[0.4, 0.25, 0.35])
    space = b.sah_space
    if kind == "basal":
        region = (b.cisterns | b.sylvian | (b.fissure & (g.y < 0))) & (z < 0.55 * _HEAD_HEIGHT_MM)
        region |= (
            space & (z < 0.45 * _HEAD_HEIGHT_MM) & (b.depth < 6.0 + 6.0 * grow) & (np.abs(np.abs(theta) - 1.35) < 0.35)
        )
        return region & space
    theta0 = rng.choice([-1.0, 1.0]) * (1.35 if kind == "sylvian" else rng.uniform(0.3, 2.6))
    half_arc = rng.uniform(0.35, 0.9) * grow
    z0 = _z_window(g, 0.36 if kind == "sylvian" else 0.45, 0.45 if kind == "sylvian" else 0.85, 0, rng)
    half_z = rng.uniform(12.0, 30.0) * grow
    region = (np.abs(_wrap(theta - theta0)) < half_arc) & (np.abs(z - z0) < half_z) & ~b.cisterns
    if kind == "convexity":
        region &= b.depth < 30.0
    return region & space


# --------------------------------------------------------------------------------------------------------------------
# Assembly
# --------------------------------------------------------------------------------------------------------------------


def _lesion_hu(rng: np.random.Generator, kind: str, n: int) -> np.ndarray:
    """Noise-free density of a lesion's voxels: acute blood, mixed with CSF for SAH/IVH."""
    lo, hi = {"SAH": (56.0, 72.0), "IVH": (56.0, 74.0)}.get(kind, (60.0, 80.0))
    return np.full(n, rng.uniform(lo, hi), np.float32)


def _finish(rng: np.random.Generator, hu: np.ndarray, labels: np.ndarray, noise_hu: float) -> np.ndarray:
    """Scanner look: mild blur (partial volume, kernel), correlated Gaussian noise; labelled voxels kept in range."""
    hu = ndimage.gaussian_filter(hu, sigma=(0, 0.6, 0.6), mode="nearest")
    if noise_hu > 0:
        noise = ndimage.gaussian_filter(rng.standard_normal(hu.shape, dtype=np.float32), sigma=(0, 0.6, 0.6))
        hu += noise * np.float32(noise_hu / max(float(noise.std()), 1e-6))
    lab = labels > 0
    hu[lab] = np.clip(hu[lab], *HEMORRHAGE_HU_RANGE)
    np.clip(hu, -1024.0, 3071.0, out=hu)
    return hu


def _side_angles(subtypes: Sequence[str], rng: np.random.Generator) -> dict[str, float]:
    """Centre angles of SDH (lateral convexity) and EDH (temporal, or frontal/occipital), on opposite sides."""
    side = float(rng.choice([-1.0, 1.0]))
    out = {"SDH": side * rng.uniform(1.1, 2.0)}
    edh_side = -side if "SDH" in subtypes else float(rng.choice([-1.0, 1.0]))
    out["EDH"] = edh_side * float(rng.choice([rng.uniform(1.2, 1.9), rng.uniform(0.4, 0.8), rng.uniform(2.4, 2.8)]))
    return out


def _lesion_rng(seed: int, kind: str) -> np.random.Generator:
    return np.random.default_rng([seed, 1 + CLASSES.index(kind)])


def generate_phantom(
    seed: int = 0,
    subtypes: Sequence[str] = ("IPH",),
    *,
    shape: Sequence[int] = DEFAULT_SHAPE,
    spacing: Sequence[float] | None = None,
    noise_hu: float = 5.0,
) -> Phantom:
    """Generate a synthetic axial head CT with the requested hemorrhage subtypes.

    Args:
        seed: the same seed (with the same other arguments) gives identical arrays.
        subtypes: names from ``CLASSES``; ``()`` gives a normal head. Each one requested is present with at least
            ``min_lesion_voxels(spacing)`` voxels over several consecutive slices; the others are absent.
        shape: (slices, rows, cols).
        spacing: (slice, row, col) in mm; default fits a 120 x 230 x 230 mm field of view, (5.0, 0.9, 0.9) for the
            default shape. Anatomy is built in mm, so any spacing shows the same head.
        noise_hu: standard deviation of the (slightly correlated) Gaussian image noise in HU.

    Returns:
        The ``Phantom`` (HU volume, label map, spacing, slice labels, true volumes in mL, noise-free masks).

    Raises:
        ConfigError: unknown or repeated subtype, bad shape/spacing, a field of view too small for a head.
    """
    if isinstance(subtypes, str):
        subtypes = tuple(s.strip() for s in subtypes.split(",") if s.strip())
    shape, spacing = _check_args(seed, tuple(shape), spacing, tuple(subtypes), noise_hu)
    subtypes = tuple(c for c in CLASSES if c in subtypes)
    rng = np.random.default_rng([seed, 0])
    head = _sample_head(rng)
    g = _make_grid(shape, spacing, rng)
    v = _vault(head, g)
    need = min_lesion_voxels(spacing)

    bone, air = _skull_base(head, g)
    # lesions are placed in PRIORITY order, each outside the ones before, so the minimum size holds in the end
    free = (v.r < v.r_inner) & ~bone & ~air
    angles = _side_angles(subtypes, np.random.default_rng([seed, 10]))
    masks: dict[str, np.ndarray] = {}
    thick_total = np.zeros(shape, np.float32)
    for kind in ("EDH", "SDH"):
        if kind in subtypes:

            def make(r, grow, kind=kind):
                thick = _extra_axial_thickness(kind, r, g, v, angles[kind], grow)
                return thick, _extra_axial_mask(thick, v)

            thick, masks[kind] = _with_minimum(make, need, _lesion_rng(seed, kind), kind, free)
            thick_total = np.maximum(thick_total, thick)
            free &= ~masks[kind]
    brain, xw, yw = _warped_brain(head, g, v, thick_total, bone | air)
    rho_iph = _brain_lesions(seed, subtypes, brain, xw, yw, g, v, head, need, masks, free)
    hu, labels = _compose(seed, head, g, v, brain, bone, air, masks, rho_iph)
    hu = _finish(np.random.default_rng([seed, 99]), hu, labels, noise_hu)
    phantom = _package(seed, subtypes, spacing, hu, labels, v, brain, bone)
    phantom.noise_hu = float(noise_hu)
    return phantom


def _with_minimum(make, need: int, rng: np.random.Generator, kind: str, free: np.ndarray):
    """Call ``make(rng, grow)`` -> (..., mask) with a growing size until ``mask & free`` has ``need`` voxels.

    Returns ``make``'s output with the mask restricted to ``free``.
    """
    grow = 1.0
    for _ in range(10):
        *extra, mask = make(rng, grow)
        mask = mask & free
        if int(np.count_nonzero(mask)) >= need:
            return (*extra, mask)
        grow *= 1.25
    raise ConfigError(f"could not place a {kind} of at least {need} voxels on this grid; use a finer spacing")


def _warped_brain(head: _Head, g: _Grid, v: _Vault, thick: np.ndarray, base: np.ndarray):
    """Brain anatomy pushed by extra-axial collections.

    Along each ray the content at radius r comes from r * R / (R - thickness), so the cortex starts where the
    collection ends; and the deep brain shifts away from the thicker side (midline shift, about half the
    collection's thickness, at most 9 mm), fading to nothing at the inner table.
    """
    scale = v.r_inner / np.maximum(v.r_inner - thick, 1e-3)
    scale = np.where(thick > 0, scale, 1.0).astype(np.float32)
    xw, yw = g.x * scale, g.y * scale
    if thick.any():
        left = np.where(g.x > 0, thick, 0).max(axis=(1, 2), keepdims=True)
        right = np.where(g.x < 0, thick, 0).max(axis=(1, 2), keepdims=True)
        shift = np.clip(0.45 * (left - right), -9.0, 9.0)
        fade = np.clip(1.0 - (np.hypot(xw, yw) / np.maximum(v.r_inner, 1.0)) ** 2, 0.0, 1.0)
        xw = xw + shift * fade
    rw = np.hypot(xw, yw)
    brain = _brain(head, v, xw, yw, rw, g.z, g.t, g.spacing[2], g.core)
    for name in (
        "inside",
        "csf",
        "sah_space",
        "ventricles",
        "midline_ventricles",
        "grey",
        "deep_grey",
        "parenchyma",
        "sylvian",
        "cisterns",
        "fissure",
    ):
        setattr(brain, name, getattr(brain, name) & ~base)
    return brain, xw, yw


def _brain_lesions(seed, subtypes, brain: _Brain, xw, yw, g: _Grid, v: _Vault, head: _Head, need: int, masks, free):
    """IPH, IVH and SAH masks (into ``masks``), placed in the warped brain in ``PRIORITY`` order, each within
    ``free`` minus the ones before; returns the IPH blob's normalised radius (for the oedema rim) or None."""
    rho = None
    free = free.copy()
    if "IPH" in subtypes:
        rho, masks["IPH"] = _with_minimum(
            lambda r, gr: _iph(r, brain, xw, yw, g.z, head, gr)[::-1], need, _lesion_rng(seed, "IPH"), "IPH", free
        )
        free &= ~masks["IPH"]
    if "IVH" in subtypes:
        (masks["IVH"],) = _with_minimum(
            lambda r, gr: (_ivh(r, brain, xw, g.row_mm, gr),), need, _lesion_rng(seed, "IVH"), "IVH", free
        )
        free &= ~masks["IVH"]
    if "SAH" in subtypes:
        (masks["SAH"],) = _with_minimum(
            lambda r, gr: (_sah(r, brain, v.theta, g.z, g, gr),), need, _lesion_rng(seed, "SAH"), "SAH", free
        )
    return rho


def _compose(seed, head: _Head, g: _Grid, v: _Vault, brain: _Brain, bone, air, masks, rho_iph):
    """Noise-free HU and the label map: air, scalp, skull, intracranial content, skull base, lesions by priority."""
    hu = np.full(g.x.shape, HU_AIR, np.float32)
    in_head = v.r < v.r_scalp
    hu[in_head] = _scalp_hu(v)[in_head]
    skull = (v.r >= v.r_inner) & in_head & (v.r < v.r_outer)
    hu[skull] = _skull_hu(v)[skull]
    cavity = v.r < v.r_inner
    hu[cavity] = np.where(brain.inside, brain.hu, np.float32(head.csf_hu))[cavity]
    if rho_iph is not None:  # perihematomal oedema: a hypodense rim a few mm wide
        oedema = (rho_iph >= 1.0) & (rho_iph < 1.25) & brain.parenchyma
        hu[oedema] -= np.float32(9.0)
    hu[bone & cavity] = 1250.0
    hu[air & cavity] = HU_AIR
    labels = np.zeros(g.x.shape, np.uint8)
    for kind in reversed(PRIORITY):
        if kind in masks:
            m = masks[kind] & cavity & ~bone & ~air
            labels[m] = CLASSES.index(kind) + 1
    for kind in masks:
        m = labels == CLASSES.index(kind) + 1
        hu[m] = _lesion_hu(np.random.default_rng([seed, 20 + CLASSES.index(kind)]), kind, int(m.sum()))
    return hu, labels


def _package(seed, subtypes, spacing, hu, labels, v: _Vault, brain: _Brain, bone) -> Phantom:
    cavity = v.r < v.r_inner
    lesion = labels > 0
    slice_labels = np.stack([(labels == k + 1).any(axis=(1, 2)) for k in range(len(CLASSES))], axis=1)
    voxel_ml = float(np.prod(spacing)) / 1000.0
    truth = {c: float(np.count_nonzero(labels == k + 1)) * voxel_ml for k, c in enumerate(CLASSES)}
    masks = {
        "head": v.r < v.r_scalp,
        "skull": ((v.r >= v.r_inner) & (v.r < v.r_outer)) | (bone & cavity),
        "brain": brain.inside & cavity,
        "parenchyma": brain.parenchyma & cavity & ~lesion,
        "grey": brain.grey & cavity & ~lesion,
        "ventricles": brain.ventricles & cavity,
        "subarachnoid": brain.sah_space & cavity,
    }
    return Phantom(
        hu.astype(np.float32),
        labels,
        tuple(spacing),
        slice_labels.astype(np.uint8),
        truth,
        int(seed),
        tuple(subtypes),
        masks,
    )


# --------------------------------------------------------------------------------------------------------------------
# Writing and datasets
# --------------------------------------------------------------------------------------------------------------------

FORMATS: tuple[str, ...] = ("dicom", "nifti")
TRUTH_DIR = ".truth"
"""Subfolder of a written phantom that holds ``truth.json`` and ``labels.nii.gz``: the readers skip dot-folders, so the
phantom folder as a whole stays one CT input (``ichdemo predict OUT``), the truth beside it but not read with it."""


def phantom_affine(shape: Sequence[int], spacing: Sequence[float]) -> np.ndarray:
    """RAS affine of a (S, H, W) phantom grid (of ``array.transpose(2, 1, 0)``), as the DICOM writer places it.

    ``ichdemo.io.dicom_write.write_dicom_series`` centres each slice on the isocentre (LPS x0 = -(W - 1) / 2 * col,
    y0 = -(H - 1) / 2 * row) with slice k at z = k * slice spacing; in RAS the columns run to the patient's left
    (-x) and the rows to posterior (-y). NIfTI output uses the same affine, so both formats share world coordinates.
    """
    _, h, w = (int(n) for n in shape)
    ds, dr, dc = (float(v) for v in spacing)
    affine = np.diag([-dc, -dr, ds, 1.0])
    affine[:3, 3] = [(w - 1) / 2 * dc, (h - 1) / 2 * dr, 0.0]
    return affine


def truth_record(phantom: Phantom) -> dict:
    """What ``truth.json`` holds: enough to regenerate the phantom and to score a prediction against it."""
    return {
        "generator": "ichdemo.phantom.generate_phantom",
        "seed": phantom.seed,
        "subtypes": list(phantom.subtypes),
        "shape": list(phantom.shape),
        "spacing_mm": [float(v) for v in phantom.spacing],
        "noise_hu": phantom.noise_hu,
        "classes": list(CLASSES),
        "label_values": {c: k + 1 for k, c in enumerate(CLASSES)},
        "volume_ml": {c: round(phantom.truth_ml[c], 6) for c in CLASSES},
        "voxels": {c: int(np.count_nonzero(phantom.labels == k + 1)) for k, c in enumerate(CLASSES)},
        "slice_labels": phantom.slice_labels.astype(int).tolist(),
        "slice_order": "index 0 is the most inferior slice",
    }


def write_phantom(phantom: Phantom, out_dir: str | Path, fmt: str = "dicom") -> dict:
    """Write a phantom as a CT series with its label map and ground truth.

    The folder as a whole is one CT input (``load_volume(out_dir)``, ``ichdemo predict OUT``): the CT lies at its
    top, the truth in the ``.truth/`` subfolder, which the readers skip like any dot-folder::

        OUT/CT0001.dcm ... CT00NN.dcm   (fmt="dicom", one file per slice)  or  OUT/ct.nii.gz  (fmt="nifti", HU)
        OUT/.truth/labels.nii.gz         uint8 label map, values as in ``CLASSES``, on the CT's grid and affine
        OUT/.truth/truth.json            ``truth_record`` plus the format and the paths above, relative to OUT

    Args:
        phantom: from ``generate_phantom``.
        out_dir: output folder, created if missing; it must be empty, so that it holds one series and nothing else.
        fmt: "dicom" or "nifti".

    Returns:
        {"ct": ``out_dir`` (DICOM) or ``out_dir/ct.nii.gz`` (NIfTI), "labels": the label map, "truth": truth.json,
        "files": the DICOM files in slice order (empty for NIfTI)}.

    Raises:
        ConfigError: unknown ``fmt``, or ``out_dir`` already holds something.
    """
    from ichdemo.io import write_nifti  # io is the lower layer; imported here so generating needs no I/O stack
    from ichdemo.io.dicom_write import write_dicom_series

    if fmt not in FORMATS:
        raise ConfigError(f"phantom format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"{out} already holds files; write the phantom into an empty or new folder")
    truth_dir = out / TRUTH_DIR
    truth_dir.mkdir(parents=True)
    affine = phantom.affine
    files: list[Path] = []
    if fmt == "dicom":
        ct = out
        names = ", ".join(phantom.subtypes) or "normal"
        files = write_dicom_series(
            phantom.hu,
            phantom.spacing,
            out,
            seed=phantom.seed,
            patient_id=f"PHANTOM{phantom.seed}",
            series_description=f"Synthetic head CT phantom, seed {phantom.seed} ({names})",
        )
    else:
        ct = write_nifti(phantom.hu.astype(np.float32), affine, out / "ct.nii.gz")
    labels = write_nifti(phantom.labels.astype(np.uint8), affine, truth_dir / "labels.nii.gz")
    truth = truth_dir / "truth.json"
    where = {"ct": ct.relative_to(out).as_posix(), "labels": labels.relative_to(out).as_posix()}
    record = truth_record(phantom) | {"format": fmt} | where  # paths relative to the phantom folder
    truth.write_text(json.dumps(record, indent=1) + "\n")
    return {"ct": ct, "labels": labels, "truth": truth, "files": files}


def phantom_dataset(
    n: int,
    seed: int = 0,
    shape: Sequence[int] = DEFAULT_SHAPE,
    spacing: Sequence[float] | None = None,
    *,
    p_normal: float = 0.25,
    max_subtypes: int = 2,
    noise_hu: float = 5.0,
) -> Iterator[Phantom]:
    """Yield ``n`` phantoms with random subtype subsets, normals included (lazily: one at a time).

    Args:
        n: number of phantoms.
        seed: the same seed yields the same sequence; each phantom's own seed is in ``Phantom.seed``.
        shape, spacing, noise_hu: as in ``generate_phantom``.
        p_normal: probability of a normal head.
        max_subtypes: at most this many subtypes per abnormal head (at least one), drawn with ``DATASET_WEIGHTS``.
    """
    if not 0.0 <= p_normal <= 1.0 or not 1 <= max_subtypes <= len(CLASSES):
        raise ConfigError(f"need 0 <= p_normal <= 1 and 1 <= max_subtypes <= 5, got {p_normal}, {max_subtypes}")
    weights = np.array([DATASET_WEIGHTS[c] for c in CLASSES])
    for i in range(n):
        rng = np.random.default_rng([seed, i, 7])
        subtypes: tuple[str, ...] = ()
        if rng.random() >= p_normal:
            k = int(rng.integers(1, max_subtypes + 1))
            subtypes = tuple(rng.choice(CLASSES, size=k, replace=False, p=weights / weights.sum()))
        yield generate_phantom(int(rng.integers(2**31 - 1)), subtypes, shape=shape, spacing=spacing, noise_hu=noise_hu)
