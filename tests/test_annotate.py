"""Batch pre-annotation: discovery, failure isolation, resume, sharding, worker processes, and SIGKILL safety."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from ichdemo.annotate import FAILED_DIR, TMP_DIR, AnnotateConfig, discover, dist_env, run, shard
from ichdemo.errors import ConfigError
from ichdemo.io.dicom_write import write_dicom_series
from ichdemo.models import create_model
from ichdemo.models.checkpoint import save_pretrained

REPO = Path(__file__).resolve().parents[1]
# an untrained model segments something with Algorithm 1 alone (its drafts need not hold blood-density regions)
LOW = {"class_thresholds": (0.0,) * 5, "mask_thresholds": (128.0,) * 5, "refined": False}


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    model = create_model("lse_unet_mobilenetv3_small_050", pretrained=False)
    return str(save_pretrained(model, tmp_path_factory.mktemp("model") / "tiny", {"input_size": [3, 64, 64]}))


def _series(folder, seed, slices=4):
    rng = np.random.default_rng(seed)
    hu = rng.normal(35, 15, (slices, 32, 28)).astype(np.float32)
    hu[:, 8:16, 8:14] = 75
    return write_dicom_series(hu, (5.0, 0.9, 0.9), folder, seed=seed)


def make_tree(root, n_dicom=2, corrupt=True):
    """DICOM folders, a nested one, a zip, a NIfTI, a corrupt series and a stray text file."""
    for i in range(n_dicom):
        _series(root / f"patient{i}" / "ct", seed=i)
    nested = _series(root / "nested" / "a" / "b", seed=50)
    with zipfile.ZipFile(root / "zipped.zip", "w") as zf:
        for f in nested:
            zf.write(f, f"x/{f.name}")
    data = np.random.default_rng(9).normal(35, 15, (28, 32, 4)).astype(np.float32)
    nib.save(nib.Nifti1Image(data, np.diag([-0.9, -0.9, 5.0, 1.0])), root / "vol.nii.gz")
    if corrupt:
        for f in _series(root / "broken", seed=99):
            f.write_bytes(f.read_bytes()[:300])  # truncated: the DICM marker is there, the rest is not
    (root / "notes.txt").write_text("not a series")
    return root


def _cfg(model, formats=("nifti", "dicom-seg")):
    return AnnotateConfig(model=model, formats=formats, **LOW)


def _rows(out):
    with open(out / "summary.csv", newline="") as fh:
        return {r["series"]: r for r in csv.DictReader(fh)}


def _snapshot(root):
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


def test_discover_finds_every_kind_and_names_outputs_flat(tmp_path):
    make_tree(tmp_path)
    items = {it.key: it for it in discover(tmp_path)}
    assert set(items) == {"broken", "nested/a/b", "patient0/ct", "patient1/ct", "vol.nii.gz", "zipped.zip"}
    assert items["nested/a/b"].kind == "dicom" and len(items["nested/a/b"].paths) == 4
    assert items["zipped.zip"].kind == "zip" and items["vol.nii.gz"].kind == "nifti"
    assert items["nested/a/b"].name == "nested__a__b" and items["vol.nii.gz"].name == "vol"


def test_discover_skips_the_output_folder_inside_the_input(tmp_path):
    _series(tmp_path / "s", seed=1)
    _series(tmp_path / "out" / "s", seed=2)
    assert [it.key for it in discover(tmp_path, exclude=[tmp_path / "out"])] == ["s"]
    with pytest.raises(ConfigError, match="not a folder"):
        discover(tmp_path / "missing")


def test_shard_is_disjoint_and_complete():
    items = list(range(11))
    parts = [shard(items, r, 3) for r in range(3)]
    assert sorted(x for p in parts for x in p) == items and parts[1] == [1, 4, 7, 10]
    with pytest.raises(ConfigError):
        shard(items, 3, 3)
    assert dist_env({"RANK": "2", "WORLD_SIZE": "4", "LOCAL_RANK": "0"}) == (2, 4, 0)
    assert dist_env({}) == (0, 1, None)


def test_batch_run_isolates_the_corrupt_series_and_resumes_to_nothing(tiny_model, tmp_path):
    src, out = make_tree(tmp_path / "in"), tmp_path / "out"
    res = run(src, out, _cfg(tiny_model), progress=False)
    assert (res.total, res.done, res.failed) == (6, 5, 1)
    rows = _rows(out)
    assert rows["broken"]["status"] == "failed" and "broken" not in [p.name for p in out.iterdir()]
    assert "CT0001.dcm" in rows["broken"]["error"] or "truncated" in rows["broken"]["error"].lower()
    failure = json.loads((out / FAILED_DIR / "broken.json").read_text())
    assert failure["error"] == rows["broken"]["error"]
    for key in ("patient0/ct", "patient1/ct", "nested/a/b", "zipped.zip", "vol.nii.gz"):
        row = rows[key]
        assert row["status"] == "done" and row["error"] == ""
        folder = out / row["output"]
        assert (folder / "series.json").is_file() and (folder / "labels.nii.gz").is_file()
        assert (folder / "report.json").is_file() and not (folder / "heatmaps.npz").exists()
        assert int(row["slices"]) == 4 and float(row["total_ml"]) > 0
        total = sum(float(row[f"{c}_ml"]) for c in ("IPH", "IVH", "SAH", "SDH", "EDH"))
        assert total == pytest.approx(float(row["total_ml"]), abs=0.01)
    assert "dicom-seg skipped" in rows["vol.nii.gz"]["flags"]  # NIfTI input: no SEG, and the CSV says so
    assert (out / rows["zipped.zip"]["output"] / "dicom-seg").is_dir()
    assert not (out / TMP_DIR).exists()
    before, summary = _snapshot(out), (out / "summary.csv").read_text()

    again = run(src, out, _cfg(tiny_model), progress=False)
    assert (again.done, again.failed, again.skipped) == (0, 0, 6)
    assert (out / "summary.csv").read_text() == summary
    after = _snapshot(out)
    assert {k: v for k, v in after.items() if not k.endswith(".log")} == {
        k: v for k, v in before.items() if not k.endswith(".log")
    }  # nothing but the log was touched

    retry = run(src, out, _cfg(tiny_model), retry_failed=True, progress=False)
    assert (retry.done, retry.failed) == (0, 1)


def test_a_finished_series_folder_is_never_partial(tiny_model, tmp_path, monkeypatch):
    src, out = make_tree(tmp_path / "in", n_dicom=1, corrupt=False), tmp_path / "out"
    import ichdemo.export as export_pkg

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(export_pkg, "export", boom)  # fails after predict's outputs were already written
    res = run(src, out, _cfg(tiny_model), progress=False)
    assert res.failed == 4 and res.done == 0
    assert sorted(p.name for p in out.iterdir()) == [FAILED_DIR, "annotate.log", "summary.csv"]
    assert "RuntimeError: disk full" in _rows(out)["patient0/ct"]["error"]
    assert json.loads((out / FAILED_DIR / "patient0__ct.json").read_text())["traceback"]


def test_torchrun_style_shards_write_rank_csvs_and_the_last_writes_the_summary(tiny_model, tmp_path, monkeypatch):
    src, out = make_tree(tmp_path / "in", n_dicom=2, corrupt=False), tmp_path / "out"
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    first = run(src, out, _cfg(tiny_model, ("nifti",)), progress=False)
    assert first.shard == 3 and first.summary is None and not (out / "summary.csv").exists()
    monkeypatch.setenv("RANK", "1")
    second = run(src, out, _cfg(tiny_model, ("nifti",)), progress=False)
    assert second.shard == 2 and second.summary == out / "summary.csv"
    parts = [out / f"summary.rank{r}-of-2.csv" for r in (0, 1)]
    rank_rows = [row for p in parts for row in csv.DictReader(p.open())]
    assert sorted(r["series"] for r in rank_rows) == sorted(_rows(out))
    assert all(r["status"] == "done" for r in _rows(out).values())


@pytest.mark.slow
def test_worker_processes(tiny_model, tmp_path):
    src, out = make_tree(tmp_path / "in", n_dicom=2), tmp_path / "out"
    res = run(src, out, _cfg(tiny_model, ("nifti", "coco")), workers=2, progress=False)
    assert (res.done, res.failed) == (5, 1)
    assert all((out / r["output"] / "coco").is_dir() for r in _rows(out).values() if r["status"] == "done")


@pytest.mark.slow
def test_sigkill_mid_run_then_restart_finishes_without_partial_outputs(tiny_model, tmp_path):
    src, out = make_tree(tmp_path / "in", n_dicom=6, corrupt=False), tmp_path / "out"
    cmd = [
        sys.executable,
        "-m",
        "ichdemo",
        "annotate",
        str(src),
        str(out),
        "--model",
        tiny_model,
        "--format",
        "nifti,seg-nrrd,overlay",
        "--class-thresholds",
        "0,0,0,0,0",
        "--mask-thresholds",
        "128,128,128,128,128",
        "--no-progress",
    ]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    killed_mid_series = False
    while proc.poll() is None and time.monotonic() < deadline:
        finished = [p for p in out.glob("*/series.json")] if out.exists() else []
        partial = [p for p in (out / TMP_DIR).glob("*/*")] if (out / TMP_DIR).exists() else []
        if finished and partial:  # one series done, another half written: kill now
            os.kill(proc.pid, signal.SIGKILL)
            killed_mid_series = True
            break
        time.sleep(0.005)
    proc.wait(timeout=60)
    assert killed_mid_series, "the run ended before it could be killed mid-series"
    assert proc.returncode == -signal.SIGKILL
    expected = {"series.json", "labels.nii.gz", "report.json", "export.json"}
    done_before = [p.parent for p in out.glob("*/series.json")]
    for folder in [p for p in out.iterdir() if p.is_dir() and p.name not in (TMP_DIR, FAILED_DIR)]:
        assert expected <= {f.name for f in folder.iterdir()}, f"{folder.name} is partial"

    rerun = subprocess.run(cmd, check=False, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    rows = _rows(out)
    assert len(rows) == 9 and all(r["status"] == "done" for r in rows.values())
    assert not (out / TMP_DIR).exists()
    for row in rows.values():
        folder = out / row["output"]
        assert expected <= {f.name for f in folder.iterdir()}
        assert (folder / "seg-nrrd").is_dir() and any((folder / "overlay").iterdir())
    assert f"{len(done_before)} already finished" in rerun.stdout
