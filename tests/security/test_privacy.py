"""Privacy: uploaded DICOM headers are never logged or printed, and what predict writes carries no patient
name, ID or birth date unless the user asks for it (``--keep-phi``).

The series carries unmistakable identifiers (and, in one variant, a malformed birth date: pydicom's validation
warnings quote the offending value, so a loader that touched it would leak it into the log). Everything the code
emits is searched for them: log records at DEBUG (root and pydicom loggers), stdout/stderr, Python warnings, the
Volume's text fields, error messages, and every byte predict writes (gzip, zip and npz members opened).
"""

from __future__ import annotations

import gzip
import io
import json
import logging
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pydicom
import pytest
from security_helpers import rewrite

from ichdemo.errors import IchdemoError
from ichdemo.io import describe, load_volume
from ichdemo.io.dicom_write import write_dicom_series

NAME, PID, BIRTH, BAD_BIRTH = "ZZSECRET^QUIXOTE", "PIDSECRET4711", "19451231", "31.12.1945"
MARKERS = ("ZZSECRET", "QUIXOTE", "PIDSECRET4711", "19451231", "31.12.1945", "1945")


def _series(folder: Path, birth: str, n: int = 3) -> Path:
    hu = np.random.default_rng(0).normal(40, 20, (n, 32, 32)).astype(np.float32)
    hu[:, 10:16, 10:16] = 70
    paths = write_dicom_series(hu, (5.0, 0.7, 0.7), folder, patient_name=NAME, patient_id=PID, seed=2)

    def identify(ds):
        ds.add_new(0x00100030, "DA", birth)  # add_new: no validation, as a sloppy exporter would write it
        ds.OtherPatientIDs = PID + "-B"
        ds.PatientAge = "078Y"
        ds.InstitutionName = "ZZSECRET General Hospital"

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # writing the malformed date warns here, in the fixture, not in the code
        rewrite(paths, identify)
    return folder


@pytest.fixture(scope="module", params=[BIRTH, BAD_BIRTH], ids=["valid-birth-date", "malformed-birth-date"])
def series(request, tmp_path_factory) -> Path:
    folder = _series(tmp_path_factory.mktemp("phi") / "study", request.param)
    ds = pydicom.dcmread(next(folder.glob("*.dcm")))
    assert str(ds.PatientName) == NAME and ds.PatientID == PID  # the identifiers really are in the files
    return folder


def _leaks(text: str) -> list[str]:
    return [m for m in MARKERS if m in text]


def _all_bytes(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder``, with .gz inflated and .zip/.npz members listed separately."""
    out = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        data = path.read_bytes()
        out[str(path.relative_to(folder))] = data
        if data[:2] == b"\x1f\x8b":
            out[f"{path.name} (inflated)"] = gzip.decompress(data)
        if data[:4] == b"PK\x03\x04":
            with zipfile.ZipFile(io.BytesIO(data)) as zf:
                out.update({f"{path.name}:{n}": zf.read(n) for n in zf.namelist()})
    return out


def _phi_in_files(folder: Path) -> dict[str, list[str]]:
    found = {}
    for name, data in _all_bytes(folder).items():
        hits = [m for m in MARKERS if m.encode() in data or m.encode("utf-16-le") in data]
        if hits:
            found[name] = hits
    return found


@pytest.fixture
def debug_logs(caplog):
    """Every logger at DEBUG, pydicom's included (its validation warnings go through logging too)."""
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="pydicom")
    return caplog


def test_loading_logs_and_prints_no_identifiers(series, debug_logs, capsys):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        vol = load_volume(series)
        text = describe(vol)
    out, err = capsys.readouterr()
    assert vol.shape == (3, 32, 32)
    assert _leaks(debug_logs.text) == []
    assert _leaks(out + err) == []
    assert _leaks(" ".join(str(w.message) for w in caught)) == []
    assert _leaks(text) == []
    assert _leaks(json.dumps(vol.summary()) + json.dumps(vol.meta) + " ".join(vol.slice_names)) == []


def test_error_messages_carry_no_identifiers(series, tmp_path, debug_logs):
    """A refused upload (here: the same series relabelled MR) says why without quoting the patient."""
    copy = tmp_path / "mr"
    copy.mkdir()
    for p in series.glob("*.dcm"):
        (copy / p.name).write_bytes(p.read_bytes())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rewrite(sorted(copy.glob("*.dcm")), lambda ds: setattr(ds, "Modality", "MR"))
    debug_logs.clear()
    with pytest.raises(IchdemoError, match="modality is MR") as info:
        load_volume(copy)
    assert _leaks(str(info.value)) == [] and _leaks(debug_logs.text) == []


def test_predict_and_exports_carry_no_identifiers(series, tmp_path, tiny_model, cli, debug_logs):
    """report.json, labels, heatmaps and every export format: nothing identifying, logs and console clean too."""
    out = tmp_path / "pred"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # raw Algorithm 1: an untrained model's refined drafts may hold nothing, and a SEG needs a segment
        res = cli("predict", series, "--model", tiny_model, "--out", out, "--format", "all", "--refine", "none")
    assert res.rc == 0, res.err
    report = json.loads((out / "report.json").read_text())
    assert report["input"]["slices"] == 3
    assert _phi_in_files(out) == {}
    assert _leaks(res.out + res.err) == []
    assert _leaks(debug_logs.text) == []
    assert _leaks(" ".join(str(w.message) for w in caught)) == []
    seg = pydicom.dcmread(next(out.rglob("*.dcm")))
    assert seg.Modality == "SEG" and seg.PatientIdentityRemoved == "YES"
    assert str(seg.get("PatientName", "")) == "" and str(seg.get("PatientID", "")) == ""


def test_keep_phi_is_the_only_way_identifiers_reach_an_export(tmp_path, tiny_model, cli):
    """The same search finds the identifiers once the user asks to keep them: the test above can fail."""
    series = _series(tmp_path / "study", BIRTH, n=2)
    out = tmp_path / "pred"
    res = cli("predict", series, "--model", tiny_model, "--out", out, "--format", "dicom-seg", "--keep-phi",
              "--refine", "none")
    assert res.rc == 0, res.err
    found = _phi_in_files(out)
    seg_files = [name for name in found if name.endswith(".dcm")]
    assert seg_files and {"ZZSECRET", "PIDSECRET4711", "19451231"} <= set(found[seg_files[0]])
    assert "report.json" not in found  # the report stays clean even then


def test_keep_phi_with_a_malformed_birth_date_fails_cleanly_or_works(tmp_path, tiny_model, cli):
    series = _series(tmp_path / "study", BAD_BIRTH, n=2)
    res = cli("predict", series, "--model", tiny_model, "--out", tmp_path / "pred", "--format", "dicom-seg",
              "--keep-phi")
    assert res.rc == 0 or (res.rc == 2 and res.err.count("\n") == 1), res.err


def test_outputs_do_not_repeat_a_folder_named_after_the_patient(tmp_path, tiny_model, cli):
    folder = _series(tmp_path / "ZZSECRET_QUIXOTE_19451231", BIRTH, n=2)
    out = tmp_path / "pred"
    res = cli("predict", folder, "--model", tiny_model, "--out", out, "--format", "all")
    assert res.rc == 0, res.err
    # source.json is the one local sidecar that must name the input (for `ichdemo export`); it says so itself
    found = _phi_in_files(out)
    assert set(found) <= {"source.json"}
    assert "do not share" in (out / "source.json").read_text()
    assert _leaks(" ".join(str(p.relative_to(out)) for p in out.rglob("*"))) == []
