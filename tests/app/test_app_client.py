"""The app served on 127.0.0.1 and driven through gradio_client, as a script user would."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import cv2
import nibabel as nib
import numpy as np
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError

from ichdemo.constants import CLASSES, RESEARCH_NOTICE

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def client(app_url):
    return Client(app_url, verbose=False)


VIEW = ("brain", 0.45, 0.5, False, True)  # window, mask opacity, heatmap opacity, native grid, refine


def _view(client, refs, ref, index=4):
    return client.predict(refs, ref, index, *VIEW, api_name="/render")


def test_named_endpoints(client):
    """The documented API is the stateless one (plain values in); the session's steps stay callable, undocumented."""
    api = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
    assert set(api) == {"/predict", "/export", "/teach", "/edit"}
    params = {name: [p["parameter_name"] for p in api[name]["parameters"]] for name in api}
    assert params["/predict"] == ["files", "models", "class_thresholds", "mask_thresholds"]
    assert params["/export"] == ["files", "model", "formats", "class_thresholds", "mask_thresholds"]
    assert params["/teach"] == ["files", "models", "index", "cls", "r"]
    assert params["/edit"][-5:] == ["action", "subtype", "mask", "row", "col"]  # a correction of the loaded series
    # the session steps (/load, /analyze, /render, /set_thresholds, /session_export...) are called in the tests below


def test_upload_analyze_threshold_export(client, phantom_series, tiny_models):
    files, phantom = phantom_series
    info = client.predict([handle_file(str(f)) for f in files], "auto", "", False, api_name="/load")
    assert f"{phantom.shape[0]} slice(s)" in info

    refs = [tiny_models["lse"], tiny_models["gap"]]
    out = client.predict(refs, None, *VIEW, api_name="/analyze")  # the last of its streamed results
    status, picked, sliders, view = out[0], out[2], out[4:14], out[14:]
    assert status == "Ran 2 of 2 model(s).", status
    assert picked["value"] == tiny_models["lse"]
    assert list(sliders) == [50.0] * 5 + [75.0, 125.0, 125.0, 75.0, 25.0]  # calibrated defaults, class ones in %
    truth, legend, curves, agree_table, table = view[4:]
    assert truth["visible"] is False  # no known truth for an upload
    assert "IPH" in legend and curves is not None and table["data"][-1][0] == "total"
    assert agree_table["data"][0][:2] == ["lse_tiny", "gap_tiny"]

    overlay, raw, gallery, agree, _truth = _view(client, refs, tiny_models["lse"])  # slice 4: range set
    assert Path(raw).is_file()  # the paper's raw Algorithm 1 beside the refined draft
    assert Path(overlay).is_file() and Path(agree).is_file()
    assert len(gallery) == 2  # one labelled strip per model
    assert gallery[0]["caption"].startswith("lse_tiny (lse_unet, native 16x16)")
    assert gallery[1]["caption"].startswith("gap_tiny (gap, native 2x2)")

    closed = client.predict(
        refs, tiny_models["lse"], 4, *VIEW, *[100.0] * 5, *[0] * 5, api_name="/set_thresholds"
    )
    assert closed[-1]["data"][-1][:2] == ["total", 0.0]
    everything = client.predict(
        refs, tiny_models["lse"], 4, "brain", 0.45, 0.5, False, False, *[0.0] * 5, *[0] * 5, api_name="/set_thresholds"
    )  # every pixel a hemorrhage, air included: more than the skull holds, flagged instead of printed
    assert everything[-1]["data"][-1][:3] == ["total", "not plausible", "not plausible"]
    assert "exceeds the intracranial volume" in everything[5]  # the legend
    opened = client.predict(
        *(refs, tiny_models["lse"], 4, "brain", 0.45, 0.5, False, False), *[0.0] * 5, *[200] * 5,
        api_name="/set_thresholds",
    )
    total_ml = opened[-1]["data"][-1][1]
    assert total_ml > 0
    assert not np.array_equal(_png(closed[0]), _png(opened[0]))  # the overlay follows the thresholds

    zpath, note = client.predict(tiny_models["lse"], ["nifti"], api_name="/session_export")
    assert "lse_tiny" in note
    with zipfile.ZipFile(zpath) as zf:
        names = set(zf.namelist())
        draft = zf.read("DRAFT.txt").decode()
        report = json.loads(zf.read("prediction/report.json"))
    assert {"DRAFT.txt", "prediction/labels.nii.gz", "prediction/report.json"} <= names
    assert any(n.startswith("formats/nifti/") for n in names)
    assert RESEARCH_NOTICE in draft and "class thresholds (IPH,IVH,SAH,SDH,EDH): 0, 0, 0, 0, 0" in draft
    assert report["volumes_ml"]["total"] == pytest.approx(total_ml, abs=1e-3)

    reset = client.predict(tiny_models["lse"], api_name="/reset_thresholds")
    assert list(reset) == [50.0] * 5 + [75.0, 125.0, 125.0, 75.0, 25.0]


