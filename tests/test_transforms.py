import numpy as np
import pytest

from ichdemo.errors import ConfigError
from ichdemo.transforms import ResizeSpec, prepare, resolve_window, stack_slices, to_unit, window


def test_window_maps_paper_window_to_unit_range():
    hu = np.array([-1000, -40, 25, 90, 2000], dtype=np.float32)
    np.testing.assert_allclose(window(hu, 25, 130), [0, 0, 0.5, 1, 1], atol=1e-6)


def test_presets_and_bad_windows():
    assert resolve_window("brain") == (40.0, 80.0)
    assert resolve_window((10, 20)) == (10.0, 20.0)
    with pytest.raises(ConfigError, match="unknown window preset"):
        resolve_window("lung")
    with pytest.raises(ConfigError, match="positive"):
        resolve_window((40, 0))


def test_prewindowed_is_rescaled_not_windowed():
    grey = np.array([[[0, 127.5, 255]]], dtype=np.float32)
    np.testing.assert_allclose(to_unit(grey, prewindowed=True), [[[0, 0.5, 1]]])


def test_stack_slices_repeats_edges():
    unit = np.arange(4, dtype=np.float32)[:, None, None] * np.ones((1, 2, 2), np.float32)
    st = stack_slices(unit)
    assert st.shape == (4, 3, 2, 2)
    assert st[0, :, 0, 0].tolist() == [0, 0, 1]
    assert st[2, :, 0, 0].tolist() == [1, 2, 3]
    assert st[3, :, 0, 0].tolist() == [2, 3, 3]


@pytest.mark.parametrize("rows,cols,size", [(512, 512, 256), (650, 650, 256), (300, 420, 128), (100, 80, 256)])
def test_resize_round_trip_keeps_shape_and_content(rows, cols, size):
    yy, xx = np.mgrid[:rows, :cols]
    img = np.sin(yy / 25.0) + np.cos(xx / 31.0)  # smooth, so resampling error is small
    spec = ResizeSpec(rows, cols, size)
    model = spec.to_model(img[None])
    assert model.shape == (1, size, size)
    back = spec.to_source(model)
    assert back.shape == (1, rows, cols)
    assert np.abs(back[0, 5:-5, 5:-5] - img[5:-5, 5:-5]).max() < 0.1


def test_letterbox_pads_the_short_side_and_inverse_crops_it():
    spec = ResizeSpec(100, 200, 100)
    assert spec.inner == (50, 100) and spec.offset == (25, 0)
    model = spec.to_model(np.ones((100, 200), np.float32))
    assert model[:25].max() == 0 and model[75:].max() == 0 and model[25:75].min() == 1


def test_label_map_goes_back_exactly_with_nearest():
    labels = np.zeros((64, 64), np.uint8)
    labels[10:30, 20:40] = 3
    spec = ResizeSpec(64, 64, 128)
    up = np.kron(labels, np.ones((2, 2), np.uint8))  # the same labels on the 2x model grid
    back = spec.to_source(up, nearest=True)
    np.testing.assert_array_equal(back, labels)


def test_quarter_resolution_heatmap_maps_to_source_grid():
    spec = ResizeSpec(512, 512, 256)
    heat = np.zeros((5, 64, 64), np.float32)
    heat[2, 16:32, 16:32] = 1.0  # model pixels 64..128 -> source pixels 128..256
    back = spec.to_source(heat)
    assert back.shape == (5, 512, 512)
    ys, xs = np.nonzero(back[2] > 0.5)
    assert abs(ys.min() - 128) <= 4 and abs(ys.max() - 255) <= 4 and abs(xs.mean() - 192) < 2


def test_prepare_shapes():
    hu = np.random.default_rng(0).normal(30, 20, (5, 80, 60)).astype(np.float32)
    x, spec = prepare(hu, prewindowed=False, size=64)
    assert x.shape == (5, 3, 64, 64) and x.dtype == np.float32
    assert 0.0 <= x.min() and x.max() <= 1.0
    assert (spec.rows, spec.cols) == (80, 60)
