"""Pictures and figures the app shows, from plain arrays: pure numpy / OpenCV / plotly, no UI toolkit here.

Images are ``(H, W, 3) uint8`` RGB. Heatmaps are the 0..255 maps of ``Analysis.maps255``; label maps hold 0 (normal)
and k + 1 for ``CLASSES[k]``, drawn in ``CLASS_COLORS``.

Example:
    >>> base = slice_rgb(volume.data[12], volume.prewindowed, "brain")
    >>> img = label_overlay(base, labels[12], opacity=0.45)
    >>> fig = probability_figure(analysis.probs, thresholds.class_thresholds)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import cv2
import numpy as np
import plotly.graph_objects as go

from ichdemo.constants import CLASS_COLORS, CLASSES
from ichdemo.metrics import confusion_matrix, dice_from_confusion
from ichdemo.transforms import to_unit

AGREEMENT_CODES: dict[int, tuple[str, tuple[int, int, int]]] = {
    1: ("all models: same subtype", (40, 200, 90)),
    2: ("some models: hemorrhage, others: normal", (255, 200, 0)),
    3: ("models disagree on the subtype", (230, 30, 200)),
}
"""Codes of ``agreement_codes`` (0 = every model says normal) with their legend text and colour."""
TRUTH_COLOR = (0, 230, 255)  # cyan: an expert's any-hemorrhage mask


# ----------------------------------------------------------------------------------------------- images
def _hex(rgb: Sequence[int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*(int(v) for v in rgb))


def gray_rgb(unit: np.ndarray) -> np.ndarray:
    """(H, W) values in [0, 1] -> (H, W, 3) uint8 grey."""
    g = np.round(np.clip(np.asarray(unit, np.float32), 0.0, 1.0) * 255.0).astype(np.uint8)
    return np.repeat(g[..., None], 3, axis=2)


def slice_rgb(data2d: np.ndarray, prewindowed: bool, window: str | tuple[float, float] = "paper") -> np.ndarray:
    """One slice (HU, or 0..255 grey when ``prewindowed``) -> (H, W, 3) uint8 under a window preset."""
    return gray_rgb(to_unit(np.asarray(data2d)[None], prewindowed, window)[0])


def colormap(map255: np.ndarray, name: str = "turbo") -> np.ndarray:
    """(H, W) 0..255 values -> (H, W, 3) uint8 RGB through an OpenCV colormap ("turbo", "inferno", "jet")."""
    cmaps = {"turbo": cv2.COLORMAP_TURBO, "inferno": cv2.COLORMAP_INFERNO, "jet": cv2.COLORMAP_JET}
    if name not in cmaps:
        raise ValueError(f"unknown colormap {name!r}; use one of {sorted(cmaps)}")
    v = np.clip(np.asarray(map255, np.float32), 0, 255).astype(np.uint8)
    return cv2.cvtColor(cv2.applyColorMap(v, cmaps[name]), cv2.COLOR_BGR2RGB)


def blend(base: np.ndarray, overlay: np.ndarray, alpha: np.ndarray | float) -> np.ndarray:
    """``base * (1 - alpha) + overlay * alpha`` per pixel; ``alpha`` is a scalar or (H, W) in [0, 1]. Where alpha
    is 0 on most pixels (a mask covers a small part of a slice) only the others are computed."""
    a = np.clip(np.asarray(alpha, np.float32), 0.0, 1.0)
    hit = a > 0
    if a.ndim != 2 or np.count_nonzero(hit) > hit.size // 4:
        a = a[..., None] if a.ndim == 2 else a
        out = base.astype(np.float32) * (1.0 - a) + overlay.astype(np.float32) * a
        return np.round(out).astype(np.uint8)
    out = base.copy()
    w = a[hit][:, None]
    out[hit] = np.round(base[hit].astype(np.float32) * (1.0 - w) + overlay[hit].astype(np.float32) * w)
    return out


def heatmap_overlay(base: np.ndarray, map255: np.ndarray, opacity: float = 0.5, cmap: str = "turbo") -> np.ndarray:
    """A 0..255 heatmap over a slice: colour from ``cmap``; alpha = opacity x (0.25 + 0.75 x map/255), 0 where the
    map is 0, so an empty map leaves the slice untouched and the strongest pixels are the most opaque."""
    m = np.asarray(map255, np.float32)
    alpha = np.where(m > 0, opacity * (0.25 + 0.75 * np.clip(m, 0, 255) / 255.0), 0.0)
    return blend(base, colormap(m, cmap), alpha)


def heatmap_strip(
    base: np.ndarray,
    maps255: np.ndarray,
    texts: Sequence[str],
    opacity: float = 0.5,
    tile: int = 256,
    nearest: bool = False,
) -> np.ndarray:
    """Several heatmaps of one slice side by side: each (H, W) map of ``maps255`` over ``base`` at ``tile`` px
    height (aspect kept), its text written in the top-left corner, tiles 2 px apart on white.

    Drawing at the tile's size rather than the slice's keeps a five-subtype strip as cheap as one overlay;
    ``nearest`` keeps native heatmap cells square when shrinking.
    """
    h, w = base.shape[:2]
    size = (max(1, round(w * tile / h)), tile)
    small = cv2.resize(base, size, interpolation=cv2.INTER_AREA)
    interp = cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR  # the maps are smooth: linear is enough
    gap = np.full((tile, 2, 3), 255, np.uint8)
    tiles = []
    for m, text in zip(maps255, texts):
        t = heatmap_overlay(small, cv2.resize(np.asarray(m, np.uint8), size, interpolation=interp), opacity)
        for color, thick in (((0, 0, 0), 3), ((255, 255, 255), 1)):  # white on a black edge reads on any map
            cv2.putText(t, text, (6, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.55, color, thick, cv2.LINE_AA)
        tiles += [t, gap]
    return np.concatenate(tiles[:-1], axis=1)


def label_colors() -> np.ndarray:
    """(6, 3) uint8 lookup table: row 0 black (normal), row k + 1 ``CLASS_COLORS[CLASSES[k]]``."""
    return np.array([(0, 0, 0)] + [CLASS_COLORS[c] for c in CLASSES], np.uint8)


def outline(mask: np.ndarray) -> np.ndarray:
    """(H, W) bool: the pixels of ``mask`` that touch a pixel outside it (4-neighbourhood)."""
    m = np.asarray(mask, bool)
    inner = m.copy()
    inner[1:] &= m[:-1]
    inner[:-1] &= m[1:]
    inner[:, 1:] &= m[:, :-1]
    inner[:, :-1] &= m[:, 1:]
    return m & ~inner


def label_overlay(base: np.ndarray, labels2d: np.ndarray, opacity: float = 0.45, edges: bool = True) -> np.ndarray:
    """Subtype label map over a slice: filled in class colours at ``opacity``, outlines fully opaque."""
    lab = np.asarray(labels2d)
    if lab.shape != base.shape[:2]:
        raise ValueError(f"label map {lab.shape} does not match the image {base.shape[:2]}")
    colors = label_colors()[np.clip(lab, 0, len(CLASSES)).astype(np.intp)]
    out = blend(base, colors, np.where(lab > 0, opacity, 0.0))
    if edges:
        for k in range(1, len(CLASSES) + 1):
            out[outline(lab == k)] = label_colors()[k]
    return out


def truth_overlay(base: np.ndarray, truth2d: np.ndarray, subtypes: bool, opacity: float = 0.45) -> np.ndarray:
    """A known truth over a slice: subtype labels in their colours (``subtypes``), else an any-hemorrhage mask
    (an expert's, without subtypes) in ``TRUTH_COLOR``, no subtype's colour, so that it is not read as one."""
    if subtypes:
        return label_overlay(base, truth2d, opacity)
    m = np.asarray(truth2d) > 0
    out = blend(base, np.full_like(base, TRUTH_COLOR), np.where(m, opacity, 0.0))
    out[outline(m)] = TRUTH_COLOR
    return out


# ----------------------------------------------------------------------------------------------- agreement
def agreement_codes(label_maps: Sequence[np.ndarray]) -> np.ndarray:
    """Per-pixel agreement of several models' label maps of one slice (or series).

    Returns:
        uint8 array of the maps' shape: 0 every model normal, 1 every model the same subtype, 2 some models a
        hemorrhage and others normal, 3 models name different subtypes (see ``AGREEMENT_CODES``).
    """
    if len(label_maps) == 0:
        raise ValueError("agreement needs at least one label map")
    stack = np.stack([np.asarray(m) for m in label_maps])  # (M, ...)
    any_h, all_h = (stack > 0).any(0), (stack > 0).all(0)
    hi = np.where(stack > 0, stack, 0).max(0)
    lo = np.where(stack > 0, stack, 255).min(0)
    codes = np.zeros(stack.shape[1:], np.uint8)
    codes[any_h & ~all_h] = 2
    codes[all_h & (hi == lo)] = 1
    codes[any_h & (hi != lo)] = 3  # two different subtypes somewhere in the stack wins over "partial"
    return codes


def agreement_overlay(base: np.ndarray, codes: np.ndarray, opacity: float = 0.55) -> np.ndarray:
    """Agreement codes over a slice in the colours of ``AGREEMENT_CODES``."""
    lut = np.zeros((4, 3), np.uint8)
    for code, (_, rgb) in AGREEMENT_CODES.items():
        lut[code] = rgb
    out = blend(base, lut[codes], np.where(codes > 0, opacity, 0.0))
    for code in AGREEMENT_CODES:
        out[outline(codes == code)] = lut[code]
    return out


def agreement_row(a: np.ndarray, b: np.ndarray) -> list:
    """[Dice of any hemorrhage, Dice of the subtype labels (mean over the subtypes either map holds), share of
    voxels with the same label] of two label maps (one confusion matrix)."""
    c = confusion_matrix(b, a, len(CLASSES) + 1)
    hem = np.array([[c[0, 0], c[0, 1:].sum()], [c[1:, 0].sum(), c[1:, 1:].sum()]])
    any_d, per = dice_from_confusion(hem)[1], dice_from_confusion(c)[1:]
    per = per[~np.isnan(per)]
    return [_round(None if np.isnan(any_d) else any_d), _round(float(per.mean()) if per.size else None),
            round(float(np.trace(c) / c.sum()), 4)]


def agreement_rows(label_maps: Mapping[str, np.ndarray]) -> list[list]:
    """Pairwise agreement over a series: [model A, model B, Dice of any hemorrhage, Dice of the subtype labels
    (mean over the subtypes either model found), share of voxels where A and B give the same label]."""
    names = list(label_maps)
    return [[a, b, *agreement_row(label_maps[a], label_maps[b])] for i, a in enumerate(names) for b in names[i + 1 :]]


def _round(v: float | None, nd: int = 3) -> float | None:
    return None if v is None else round(float(v), nd)


# ----------------------------------------------------------------------------------------------- figures
def _empty_figure(message: str, height: int = 320) -> go.Figure:
    fig = go.Figure()
    fig.add_annotation(text=message, showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper", font={"size": 14})
    fig.update_layout(
        height=height, xaxis={"visible": False}, yaxis={"visible": False}, margin={"l": 10, "r": 10, "t": 30, "b": 10}
    )
    return fig


PERCENT_FLOOR = 1e-3
"""Lowest probability the curves show, in percent (the axis is logarithmic: calibrated thresholds sit near 0.01%)."""


def probability_figure(probs: np.ndarray, class_thresholds: Sequence[float], title: str = "") -> go.Figure:
    """Per-slice probability of every subtype along the series in percent on a log axis (calibrated class
    thresholds are often below 1%), each threshold a dashed line of the subtype's colour; the legend says so.

    Args:
        probs: (S, 5) slice probabilities.
        class_thresholds: (5,) c_k; a subtype is "present" on a slice where its curve is above its line.
        title: figure title (e.g. the model name).
    """
    probs = np.asarray(probs, np.float64)
    if probs.ndim != 2 or probs.shape[1] != len(CLASSES):
        raise ValueError(f"probs must be (S, {len(CLASSES)}), got {probs.shape}")
    pct = np.clip(probs * 100.0, PERCENT_FLOOR, 100.0)
    thr = np.clip(np.asarray(class_thresholds, np.float64) * 100.0, PERCENT_FLOOR, 100.0)
    fig = go.Figure()
    if probs.shape[0] == 1:  # one slice: bars with the thresholds as markers
        colors = [_hex(CLASS_COLORS[c]) for c in CLASSES]
        fig.add_bar(
            x=list(CLASSES), y=pct[0], marker_color=colors, name="probability",
            hovertemplate="%{x}: %{y:.3g}%<extra></extra>",
        )
        fig.add_scatter(
            x=list(CLASSES),
            y=thr,
            mode="markers",
            name="class threshold",
            marker={"symbol": "line-ew-open", "size": 34, "color": "black", "line": {"width": 3}},
        )
        fig.update_layout(xaxis_title="subtype")
    else:
        x = np.arange(probs.shape[0])
        for k, c in enumerate(CLASSES):
            color = _hex(CLASS_COLORS[c])
            fig.add_scatter(
                x=x, y=pct[:, k], mode="lines+markers", name=c, line={"color": color, "width": 2},
                marker={"size": 4}, legendgroup=c, hovertemplate=f"{c} slice %{{x}}: %{{y:.3g}}%<extra></extra>",
            )
            fig.add_scatter(
                x=[x[0], x[-1]], y=[thr[k]] * 2, mode="lines", legendgroup=c, showlegend=False,
                line={"color": color, "width": 1, "dash": "dash"},
                hovertemplate=f"{c} class threshold: {thr[k]:.3g}%<extra></extra>",
            )
        fig.add_scatter(  # a legend entry for what the dashed lines are
            x=[None], y=[None], mode="lines", name="class threshold", line={"color": "#555", "width": 1, "dash": "dash"}
        )
        fig.update_layout(xaxis_title="slice (0 = first)")
    fig.update_layout(
        title={"text": title, "font": {"size": 13}},
        yaxis={"type": "log", "range": [np.log10(PERCENT_FLOOR), 2.05], "title": "probability (%)"},
        height=320,
        margin={"l": 50, "r": 10, "t": 36, "b": 40},
        legend={"orientation": "h", "y": -0.25},
    )
    return fig


def volume_rows(
    volumes_ml: Mapping[str, float],
    abc2_ml: Mapping[str, float],
    labels: np.ndarray | None = None,
) -> list[list]:
    """Table rows [subtype, mask volume mL, ABC/2 mL, slices] per subtype and a "total" row.

    ``slices`` counts the slices holding the subtype when ``labels`` (S, H, W) is given, else is None.
    """
    rows = []
    for k, c in enumerate([*CLASSES, "total"]):
        n = None
        if labels is not None:
            hit = labels > 0 if c == "total" else labels == k + 1
            n = int(hit.reshape(hit.shape[0], -1).any(1).sum())
        rows.append([c, round(float(volumes_ml.get(c, 0.0)), 3), round(float(abc2_ml.get(c, 0.0)), 3), n])
    return rows


VOLUME_HEADERS = ["subtype", "volume (mL, mask)", "ABC/2 (mL)", "slices"]


def _downsample_factor(shape: Sequence[int], max_side: int) -> int:
    return max(1, int(np.ceil(max(shape[1], shape[2]) / max_side)))


def _surface(mask: np.ndarray, spacing: Sequence[float], step: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Marching-cubes mesh (vertices in mm as (x=col, y=row, z=slice), faces) of a 3D mask, or None if empty."""
    from skimage.measure import marching_cubes

    m = np.pad(np.asarray(mask, np.float32)[:, ::step, ::step], 1)  # padding closes surfaces at the border
    if m.max() <= 0:
        return None
    verts, faces, _, _ = marching_cubes(m, level=0.5, spacing=(spacing[0], spacing[1] * step, spacing[2] * step))
    verts -= np.array([spacing[0], spacing[1] * step, spacing[2] * step])  # undo the padding offset
    return verts[:, [2, 1, 0]], faces


def _has_skimage() -> bool:
    try:
        import skimage.measure  # noqa: F401
    except ImportError:
        return False
    return True


def mesh_figure(
    labels: np.ndarray,
    spacing: Sequence[float],
    head: np.ndarray | None = None,
    max_side: int = 128,
) -> go.Figure:
    """A 3D view of a label volume: one surface per subtype in its colour, optional translucent head outline.

    Surfaces come from marching cubes (scikit-image) when installed, else from plotly's isosurface of a downsampled
    grid. Axes are in mm (x = column, y = row, z = slice); rows grow posterior, so the view is as in the slices.

    Args:
        labels: (S, H, W) label map.
        spacing: (slice, row, col) mm.
        head: optional (S, H, W) bool mask of the head, drawn at 10% opacity for orientation.
        max_side: in-plane size after downsampling (keeps the figure small for the browser).
    """
    labels = np.asarray(labels)
    if labels.ndim != 3 or labels.shape[0] < 2:
        return _empty_figure("3D view needs a series (2 slices or more)")
    step = _downsample_factor(labels.shape, max_side)
    fig = go.Figure()
    use_mc = _has_skimage()
    if head is not None and use_mc:
        surf = _surface(head, spacing, max(step, _downsample_factor(labels.shape, 64)))
        if surf is not None:
            (v, f) = surf
            fig.add_mesh3d(
                x=v[:, 0],
                y=v[:, 1],
                z=v[:, 2],
                i=f[:, 0],
                j=f[:, 1],
                k=f[:, 2],
                opacity=0.08,
                color="#9aa0a6",
                name="head",
                hoverinfo="skip",
                showlegend=True,
            )
    found = 0
    for k, c in enumerate(CLASSES):
        mask = labels == k + 1
        if not mask.any():
            continue
        found += 1
        color = _hex(CLASS_COLORS[c])
        if use_mc:
            surf = _surface(mask, spacing, step)
            if surf is None:
                continue
            v, f = surf
            fig.add_mesh3d(
                x=v[:, 0],
                y=v[:, 1],
                z=v[:, 2],
                i=f[:, 0],
                j=f[:, 1],
                k=f[:, 2],
                color=color,
                opacity=0.85,
                name=c,
                showlegend=True,
                hovertemplate=f"{c}<extra></extra>",
            )
        else:
            sub = mask[:, ::step, ::step].astype(np.float32)
            z, y, x = np.mgrid[: sub.shape[0], : sub.shape[1], : sub.shape[2]]
            fig.add_isosurface(
                x=(x * spacing[2] * step).ravel(),
                y=(y * spacing[1] * step).ravel(),
                z=(z * spacing[0]).ravel(),
                value=sub.ravel(),
                isomin=0.5,
                isomax=1.0,
                surface_count=1,
                colorscale=[[0, color], [1, color]],
                showscale=False,
                opacity=0.85,
                name=c,
                showlegend=True,
            )
    if not found:
        fig.add_annotation(
            text="no hemorrhage in the mask at these thresholds",
            showarrow=False,
            x=0.5,
            y=0.95,
            xref="paper",
            yref="paper",
        )
    fig.update_layout(
        height=480,
        margin={"l": 0, "r": 0, "t": 30, "b": 10},
        legend={"orientation": "h"},
        scene={  # true proportions in mm, few ticks so that the labels stay readable
            "aspectmode": "data",
            "xaxis": {"title": {"text": "left-right (mm)"}, "nticks": 4, "tickfont": {"size": 10}},
            "yaxis": {"title": {"text": "front-back (mm)"}, "nticks": 4, "tickfont": {"size": 10},
                      "autorange": "reversed"},
            "zaxis": {"title": {"text": "slices (mm)"}, "nticks": 4, "tickfont": {"size": 10}},
            "camera": {"eye": {"x": 0.7, "y": -2.2, "z": 1.5}},
        },
    )
    return fig


# ----------------------------------------------------------------------------------------------- LSE pooling
def lse_pool(f: np.ndarray, r: float, mean: bool = True) -> float:
    """LSE_r of one map as the model pools it (METHOD.md): ``log(sum_i exp(r f_i))``, minus ``log(n)`` when ``mean``.

    Same value as ``ichdemo.models.lse_unet.lse_pool`` on one (h, w) map, computed stably in float64.
    """
    x = np.asarray(f, np.float64).ravel() * float(r)
    top = x.max()
    out = top + np.log(np.exp(x - top).sum())
    return float(out - np.log(x.size)) if mean else float(out)


def lse_weights(f: np.ndarray, r: float) -> np.ndarray:
    """d LSE_r / d f divided by r: ``softmax(r f)`` over the positions of a map (sums to 1), shape of ``f``.

    Grad-CAM through LSE weighs each position by this: small r spreads the weight evenly (average pooling), large r
    puts it all on the peak (max pooling).
    """
    x = np.asarray(f, np.float64) * float(r)
    e = np.exp(x - x.max())
    return e / e.sum()


def lse_curve_figure(f: np.ndarray, model_r: float, mean: bool = True, cls: str = "") -> go.Figure:
    """Slice probability sigmoid(LSE_r(f)) as r varies, with the map's mean and max as the r -> 0 / r -> inf limits.

    ``f`` is a signed f_0 map (logit units before the r scaling); the model was trained at ``model_r``.
    """
    rs = np.geomspace(0.05, 50.0, 80)
    pooled = np.array([lse_pool(f, r, mean) / r for r in rs])  # per-unit-r value: between mean(f) and max(f)
    prob = 1.0 / (1.0 + np.exp(-np.array([lse_pool(f, r, mean) for r in rs])))
    fig = go.Figure()
    fig.add_scatter(x=rs, y=pooled, name="LSE_r(f) / r", line={"color": "#1f77b4"})
    fig.add_scatter(x=rs, y=prob, name="sigmoid(LSE_r(f)) = probability", line={"color": "#d62728"}, yaxis="y2")
    fig.add_hline(
        y=float(np.mean(f)),
        line={"dash": "dot", "color": "#1f77b4"},
        annotation_text="mean (r -> 0)",
        annotation_position="bottom left",
    )
    fig.add_hline(
        y=float(np.max(f)),
        line={"dash": "dash", "color": "#1f77b4"},
        annotation_text="max (r -> inf)",
        annotation_position="top left",
    )
    fig.add_vline(
        x=float(model_r),
        line={"color": "#555"},
        annotation_text=f"model r = {model_r:g}",
        annotation_position="bottom right",
    )
    fig.update_layout(
        title={"text": f"LSE pooling of the {cls} map as r varies", "font": {"size": 13}},
        height=320,
        xaxis={"type": "log", "title": "r", "range": [np.log10(rs[0]), np.log10(rs[-1])]},
        yaxis={"title": "pooled map value"},
        yaxis2={"title": "probability", "overlaying": "y", "side": "right", "range": [0, 1]},
        margin={"l": 50, "r": 50, "t": 36, "b": 40},
        legend={"orientation": "h", "y": -0.3},
    )
    return fig