def test_teach_endpoint(client, tiny_models):
    maps, rmaps, _, _, note, steps, notes = client.predict(
        3, "paper", "IPH", tiny_models["gap"], tiny_models["lse"], 3.0, api_name="/session_teach"
    )
    assert len(maps) == 4 and len(rmaps) == 3 and len(steps) == 6
    assert "HLoss" in note and "UNTRAINED" in notes


def test_stateless_export_and_teach(client, phantom_series):
    files = [handle_file(str(f)) for f in phantom_series[0]]
    zpath, note = client.predict(files, "lse_tiny", "nifti,dicom-seg", "0,0,0,0,0", "25,25,25,25,25",
                                 api_name="/export")
    assert "lse_tiny" in note
    with zipfile.ZipFile(zpath) as zf:
        names = set(zf.namelist())
        report = json.loads(zf.read("prediction/report.json"))
    assert any(n.startswith("formats/nifti/") for n in names) and any(n.startswith("formats/dicom-seg/") for n in names)
    assert report["thresholds"]["mask_thresholds"] == [25.0] * 5
    pictures, notes = client.predict(files, "gap_tiny,lse_tiny", 3, "SDH", 3.0, api_name="/teach")
    assert len(pictures) == 4 + 3 + 6 and "LSE-UNet (lse_tiny)" in notes and "Grad-CAM (gap_tiny)" in notes
    with pytest.raises(AppError, match="unknown export format"):
        client.predict(files, "lse_tiny", "nope", api_name="/export")


def test_predict_endpoint_returns_report_and_label_maps(client, phantom_series):
    files, phantom = phantom_series
    report, labels = client.predict([handle_file(str(f)) for f in files], "lse_tiny,gap_tiny_b", api_name="/predict")
    assert set(report["models"]) == {"lse_tiny", "gap_tiny_b"} and report["notice"] == RESEARCH_NOTICE
    assert [Path(p).name for p in labels] == ["lse_tiny_labels.nii.gz", "gap_tiny_b_labels.nii.gz"]
    assert nib.load(labels[0]).shape == phantom.shape[::-1]
    with pytest.raises(AppError, match="unknown model 'nope'"):
        client.predict([handle_file(str(files[0]))], "nope", api_name="/predict")
    closed, labels = client.predict([handle_file(str(f)) for f in files], "lse_tiny", "1,1,1,1,1", "0,0,0,0,0",
                                    api_name="/predict")  # thresholds as plain values: every class gate closed
    assert closed["models"]["lse_tiny"]["thresholds"]["class_thresholds"] == [1.0] * 5
    assert not np.asarray(nib.load(labels[0]).dataobj).any()
    with pytest.raises(AppError, match="need 5 comma-separated mask thresholds"):
        client.predict([handle_file(str(files[0]))], "lse_tiny", "", "1,2", api_name="/predict")


def test_bad_upload_is_a_message_and_the_server_keeps_serving(client, tmp_path, phantom_series):
    bad = tmp_path / "broken.dcm"
    bad.write_bytes(b"definitely not DICOM")
    with pytest.raises(AppError, match="not a DICOM file"):
        client.predict([handle_file(str(bad))], "auto", "", False, api_name="/load")
    info = client.predict([handle_file(str(f)) for f in phantom_series[0]], "auto", "", False, api_name="/load")
    assert "slice(s)" in info


