"""predict: library path and CLI, on phantoms with tiny untrained models (correctness of plumbing, not accuracy)."""

import json

import nibabel as nib
import numpy as np
import pytest

from ichdemo.cli import main
from ichdemo.io import load_volume
from ichdemo.io.dicom_write import write_dicom_series
from ichdemo.models import create_model
from ichdemo.models.checkpoint import save_pretrained
from ichdemo.pipeline import analyze, load_model, save
from ichdemo.quantify import Thresholds, volumes_ml


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    out = {}
    for name in ("lse_unet_mobilenetv3_small_050", "gap_mobilenetv3_small_050", "gap_tf_efficientnet_lite0"):
        model = create_model(name, pretrained=False)
        out[name] = save_pretrained(model, root / name, {"input_size": [3, 64, 64]})
    fg = create_model("lse_unet_mobilenetv3_small_050", pretrained=False, pool_region="foreground", lse_mean=False)
    out["lse_foreground"] = save_pretrained(fg, root / "lse_foreground", {"input_size": [3, 64, 64]})
    return out


@pytest.fixture(scope="module")
def series(tmp_path_factory):
    rng = np.random.default_rng(0)
    hu = rng.normal(30, 10, (5, 48, 40)).astype(np.float32)
    hu[:, 10:20, 10:20] = 70  # a bright block, so heatmaps are not flat
    folder = tmp_path_factory.mktemp("series")
    write_dicom_series(hu, (5.0, 0.8, 0.8), folder)
    return folder


@pytest.mark.parametrize("name", ["lse_unet_mobilenetv3_small_050", "gap_mobilenetv3_small_050"])
def test_analyze_shapes_and_native_resolution(tiny_models, series, name):
    lm = load_model(tiny_models[name])
    vol = load_volume(series)
    a = analyze(lm, vol, batch_size=2)
    assert a.probs.shape == (5, 5) and np.all((a.probs >= 0) & (a.probs <= 1))
    assert a.maps255.shape == (5, 5, 48, 40) and a.maps255.dtype == np.uint8
    native = 64 // 4 if name.startswith("lse") else 64 // 32
    assert a.native.shape == (5, 5, native, native)
    assert lm.cfg.heatmap_size == native


def test_thresholds_change_labels_without_the_network(tiny_models, series):
    lm = load_model(tiny_models["lse_unet_mobilenetv3_small_050"])
    a = analyze(lm, load_volume(series))
    everything = Thresholds(class_thresholds=(0.0,) * 5, mask_thresholds=(0.0,) * 5)
    nothing = Thresholds(class_thresholds=(1.0,) * 5, mask_thresholds=(0.0,) * 5)
    assert (a.labels(nothing) == 0).all() and (a.labels(nothing, refined=False) == 0).all()
    lab = a.labels(everything, refined=False)
    assert (lab > 0).mean() > 0.5  # every gated map above 0 somewhere wins a class


def test_outputs_on_the_source_grid(tiny_models, series, tmp_path):
    lm = load_model(tiny_models["lse_unet_mobilenetv3_small_050"])
    vol = load_volume(series)
    a = analyze(lm, vol)
    t = Thresholds(class_thresholds=(0.0,) * 5, mask_thresholds=(100.0,) * 5)
    saved = save(a, vol, tmp_path, t)
    paths = saved.files
    img = nib.load(paths["labels"])
    np.testing.assert_allclose(img.affine, vol.affine, atol=1e-4)
    labels = np.asarray(img.dataobj).transpose(2, 1, 0)
    np.testing.assert_array_equal(labels, a.labels(t))
    report = json.loads(paths["report"].read_text())
    assert report == json.loads(json.dumps(saved.report))  # what save returns is what it wrote
    assert report["volumes_ml"] == pytest.approx(volumes_ml(labels, vol.spacing))
    assert report["thresholds"]["mask_thresholds"] == [100.0] * 5
    assert "not a diagnosis" in report["notice"]
    assert len(report["slices"]) == 5
    with np.load(paths["heatmaps"]) as z:
        assert z["IPH"].shape == (5, 48, 40) and z["IPH"].dtype == np.float16
    assert not list(tmp_path.glob(".*part")) and not list(tmp_path.glob(".*.nii.gz"))


def test_cli_predict_image_writes_label_pngs(tiny_models, tmp_path, capsys):
    import cv2

    img = np.zeros((50, 60), np.uint8)
    img[20:30, 20:30] = 200
    cv2.imwrite(str(tmp_path / "slice7.png"), img)
    rc = main(["predict", str(tmp_path / "slice7.png"), "--model", str(tiny_models["gap_mobilenetv3_small_050"]),
               "--out", str(tmp_path / "out"), "--class-thresholds", "0,0,0,0,0"])
    assert rc == 0
    png = cv2.imread(str(tmp_path / "out" / "labels" / "slice7.png"), cv2.IMREAD_UNCHANGED)
    assert png.shape == (50, 60) and png.max() <= 5


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--model", "no_such_model"], "unknown model 'no_such_model'"),
        (["--class-thresholds", "0.5,0.5"], "need 5 comma-separated class thresholds"),
        (["--mask-thresholds", "1,2,3,4,999"], "255"),
    ],
)
def test_cli_predict_bad_options_fail_with_one_line(tiny_models, series, tmp_path, capsys, extra, message):
    args = ["predict", str(series), "--out", str(tmp_path / "o")]
    if "--model" not in extra:
        args += ["--model", str(tiny_models["gap_mobilenetv3_small_050"])]
    rc = main(args + extra)
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err and err.startswith("error: ")
    assert message in err


def test_cli_predict_unreadable_input(tiny_models, tmp_path, capsys):
    bad = tmp_path / "notes.dcm"
    bad.write_text("hello, I am not a DICOM file")
    rc = main(["predict", str(bad), "--model", str(tiny_models["gap_mobilenetv3_small_050"]), "--out", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("error: ") and "\n" not in err


@pytest.mark.parametrize("name", ["lse_unet_mobilenetv3_small_050", "lse_foreground", "gap_tf_efficientnet_lite0"])
def test_onnx_runtime_matches_torch(tiny_models, series, name, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    vol = load_volume(series)
    ref = analyze(load_model(tiny_models[name]), vol)
    lm = load_model(tiny_models[name], runtime="onnx")
    got = analyze(lm, vol)
    assert lm.describe()["runtime"] == "onnx"
    assert list((tmp_path / "cache" / "ichdemo" / "onnx").glob("*.onnx"))  # exported once, cached
    np.testing.assert_allclose(got.probs, ref.probs, atol=1e-3)
    np.testing.assert_allclose(got.native.astype(np.float32), ref.native.astype(np.float32), atol=1e-3, rtol=1e-2)
    assert np.abs(got.maps255.astype(int) - ref.maps255.astype(int)).max() <= 2


def test_onnx_runtime_refuses_a_gap_model_without_a_closed_form_cam(tiny_models, tmp_path, monkeypatch):
    from ichdemo.errors import ModelError

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    with pytest.raises(ModelError, match="no closed form"):  # mobilenetv3 has a conv head after pooling
        load_model(tiny_models["gap_mobilenetv3_small_050"], runtime="onnx")
