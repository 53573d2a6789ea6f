"""ichdemo.session: the logic behind every app callback, without a UI."""

from __future__ import annotations

import json
import os
import stat
import zipfile

import cv2
import nibabel as nib
import numpy as np
import pytest

import ichdemo.pipeline
from ichdemo.api import ScratchFolders, analyze_files
from ichdemo.catalogue import NO_MODEL_HELP, UNTRAINED, ModelPool
from ichdemo.constants import CLASSES, RESEARCH_NOTICE
from ichdemo.errors import CorruptInputError, ModelError, UnsupportedInputError
from ichdemo.examples import PhantomExamples
from ichdemo.quantify import volumes_ml
from ichdemo.session import Session
from ichdemo.teach import explain_slice
from ichdemo.viz import PERCENT_FLOOR
from webui.text import info_markdown, status_markdown

SMALL_SHAPE = (8, 96, 96)  # the conftest's phantom grid (checked below)


@pytest.fixture(scope="module")
def pool(tiny_models):
    return ModelPool([tiny_models[k] for k in ("lse", "gap", "gap2", "lse_hl", "lse_nohl")] + ["/no/such/model"])


@pytest.fixture(scope="module")
def analysed(pool, tiny_models, phantom_series, tmp_path_factory):
    """A session with the phantom loaded and lse + gap run once (shared: tests below only read or re-threshold).
    Algorithm 1's raw drafts: these tests are about thresholds (tests/test_pipeline.py covers the refinement)."""
    s = Session(base_dir=str(tmp_path_factory.mktemp("sessions")), refined=False)
    s.load_files(phantom_series[0])
    s.analyze(pool, [tiny_models["lse"], tiny_models["gap"]])
    yield s
    s.cleanup()


# ------------------------------------------------------------------------------------------------ models
def test_fixture_grid(phantom_series):
    assert phantom_series[1].shape == SMALL_SHAPE


def test_pool_describes_models_from_their_config(pool, tiny_models):
    lse, gap, gap2 = (pool.infos[tiny_models[k]] for k in ("lse", "gap", "gap2"))
    assert (lse.family, lse.cfg.input_size, lse.cfg.heatmap_size, lse.cfg.lse_r) == ("lse_unet", 64, 16, 3.0)
    assert (gap.family, gap.cfg.heatmap_size, gap.cfg.lse_r) == ("gap", 2, None)
    assert UNTRAINED in lse.label and "heatmap 16x16" in lse.label
    assert gap2.trained and UNTRAINED not in gap2.label  # it has a provenance entry
    assert "/no/such/model" in pool.errors and "/no/such/model" not in pool.refs
    assert "could not use `/no/such/model`" in status_markdown(pool)
    assert pool.find("lse_unet", hloss=False) == [tiny_models["lse_nohl"]]
    assert pool.find("lse_unet", hloss=True) == [tiny_models["lse_hl"]]


def test_default_selection_is_one_lse_and_two_gap(pool, tiny_models):
    assert pool.default_selection() == [tiny_models["lse"], tiny_models["gap"], tiny_models["gap2"]]


def test_models_load_once_per_process(pool, tiny_models):
    a = pool.get(tiny_models["gap"])
    assert pool.get(tiny_models["gap"]) is a
    with pytest.raises(ModelError, match="not available"):
        pool.get("/no/such/model")


def test_no_model_at_all_is_explained(phantom_series, tmp_path):
    empty = ModelPool([])
    assert empty.refs == [] and empty.default_selection() == []
    assert NO_MODEL_HELP in status_markdown(empty) and "ICHDEMO_MODELS" in NO_MODEL_HELP
    s = Session(base_dir=str(tmp_path))
    s.load_files(phantom_series[0])  # a series can still be loaded and browsed
    assert s.overlay(None, 3).shape == SMALL_SHAPE[1:] + (3,)
    with pytest.raises(UnsupportedInputError, match="No trained model"):
        s.analyze(empty, [])


def test_pool_finds_models_by_name(pool, tiny_models):
    assert pool.by_name("lse_tiny, gap_tiny") == [tiny_models["lse"], tiny_models["gap"]]
    assert pool.by_name([tiny_models["gap2"]]) == [tiny_models["gap2"]]
    assert pool.by_name("") == []
    with pytest.raises(ModelError, match="unknown model 'nope'"):
        pool.by_name("nope")


