"""ichdemo.viz: pictures and figures from plain arrays."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ichdemo import viz
from ichdemo.constants import CLASS_COLORS, CLASSES
from ichdemo.models.lse_unet import lse_pool as torch_lse_pool
from webui.text import legend_html


def test_slice_rgb_applies_the_window():
    hu = np.array([[-1000.0, -40.0], [25.0, 90.0]], np.float32)  # paper window: centre 25, width 130
    rgb = viz.slice_rgb(hu, prewindowed=False, window="paper")
    assert rgb.shape == (2, 2, 3) and rgb.dtype == np.uint8
    assert rgb[0, 0, 0] == 0 and rgb[0, 1, 0] == 0 and rgb[1, 1, 0] == 255
    assert rgb[1, 0, 0] == 128  # the centre maps to 0.5
    grey = viz.slice_rgb(np.array([[0.0, 255.0]]), prewindowed=True, window="bone")  # window ignored
    assert grey[0, :, 1].tolist() == [0, 255]


def test_colormap_and_heatmap_overlay():
    m = np.tile(np.arange(0, 256, 16, dtype=np.uint8), (4, 1))
    rgb = viz.colormap(m)
    assert rgb.shape == m.shape + (3,)
    assert not np.array_equal(rgb[0, 0], rgb[0, -1])
    with pytest.raises(ValueError, match="unknown colormap"):
        viz.colormap(m, "rainbowish")
    base = np.full((4, 16, 3), 100, np.uint8)
    out = viz.heatmap_overlay(base, np.zeros((4, 16)), opacity=0.9)
    assert np.array_equal(out, base)  # an empty map leaves the slice untouched
    out = viz.heatmap_overlay(base, m, opacity=1.0)
    assert np.array_equal(out[:, 0], base[:, 0])  # map 0 -> untouched
    a = 0.25 + 0.75 * 240 / 255  # alpha grows with the map value
    assert np.array_equal(out[:, -1], np.round(100 * (1 - a) + rgb[:, -1] * a).astype(np.uint8))


def test_outline_of_a_square():
    mask = np.zeros((7, 7), bool)
    mask[1:6, 1:6] = True
    edge = viz.outline(mask)
    assert edge.sum() == 16  # 5x5 square: 25 - 9 interior
    assert not edge[3, 3] and edge[1, 1] and edge[1, 3]


def test_label_overlay_colours_fill_and_outline():
    base = np.full((9, 9, 3), 50, np.uint8)
    lab = np.zeros((9, 9), np.uint8)
    lab[2:7, 2:7] = 4  # SDH
    out = viz.label_overlay(base, lab, opacity=0.5)
    sdh = np.array(CLASS_COLORS["SDH"])
    assert np.array_equal(out[0, 0], base[0, 0])  # normal pixels untouched
    assert np.array_equal(out[2, 2], sdh)  # outline in the full colour
    assert np.array_equal(out[4, 4], np.round(50 * 0.5 + sdh * 0.5).astype(np.uint8))  # filled at 50 %
    with pytest.raises(ValueError, match="does not match"):
        viz.label_overlay(base, lab[:5])


def test_legend_html_lists_every_subtype_with_its_colour():
    html = legend_html({"IPH": 1.5, "SDH": 0.0}, present=["IPH"])
    for c in CLASSES:
        assert f">{c}" in html
        assert "#{:02x}{:02x}{:02x}".format(*CLASS_COLORS[c]) in html
    assert "IPH 1.50 mL" in html and "opacity:0.35" in html


def test_agreement_codes_cover_every_case():
    a = np.array([[0, 1, 1, 2, 0]], np.uint8)
    b = np.array([[0, 1, 0, 3, 2]], np.uint8)
    c = np.array([[0, 1, 1, 2, 0]], np.uint8)
    codes = viz.agreement_codes([a, b, c])
    assert codes.tolist() == [[0, 1, 2, 3, 2]]
    assert viz.agreement_codes([a]).tolist() == [[0, 1, 1, 1, 0]]
    with pytest.raises(ValueError):
        viz.agreement_codes([])
    rgb = viz.agreement_overlay(np.zeros((1, 5, 3), np.uint8), codes)
    assert np.array_equal(rgb[0, 0], [0, 0, 0]) and np.array_equal(rgb[0, 3], viz.AGREEMENT_CODES[3][1])


def test_dice_and_agreement_rows():
    a = np.zeros((2, 4, 4), np.uint8)
    b = a.copy()
    a[0, :2, :2] = 1  # 4 voxels IPH
    b[0, :2, :2] = 2  # same voxels, IVH
    rows = viz.agreement_rows({"A": a, "B": b})
    assert rows == [["A", "B", 1.0, 0.0, round(28 / 32, 4)]]
    b[0, 0, :2] = 0  # B drops 2 of the 4 voxels: any-hemorrhage Dice 2*2/(4+2)
    b[1, 3, 3] = 1  # and adds one IPH voxel A lacks: IPH Dice 0, IVH Dice 0, mean 0
    assert viz.agreement_rows({"A": a, "B": b})[0][2:] == [round(4 / 7, 3), 0.0, round(27 / 32, 4)]
    assert viz.agreement_rows({"A": a, "B": np.zeros_like(a)})[0][2:] == [0.0, 0.0, round(28 / 32, 4)]
    assert viz.agreement_rows({"A": b * 0, "B": np.zeros_like(a)})[0][2:] == [None, None, 1.0]


def test_probability_figure_series_and_single_slice():
    probs = np.linspace(0, 1, 20).reshape(4, 5)
    fig = viz.probability_figure(probs, [0.1, 0.2, 0.3, 0.4, 0.00003], title="m")
    assert len(fig.data) == 11  # a curve and a threshold line per subtype, and the legend's dashed line
    assert list(fig.data[1].y) == [10, 10] and list(fig.data[9].y) == pytest.approx([0.003, 0.003])  # percent
    assert fig.data[0].line.color == "#{:02x}{:02x}{:02x}".format(*CLASS_COLORS["IPH"])
    assert fig.data[1].line.dash == "dash" and fig.data[10].line.dash == "dash"  # what the legend says is drawn
    assert fig.data[10].name == "class threshold" and fig.data[10].showlegend is not False
    assert fig.layout.yaxis.type == "log"
    one = viz.probability_figure(probs[:1], [0.5] * 5)
    assert one.data[0].type == "bar" and list(one.data[0].x) == list(CLASSES)
    with pytest.raises(ValueError):
        viz.probability_figure(np.zeros((3, 4)), [0.5] * 5)


def test_volume_rows():
    lab = np.zeros((3, 4, 4), np.uint8)
    lab[0, 0, :2] = 1
    lab[2, 1, 1] = 1
    lab[1, 2, 2] = 5
    rows = viz.volume_rows({"IPH": 1.23456, "EDH": 2.0, "total": 3.23456}, {"IPH": 4.0, "total": 5.0}, lab)
    assert rows[0] == ["IPH", 1.235, 4.0, 2]
    assert rows[4] == ["EDH", 2.0, 0.0, 1]
    assert rows[5] == ["total", 3.235, 5.0, 3]
    assert len(rows[0]) == len(viz.VOLUME_HEADERS)


def test_mesh_figure_marching_cubes_extent():
    lab = np.zeros((6, 20, 20), np.uint8)
    lab[1:5, 5:15, 4:10] = 2  # IVH box: 4 slices x 10 rows x 6 cols
    spacing = (5.0, 1.0, 0.5)
    fig = viz.mesh_figure(lab, spacing, head=lab > 0)
    meshes = [d for d in fig.data if d.name == "IVH"]
    assert len(meshes) == 1 and meshes[0].type == "mesh3d"
    x, y, z = (np.asarray(getattr(meshes[0], a)) for a in "xyz")
    # the surface at level 0.5 lies half a voxel outside the voxel centres
    assert x.min() == pytest.approx(3.5 * 0.5) and x.max() == pytest.approx(9.5 * 0.5)
    assert y.min() == pytest.approx(4.5) and y.max() == pytest.approx(14.5)
    assert z.min() == pytest.approx(0.5 * 5) and z.max() == pytest.approx(4.5 * 5)
    assert meshes[0].color == "#{:02x}{:02x}{:02x}".format(*CLASS_COLORS["IVH"])


def test_mesh_figure_fallback_and_single_slice(monkeypatch):
    lab = np.zeros((3, 8, 8), np.uint8)
    lab[1, 2:5, 2:5] = 1
    monkeypatch.setattr(viz, "_has_skimage", lambda: False)
    fig = viz.mesh_figure(lab, (1.0, 1.0, 1.0))
    assert [d.type for d in fig.data] == ["isosurface"]
    flat = viz.mesh_figure(lab[:1], (1.0, 1.0, 1.0))
    assert not flat.data and "needs a series" in flat.layout.annotations[0].text


def test_lse_pool_matches_the_model_and_its_limits():
    rng = np.random.default_rng(0)
    f = rng.normal(size=(8, 8)).astype(np.float32)
    for r in (0.5, 3.0, 10.0):
        expected = torch_lse_pool(torch.from_numpy(f)[None, None], r, mean=True).item()
        assert viz.lse_pool(f, r) == pytest.approx(expected, rel=1e-5)
        assert viz.lse_pool(f, r, mean=False) == pytest.approx(expected + np.log(64), rel=1e-5)
    assert viz.lse_pool(f, 1e-4) / 1e-4 == pytest.approx(f.mean(), abs=1e-3)  # r -> 0: average pooling
    assert viz.lse_pool(f, 500.0) / 500.0 == pytest.approx(f.max(), abs=1e-2)  # r -> inf: max pooling


def test_lse_weights_concentrate_with_r():
    f = np.zeros((4, 4))
    f[1, 2] = 1.0
    w_small, w_large = viz.lse_weights(f, 0.01), viz.lse_weights(f, 50.0)
    assert w_small.sum() == pytest.approx(1.0) and w_large.sum() == pytest.approx(1.0)
    assert w_small.max() - w_small.min() < 1e-3
    assert w_large[1, 2] > 0.99
    fig = viz.lse_curve_figure(f, 3.0, cls="IPH")
    pooled = np.asarray(fig.data[0].y)
    assert pooled[0] == pytest.approx(f.mean(), abs=0.01) and pooled[-1] == pytest.approx(1.0, abs=0.06)
    assert np.all(np.diff(pooled) >= -1e-12)  # LSE_r / r grows with r
