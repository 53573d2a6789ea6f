"""The Teach tab's pictures for one slice: Grad-CAM at its native grid against the LSE-UNet map, the effect of the
LSE sharpness r, a model trained with HLoss against one without, and Algorithm 1 step by step.

The networks run through the pipeline's own pieces (``ichdemo.transforms.prepare``, ``LoadedModel.run``,
``ichdemo.pipeline.maps_on_grid``), on the slice and its two neighbours, so a slice shows here what it shows in a
series analysis.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ichdemo import viz
from ichdemo.catalogue import UNTRAINED, ModelPool
from ichdemo.constants import CLASSES
from ichdemo.errors import ConfigError, UnsupportedInputError
from ichdemo.models.lse_unet import OUTSIDE
from ichdemo.pipeline import maps_on_grid
from ichdemo.quantify import Thresholds, algorithm1
from ichdemo.transforms import ResizeSpec, prepare
from ichdemo.volume import Volume

Pictures = list[tuple[np.ndarray, str]]


@dataclass
class TeachView:
    """The Teach tab for one slice and subtype: pictures with captions and a short account in markdown."""

    maps: Pictures
    r_maps: Pictures
    r_figure: Any
    hloss: Pictures
    steps: Pictures
    notes: str


@dataclass
class _Slice:
    """One slice through one model: probabilities (5,), native maps (5, h, w) >= 0, for an lse_unet the signed f0
    (5, h, w) with cells outside the pooled region at -inf, and the geometry back to the source grid."""

    probs: np.ndarray
    native: np.ndarray
    f0: np.ndarray | None
    spec: ResizeSpec


def _run_one(lm, vol: Volume, index: int) -> _Slice:
    lo, hi = max(0, index - 1), min(vol.shape[0], index + 2)
    x, spec = prepare(vol.data[lo:hi], vol.prewindowed, lm.cfg.input_size, lm.cfg.window)
    out = lm.run(x[index - lo : index - lo + 1], pixel_logits=lm.cfg.family == "lse_unet")
    return _Slice(out.probs[0], out.native[0], _f0(out.pixel_logits, lm.model), spec)


def _f0(pixel_logits: np.ndarray | None, model) -> np.ndarray | None:
    """The signed f0 back from the pixel logits (r f0, + log n for the log-sum LSE; see ``ichdemo.cam``)."""
    if pixel_logits is None:
        return None
    pl = pixel_logits[0].astype(np.float64)
    inside = pl > OUTSIDE / 2
    offset = 0.0 if getattr(model, "lse_mean", True) else math.log(max(1, int(inside[0].sum())))
    return np.where(inside, (pl - offset) / float(model.lse_r), -np.inf)


def _to255(m: np.ndarray) -> np.ndarray:
    """One map scaled by its own maximum to 0..255 for display (the per-image scale of ``scale_heatmaps``)."""
    m = np.fmax(np.asarray(m, np.float32), 0)
    peak = float(m.max())
    return np.zeros_like(m) if peak <= 0 else np.ceil(m / peak * 255.0)


def _on_source(one: _Slice, m255: np.ndarray, nearest: bool) -> np.ndarray:
    return np.clip(one.spec.to_source(np.asarray(m255, np.float32), nearest=nearest), 0, 255)


def explain_slice(
    pool: ModelPool,
    volume: Volume,
    index: int,
    cls: str,
    gap_ref: str | None,
    lse_ref: str | None,
    r_values: Sequence[float] = (0.3, 3.0, 30.0),
    thresholds: Thresholds | None = None,
    window: str = "paper",
) -> TeachView:
    """Everything the Teach tab shows for one slice and subtype.

    Args:
        pool: the models.
        volume: the series; ``index`` its slice.
        cls: subtype (one of CLASSES) to explain.
        gap_ref / lse_ref: a Grad-CAM baseline and an LSE-UNet (either may be None).
        r_values: LSE sharpness values whose pixel weights softmax(r f_0) are drawn.
        thresholds: Algorithm 1 thresholds for the LSE-UNet (default: its calibrated ones).
        window: display window.
    """
    if cls not in CLASSES:
        raise ConfigError(f"unknown subtype {cls!r}; choose one of {', '.join(CLASSES)}")
    if not gap_ref and not lse_ref:
        raise UnsupportedInputError("the Teach tab needs a gap (Grad-CAM) model or an lse_unet model")
    k = CLASSES.index(cls)
    index = int(np.clip(index, 0, volume.shape[0] - 1))
    base = viz.slice_rgb(volume.data[index], volume.prewindowed, window)
    maps, notes = [(base, f"slice {index}")], []
    r_maps, r_fig, hl, steps = [], None, [], []
    if gap_ref:
        lm = pool.get(gap_ref)
        one = _run_one(lm, volume, index)
        n = one.native.shape[-1]
        m255 = _to255(one.native[k])
        maps.append((viz.heatmap_overlay(base, _on_source(one, m255, True), 0.6),
                     f"Grad-CAM native {n}x{n} cells, p={one.probs[k]:.2f} ({lm.name})"))
        maps.append((viz.heatmap_overlay(base, _on_source(one, m255, False), 0.6),
                     "Grad-CAM upsampled (bilinear) to the slice"))
        cell = lm.cfg.input_size // n
        notes.append(f"**Grad-CAM ({lm.name})**: {n}x{n} native map; each cell covers {cell} x {cell} model pixels.")
    if lse_ref:
        lm = pool.get(lse_ref)
        one = _run_one(lm, volume, index)
        n = one.native.shape[-1]
        model_r = float(lm.model.lse_r)
        maps.append((viz.heatmap_overlay(base, _on_source(one, _to255(one.native[k]), True), 0.6),
                     f"LSE-UNet map native {n}x{n}, p={one.probs[k]:.2f} ({lm.name})"))
        r_maps, r_fig = _r_effect(base, one, k, r_values, model_r, getattr(lm.model, "lse_mean", True), cls)
        steps = _algorithm1_steps(base, one, thresholds or lm.thresholds)
        hl = _hloss_pair(pool, volume, index, k, base)
        notes.append(f"**LSE-UNet ({lm.name})**: heatmap f0 at {n}x{n}, r = {model_r:g}; "
                     f"p({cls}) = sigmoid(LSE_r(f0)) = {one.probs[k]:.3f}.")
    info = pool.infos.get(lse_ref or gap_ref)
    if info is not None and not info.trained:
        notes.append(f"⚠ {UNTRAINED}: these pictures only show the mechanics.")
    return TeachView(maps, r_maps, r_fig, hl, steps, "\n\n".join(notes))


def _r_effect(base, one: _Slice, k: int, r_values, model_r: float, mean: bool, cls: str):
    """Weight maps softmax(r f) for a few r, captioned with how concentrated they are, and the pooling curve."""
    f = one.f0[k]
    pooled = f[np.isfinite(f)]  # the cells LSE pools over (a pool_region model: its region only)
    out = []
    top = max(1, round(pooled.size * 0.01))
    for r in r_values:
        w = viz.lse_weights(f, r)
        share = float(np.sort(w.ravel())[::-1][:top].sum())
        out.append((viz.heatmap_overlay(base, _on_source(one, _to255(w), True), 0.6),
                    f"r={r:g}: top 1% of cells hold {share:.0%}"))
    return out, viz.lse_curve_figure(pooled, model_r, mean, cls)


def _algorithm1_steps(base, one: _Slice, t: Thresholds) -> Pictures:
    """Algorithm 1 on one slice: per subtype the gate and the thresholded map, then the argmax label map."""
    src = maps_on_grid(one.native[None], t, one.spec)[0]  # (5, H, W), as in a series analysis
    probs = one.probs
    labels = algorithm1(probs[None], src[None], t.class_thresholds, t.mask_thresholds)[0]
    out = []
    for k, c in enumerate(CLASSES):
        gate = probs[k] > t.class_thresholds[k]
        above = src[k] > t.mask_thresholds[k]
        lab = np.where(above & gate, k + 1, 0).astype(np.uint8)
        cap = (
            f"{c}: {int((above & gate).sum())} px (p={probs[k]:.2f} > c, map > m={t.mask_thresholds[k]:g})"
            if gate
            else f"{c}: gated off (p={probs[k]:.2f} <= c={t.class_thresholds[k]:.2f})"
        )
        out.append((viz.label_overlay(base, lab, 0.5), cap))
    out.append((viz.label_overlay(base, labels, 0.5), "label map: argmax over normal + 5 subtypes"))
    return out


def _hloss_pair(pool: ModelPool, volume: Volume, index: int, k: int, base) -> Pictures:
    """The subtype's map from an LSE-UNet trained with HLoss and one trained without, when both are configured."""
    with_h, without = pool.find("lse_unet", hloss=True), pool.find("lse_unet", hloss=False)
    if not with_h or not without:
        return []
    out = []
    for ref, what in ((with_h[0], "with HLoss"), (without[0], "without HLoss")):
        lm = pool.get(ref)
        one = _run_one(lm, volume, index)
        out.append((viz.heatmap_overlay(base, _on_source(one, _to255(one.native[k]), True), 0.6),
                    f"{what}: {lm.name} (p={one.probs[k]:.2f})"))
    return out