def test_app_without_models_starts_and_says_so(app_module):
    from ichdemo.catalogue import NO_MODEL_HELP, ModelPool

    demo = app_module.build_demo(ModelPool([]))
    texts = [getattr(b, "value", None) for b in demo.blocks.values()]
    assert any(isinstance(t, str) and NO_MODEL_HELP in t for t in texts)


def test_cli_help(tmp_path):
    out = subprocess.run(
        [sys.executable, str(REPO / "app.py"), "--help"],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO,
        timeout=120,
        env={
            "PATH": "/usr/bin:/bin",
            "GRADIO_ANALYTICS_ENABLED": "False",
            "HOME": str(tmp_path),
            "HF_HUB_OFFLINE": "1",
        },
    )
    assert out.returncode == 0, out.stderr
    for flag in ("--host", "--port", "--share", "--models", "--max-file-size"):
        assert flag in out.stdout


def _png(path: str) -> np.ndarray:
    import cv2

    return cv2.imread(path)


def test_upload_limit_and_queue_settings(app_url, app_module):
    import httpx

    from ichdemo.catalogue import ModelPool

    cfg = httpx.get(app_url + "config", timeout=30).json()
    assert cfg["max_file_size"] == 1 << 30  # launch_options: "1gb"
    deps = {d.get("api_name"): d for d in cfg["dependencies"]}
    assert deps["render"]["trigger_mode"] == deps["set_thresholds"]["trigger_mode"] == "always_last"
    assert deps["render"]["queue"] is False and deps["set_thresholds"]["queue"] is False  # no queue round trip
    fns = {f.api_name: f for f in app_module.build_demo(ModelPool([])).fns.values()}
    network = {name for name, f in fns.items() if f.concurrency_id == "network"}
    assert {"analyze", "teach", "predict"} <= network  # one queue for everything that runs a network...
    # ...two at a time: a second visitor's small series is not stuck behind a first one's large series
    assert all(fns[n].concurrency_limit == app_module.CONCURRENCY == 2 for n in network)
    assert "render" not in network


def test_session_end_removes_the_temp_folder(tmp_path):
    from webui import callbacks

    class Request:  # what gr.Request offers the unload callback
        session_hash = "abc123"

    s = callbacks._session(None, Request())
    folder = s.folder
    assert folder.is_dir()
    callbacks._end_session(Request())
    assert not folder.exists() and "abc123" not in callbacks._SESSIONS
    t = callbacks._session(None)
    other = t.folder
    callbacks._drop_state(t)  # gr.State's delete_callback (tab closed for an hour, or time_to_live)
    assert not other.exists()
    callbacks._drop_state(None)  # a state never filled


def test_several_images_uploaded_together_are_one_series(client):
    """Gradio stores every uploaded file in a folder of its own; the images are one stack all the same."""
    jpgs = sorted((REPO / "examples" / "ctich").glob("*.jpg"))[:3]
    info = client.predict([handle_file(str(f)) for f in jpgs], "ctich", "", False, api_name="/load")
    assert "3 slice(s)" in info, info
    report, _ = client.predict([handle_file(str(f)) for f in jpgs], "lse_tiny", api_name="/predict")
    assert report["models"]["lse_tiny"]["input"]["slices"] == 3