# ------------------------------------------------------------------------------------------------ session
def test_load_gives_info_and_resets(phantom_series, tmp_path):
    s = Session(base_dir=str(tmp_path))
    s.load_files(phantom_series[0])
    info = info_markdown(s.volume)
    assert f"{SMALL_SHAPE[0]} slice(s) of {SMALL_SHAPE[2]} x {SMALL_SHAPE[1]} px" in info
    assert s.clamp_index(99) == SMALL_SHAPE[0] - 1 and s.clamp_index(-3) == 0 and s.clamp_index(None) == 4
    with pytest.raises(UnsupportedInputError, match="empty upload"):
        s.load_files([])
    bad = tmp_path / "scan.dcm"
    bad.write_text("not a dicom")
    with pytest.raises(CorruptInputError, match="not a DICOM file"):
        s.load_files([str(bad)])


def test_analyze_runs_each_model_once(analysed, pool, tiny_models, monkeypatch):
    s = analysed
    assert set(s.analyses) == {tiny_models["lse"], tiny_models["gap"]}
    a = s.analyses[tiny_models["lse"]]
    assert a.probs.shape == (SMALL_SHAPE[0], 5) and a.maps255.shape == (SMALL_SHAPE[0], 5, *SMALL_SHAPE[1:])
    calls = []
    monkeypatch.setattr(ichdemo.pipeline, "analyze", lambda *a, **k: calls.append(1))
    assert s.analyze(pool, [tiny_models["lse"], tiny_models["gap"]]) == []  # cached: nothing runs
    assert calls == []


def test_thresholds_rethreshold_without_the_network(analysed, tiny_models, monkeypatch):
    s, ref = analysed, tiny_models["lse"]

    def boom(*args, **kwargs):
        raise AssertionError("the network must not run on a threshold change")

    monkeypatch.setattr(ichdemo.pipeline, "analyze", boom)
    monkeypatch.setattr("ichdemo.cam.heatmaps", boom)
    try:
        s.set_thresholds(ref, [1.0] * 5, [0] * 5)  # nothing passes the class gate
        assert s.labels(ref).max() == 0
        s.set_thresholds(ref, [0.0] * 5, [0] * 5)  # every slice gated on, every positive pixel kept
        lab = s.labels(ref)
        a = s.analyses[ref]
        assert np.array_equal(lab > 0, (a.maps255 > 0).any(1))
        res = s.results(ref)
        assert res.volumes_ml == volumes_ml(lab, s.volume.spacing)
        assert res.rows[-1][:3] == ["total", "not plausible", "not plausible"]  # every pixel: more than a skull
        assert res.warnings and "exceeds the intracranial volume" in res.warnings[0]
        s.set_thresholds(ref, [0.0] * 5, [200] * 5)
        res = s.results(ref)
        total = res.rows[-1]
        assert not res.warnings and res.volumes_ml["total"] > 0
        assert total[0] == "total" and total[1] == pytest.approx(round(res.volumes_ml["total"], 3))
        curves = s.curves(ref)  # five subtypes, their threshold lines (now at the axis floor), the legend entry
        assert len(curves.data) == 11 and list(curves.data[1].y) == [PERCENT_FLOOR] * 2
    finally:
        s.reset_thresholds(ref)
    assert s.thresholds[ref] == s.analyses[ref].thresholds


def test_views_for_the_current_slice(analysed, tiny_models):
    s = analysed
    refs = [tiny_models["lse"], tiny_models["gap"]]
    base = s.base_rgb(3, "brain")
    assert np.array_equal(s.overlay(None, 3, "brain"), base)
    strips = s.heatmap_strips(refs, 3, "brain", opacity=0.5)
    assert len(strips) == 2  # one labelled row per model
    assert strips[0][1].startswith("lse_tiny (lse_unet, native 16x16) · IPH p=")
    assert strips[1][1].startswith("gap_tiny (gap, native 2x2) · ")
    assert strips[0][0].shape == (256, 5 * 256 + 4 * 2, 3)  # five 256 px tiles of the square slice
    assert len(s.heatmap_strips(refs, 3, native=True)) == 2
    s.picture(strips[0][0]).unlink()
    path = s.picture(strips[0][0])
    assert path.parent.parent == s.folder and path == s.picture(strips[0][0])  # named by content
    shown = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB).astype(int)
    assert np.abs(shown - strips[0][0]).mean() < 2  # JPEG, quality 95
    assert np.array_equal(s.base_rgb(3, "40/80"), base)  # free centre/width: the brain preset written out
    assert not np.array_equal(s.base_rgb(3, "600/2800"), base)
    agree, rows = s.agreement(refs, 3)
    assert agree.shape == base.shape and len(rows) == 1 and rows[0][:2] == ["lse_tiny", "gap_tiny"]
    assert s.agreement(refs[:1], 3)[1] == []


@pytest.mark.parametrize("index", [0, 3, SMALL_SHAPE[0] - 1])
def test_first_look_is_the_whole_runs_slice(analysed, pool, tiny_models, index):
    """The heatmaps shown before the series has run (the network on one slice and its neighbours) are those the
    whole run gives for that slice, edge slices included (their stack repeats the edge)."""
    s, refs = analysed, [tiny_models["lse"], tiny_models["gap"]]
    for ref in refs:
        (look, caption), (whole, whole_caption) = s.first_look(pool, ref, index)[0], s.heatmap_strips([ref], index)[0]
        assert caption == whole_caption  # every probability, to the digits shown
        assert look.shape == whole.shape and np.abs(look.astype(int) - whole).mean() < 0.05
        one, a = ichdemo.pipeline.analyze(pool.get(ref), s.volume, index=index), s.analyses[ref]
        assert one.maps255.shape == (1, *a.maps255.shape[1:]) and one.hu.shape == (1, *a.hu.shape[1:])
        np.testing.assert_allclose(one.probs[0], a.probs[index], atol=1e-5)
        assert np.abs(one.maps255[0].astype(int) - a.maps255[index]).max() <= 1  # a batch of 1 against 4: rounding
        np.testing.assert_array_equal(one.hu[0], a.hu[index])


def test_native_grid_shows_blocks(analysed, tiny_models):
    """The gap model's 2x2 Grad-CAM drawn with nearest neighbour has at most 4 values on the slice."""
    m = analysed.native_on_source(tiny_models["gap"], 3)
    assert m.shape == (5, *SMALL_SHAPE[1:]) and m.dtype == np.uint8
    assert all(len(np.unique(m[k])) <= 4 for k in range(5))


def test_mesh_needs_a_series(analysed, tiny_models):
    fig = analysed.mesh(tiny_models["lse"])
    assert any(d.name == "head" for d in fig.data)


def test_export_zip_is_stamped_and_matches_the_labels(analysed, tiny_models):
    s, ref = analysed, tiny_models["lse"]
    s.set_thresholds(ref, [0.0] * 5, [100] * 5)
    try:
        path, skipped = s.export(ref, ["nifti"])
        assert path.parent == s.folder and path.name.startswith("ichdemo-draft-lse_tiny-")
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
            draft = zf.read("DRAFT.txt").decode()
            report = json.loads(zf.read("prediction/report.json"))
            zf.extract("prediction/labels.nii.gz", s.folder / "check")
        assert skipped == {}
        assert any(n.startswith("formats/") for n in names)
        assert "DRAFT" in draft and RESEARCH_NOTICE in draft and "lse_tiny" in draft
        assert "mask thresholds (IPH,IVH,SAH,SDH,EDH): 100, 100, 100, 100, 100" in draft
        assert report["thresholds"]["mask_thresholds"] == [100.0] * 5
        img = nib.load(s.folder / "check" / "prediction" / "labels.nii.gz")
        assert np.array_equal(np.asarray(img.dataobj).transpose(2, 1, 0), s.labels(ref))
    finally:
        s.reset_thresholds(ref)


def test_session_folder_is_private_and_removed(phantom_series, tmp_path):
    s = Session(base_dir=str(tmp_path))
    folder = s.folder
    assert folder.is_dir() and stat.S_IMODE(os.stat(folder).st_mode) == 0o700
    token = folder.name.split("-")[2]
    assert len(token) == 32 and int(token, 16) >= 0  # 128 random bits
    assert Session(base_dir=str(tmp_path)).folder != folder
    s.load_files(phantom_series[0])
    s.cleanup()
    assert not folder.exists() and s.volume is None