def test_corrections_through_the_edit_endpoint_reach_the_export(client, phantom_series, tiny_models, tmp_path):
    """Paint one slice, clear another and undo it, declare a third normal: the export holds exactly that, and its
    report says per slice what a person did."""
    from ichdemo.export.nifti import labels_from_nifti
    from ichdemo.io import load_volume

    files, phantom = phantom_series
    client.predict([handle_file(str(f)) for f in files], "auto", "", False, api_name="/load")
    lse = tiny_models["lse"]
    client.predict([lse], None, *VIEW, api_name="/analyze")
    brush = np.zeros(phantom.shape[1:], np.uint8)
    brush[10:20, 30:40] = 255
    png = tmp_path / "brush.png"
    cv2.imwrite(str(png), brush)

    def edit(index: int, action: str, subtype: str = "IPH", mask: Path | None = None) -> list:
        upload = handle_file(str(mask)) if mask else None
        return client.predict([lse], lse, index, *VIEW, action, subtype, upload, -1, -1, api_name="/edit")

    out = edit(2, "paint", "SDH", png)
    assert "Reviewed 1 of 8 slices" in out[6]  # the legend
    edit(3, "clear")
    jumped = edit(0, "undo")  # from slice 0: the undo goes to slice 3, and the view with it, heatmaps included
    assert jumped[0]["value"] == 3 and len(jumped[3]) == 1 and "lse_tiny" in jumped[3][0]["caption"]
    edit(5, "no-hemorrhage")
    zpath, _ = client.predict(lse, ["nifti", "dicom-seg"], api_name="/session_export")
    with zipfile.ZipFile(zpath) as zf:
        zf.extractall(tmp_path / "draft")
        draft_txt = zf.read("DRAFT.txt").decode()
    report = json.loads((tmp_path / "draft" / "prediction" / "report.json").read_text())
    vol = load_volume([str(f) for f in files])
    labels = labels_from_nifti(tmp_path / "draft" / "prediction" / "labels.nii.gz", vol)
    assert (labels[2][brush > 0] == 4).all()  # SDH exactly where painted
    assert not labels[5].any()
    import highdicom as hd  # the DICOM SEG carries the same labels, edits included

    seg = hd.seg.segread(next((tmp_path / "draft" / "formats" / "dicom-seg").glob("*.dcm")))
    numbers = {int(d.SegmentNumber): d.SegmentLabel for d in seg.SegmentSequence}
    pixels = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=vol.dicom.sop_instance_uids, combine_segments=True, skip_overlap_checks=True
    )
    back = np.vectorize(lambda n: 0 if n == 0 else CLASSES.index(numbers[n]) + 1)(pixels).astype(np.uint8)
    np.testing.assert_array_equal(back, labels)
    assert report["review"]["slices"][2:6] == ["edited", "draft", "draft", "no-hemorrhage"]
    assert "2 of 8 slices edited or reviewed by a person" in draft_txt
    # re-open: the CT with the exported labels and report beside it brings the review back, slice by slice
    pred = tmp_path / "draft" / "prediction"
    info = client.predict([handle_file(str(f)) for f in [*files, pred / "labels.nii.gz", pred / "report.json"]],
                          "auto", "", False, api_name="/load")
    assert "8 slice(s)" in info and "Labels re-opened from labels.nii.gz: 2 of 8 slices" in info, info
    client.predict([lse], None, *VIEW, api_name="/analyze")
    zpath, _ = client.predict(lse, ["nifti"], api_name="/session_export")
    with zipfile.ZipFile(zpath) as zf:
        again = json.loads(zf.read("prediction/report.json"))["review"]["slices"]
        zf.extract("prediction/labels.nii.gz", tmp_path / "again")
    assert again == report["review"]["slices"]
    back = labels_from_nifti(tmp_path / "again" / "prediction" / "labels.nii.gz", vol)
    np.testing.assert_array_equal(back[[2, 5]], labels[[2, 5]])
    edit(2, "revert")  # the labels alone (saved again, as a person would), over the series on screen, bring it back
    later = tmp_path / "later"
    later.mkdir()
    shutil.copyfile(pred / "labels.nii.gz", later / "labels-reviewed.nii.gz")
    (later / "report.json").write_text((pred / "report.json").read_text() + "\n")
    info = client.predict([handle_file(str(later / "labels-reviewed.nii.gz")), handle_file(str(later / "report.json"))],
                          "auto", "", False, api_name="/load")
    assert "Labels re-opened" in info and "2 of 8 slices" in info
    assert "Reviewed 3 of 8 slices" in edit(0, "accept")[6]  # slices 2 and 5 back, and 0 now
    with pytest.raises(AppError, match="paint needs a mask image"):
        edit(1, "paint", "IPH")
    with pytest.raises(AppError, match="unknown edit 'smudge'"):
        edit(1, "smudge")