def test_scratch_folders_expire(tmp_path):
    sf = ScratchFolders(max_age_s=0.0, base_dir=str(tmp_path))
    first = sf.new()
    second = sf.new()  # the first one is past its (zero) age: removed
    assert not first.exists() and second.exists()
    sf.cleanup()
    assert not second.exists()


def test_analyze_files_writes_a_label_map_per_model(pool, tiny_models, phantom_series, tmp_path):
    report, files = analyze_files(pool, phantom_series[0], [tiny_models["lse"], tiny_models["gap"]], tmp_path)
    assert report["notice"] == RESEARCH_NOTICE and set(report["models"]) == {"lse_tiny", "gap_tiny"}
    assert [f.name for f in files] == ["lse_tiny_labels.nii.gz", "gap_tiny_labels.nii.gz"]
    lab = np.asarray(nib.load(files[0]).dataobj)
    assert lab.shape == SMALL_SHAPE[::-1]
    assert report["models"]["lse_tiny"]["volumes_ml"]["total"] == pytest.approx(
        volumes_ml(lab.transpose(2, 1, 0), phantom_series[1].spacing)["total"]
    )


def test_phantom_examples_are_written_once(tmp_path):
    ex = PhantomExamples(tmp_path, shape=SMALL_SHAPE)
    files = ex.files("SDH")
    assert len(files) == SMALL_SHAPE[0]
    mtime = files[0].stat().st_mtime_ns
    assert ex.files("SDH")[0].stat().st_mtime_ns == mtime
    assert ex.truth("SDH")["volume_ml"]["SDH"] > 0 and ex.truth("SDH")["volume_ml"]["IPH"] == 0
    with pytest.raises(Exception, match="unknown phantom example"):
        ex.files("XYZ")


def test_explain_slice(pool, tiny_models, analysed):
    view = explain_slice(
        pool, analysed.volume, 4, "IPH", tiny_models["gap"], tiny_models["lse"], r_values=(0.3, 3.0, 30.0)
    )
    caps = [c for _, c in view.maps]
    assert "native 2x2 cells" in caps[1] and "native 16x16" in caps[3]
    assert [c.split(":")[0] for _, c in view.r_maps] == ["r=0.3", "r=3", "r=30"]
    shares = [float(c.split("hold ")[1].split("%")[0]) for _, c in view.r_maps]
    assert shares[0] <= shares[1] <= shares[2]  # larger r concentrates LSE's weight
    assert [c.split(":")[0] for _, c in view.hloss] == ["with HLoss", "without HLoss"]
    assert len(view.steps) == 6 and view.steps[-1][1].startswith("label map: argmax")
    assert UNTRAINED in view.notes
    from ichdemo.quantify import Thresholds

    closed = explain_slice(
        pool, analysed.volume, 4, "IPH", None, tiny_models["lse"], thresholds=Thresholds(class_thresholds=[1.0] * 5)
    )
    assert all("gated off" in c for _, c in closed.steps[:5])
    with pytest.raises(UnsupportedInputError):
        explain_slice(pool, analysed.volume, 4, "IPH", None, None)
    assert CLASSES[0] == "IPH"


def test_export_while_the_uploads_are_being_removed_still_writes_the_seg(pool, tiny_models, analysed, monkeypatch):
    """DICOM SEG re-reads the uploaded headers; when the cache clean-up removes them between the check and the read
    (seen under load), the SEG is built from the headers kept at load time instead of failing."""
    import ichdemo.export.dicom_seg as dicom_seg

    def vanished(*args, **kwargs):
        raise FileNotFoundError(2, "No such file or directory", "CT0008.dcm")

    s, ref = analysed, tiny_models["lse"]
    s.set_thresholds(ref, [0.0] * 5, [25] * 5)
    monkeypatch.setattr(dicom_seg.pydicom, "dcmread", vanished)
    try:
        path, skipped = s.export(ref, ["dicom-seg"])
        assert skipped == {}
        with zipfile.ZipFile(path) as zf:
            assert "formats/dicom-seg/labels.seg.dcm" in zf.namelist()
    finally:
        s.reset_thresholds(ref)
