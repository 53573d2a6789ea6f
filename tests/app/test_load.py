"""Load and isolation: eight concurrent sessions on the real app keep apart and leave nothing behind.

``python app.py`` runs in its own process on 127.0.0.1 with a tiny untrained lse_unet checkpoint (the load is under
test, not the model: its random maps segment something on every phantom, so every round exports a DICOM SEG), its
temp folder and Gradio's cache pointed into the test's folder, Gradio's heartbeat at 1 s (so that a closed client
counts as a closed tab within seconds) and a short ``ICHDEMO_DELETE_CACHE`` schedule. Eight threads each drive
gradio_client sessions one after another for ``ICHDEMO_LOAD_S`` seconds (default 60; the full two-minute run with
``ICHDEMO_LOAD_S=120``): upload their own phantom series (its own seed, subtypes, slice count and matrix size),
analyse, set thresholds of their own, export a DICOM SEG draft, close. Checked:

* no failed request, and the server answers a plain request throughout;
* what comes back belongs to the session's own upload: series description and size, overlay size, the export's
  label map shape, the SEG's referenced series and study UIDs, the thresholds in DRAFT.txt, volumes equal to the
  session's own volume table and the same in every round of that series;
* the session folders of closed sessions are removed, their draft zips are not served, the server's resident
  memory at the end is within 20% of the memory halfway through, Gradio's cache is emptied by the delete_cache
  schedule (all but the example slices), nothing of the app is left in the temp folder after the server stops,
  and the server log holds no traceback and no UID or patient ID of any upload.

Run alone:  python -m pytest tests/app/test_load.py -s
"""

from __future__ import annotations

import gzip
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import cv2
import httpx
import nibabel as nib
import numpy as np
import pydicom
import pytest
from gradio_client import Client, handle_file

from ichdemo.constants import CLASSES

REPO = Path(__file__).resolve().parents[2]
N_SESSIONS = 8
LOAD_S = float(os.environ.get("ICHDEMO_LOAD_S", "60"))
CACHE_SCHEDULE = (2, 15)  # delete Gradio's cached files older than 15 s, every 2 s
SUBTYPES = [("IPH",), ("IVH",), ("SAH",), ("SDH",), ("EDH",), ("IPH", "IVH"), ("SDH", "SAH"), ()]

pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class Upload:
    """One session's own series and the thresholds it sets."""

    number: int
    files: list[Path]
    shape: tuple[int, int, int]  # (slices, rows, cols)
    series_uid: str
    study_uid: str
    header_values: tuple[str, ...]  # UIDs and patient ID of its files: none may reach the server log
    seed: int
    mask_threshold: int
    brush: Path  # a mask PNG this session paints as EDH on ``edit_slice``, at a place of its own
    edit_slice: int

    def set_thresholds_args(self) -> list:
        # every class gate open, a mask threshold of this session's own: volumes differ between sessions
        return [0.0] * len(CLASSES) + [float(self.mask_threshold)] * len(CLASSES)


def make_uploads(root: Path) -> list[Upload]:
    from ichdemo.phantom import generate_phantom, write_phantom

    uploads = []
    for i in range(N_SESSIONS):
        shape = (6 + i, 80 + 8 * i, 80 + 8 * i)  # slice count and matrix size tell the series apart
        p = generate_phantom(200 + i, SUBTYPES[i], shape=shape)
        files = [Path(f) for f in write_phantom(p, root / f"s{i}", "dicom")["files"]]
        headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
        ds = headers[0]
        values = (ds.SeriesInstanceUID, ds.StudyInstanceUID, ds.PatientID, *(h.SOPInstanceUID for h in headers))
        brush = np.zeros(shape[1:], np.uint8)
        brush[4 + 3 * i : 12 + 3 * i, 10:20] = 255
        cv2.imwrite(str(root / f"brush{i}.png"), brush)
        uploads.append(Upload(i, files, shape, ds.SeriesInstanceUID, ds.StudyInstanceUID, values, p.seed, 190 + 6 * i,
                              root / f"brush{i}.png", i))
    assert len({u.series_uid for u in uploads}) == N_SESSIONS
    return uploads


# ------------------------------------------------------------------------------------------------ the server
@dataclass
class Server:
    url: str
    proc: subprocess.Popen
    tmp: Path  # the server's TMPDIR: session folders
    cache: Path  # GRADIO_TEMP_DIR
    log: Path
    model: str  # the reference every session analyses

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise AssertionError("no VmRSS")

    def session_folders(self) -> list[Path]:
        return sorted(self.tmp.glob("ichdemo-session-*"))

    def cached_names(self) -> list[str]:
        # os.walk, not rglob: the server deletes folders while this walks them (rglob raises on a vanished one)
        return sorted(name for _, _, files in os.walk(self.cache) for name in files)

    def log_tail(self, n: int = 60) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(check, timeout: float, what: str, server: Server | None = None) -> None:
    end = time.monotonic() + timeout
    while not check():
        if time.monotonic() > end:
            extra = f"\ncache: {server.cached_names()[:20]}\nserver log:\n{server.log_tail(10)}" if server else ""
            pytest.fail(f"{what} within {timeout:g} s" + extra)
        time.sleep(0.5)


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_models):
    root = tmp_path_factory.mktemp("load-server")
    tmp, cache = root / "tmp", root / "gradio"
    tmp.mkdir()
    cache.mkdir()
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ICHDEMO_", "GRADIO_"))}
    env.update(
        TMPDIR=str(tmp),
        GRADIO_TEMP_DIR=str(cache),
        GRADIO_HEARTBEAT_INTERVAL="1",
        GRADIO_ANALYTICS_ENABLED="False",
        HF_HUB_OFFLINE="1",
        OMP_NUM_THREADS="1",
        ICHDEMO_DELETE_CACHE=",".join(map(str, CACHE_SCHEDULE)),
    )
    log = root / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "app.py", "--port", str(port), "--no-warm", "--models", tiny_models["lse"]],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            # Ctrl-C as a person sends it: a suite started in the background by a shell inherits SIGINT ignored, and
            # a Python child that starts with it ignored never stops on it
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
    srv = Server(f"http://127.0.0.1:{port}/", proc, tmp, cache, log, tiny_models["lse"])

    def up() -> bool:
        if proc.poll() is not None:
            pytest.fail(f"app.py exited with {proc.returncode}\n{srv.log_tail()}")
        try:
            return httpx.get(srv.url + "config", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_for(up, 180, "the app did not start", srv)
        yield srv
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # as Ctrl-C: Gradio closes, atexit handlers run
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


# ------------------------------------------------------------------------------------------------ one session
def check_export(zpath: str, up: Upload, table_total: float, model: str) -> dict[str, float]:
    """The draft zip holds this session's series and thresholds; returns its volumes."""
    with zipfile.ZipFile(zpath) as zf:
        report = json.loads(zf.read("prediction/report.json"))
        draft = zf.read("DRAFT.txt").decode()
        labels = nib.Nifti1Image.from_bytes(gzip.decompress(zf.read("prediction/labels.nii.gz")))
        seg = pydicom.dcmread(io.BytesIO(zf.read("formats/dicom-seg/labels.seg.dcm")))
    assert labels.shape == up.shape[::-1], (labels.shape, up.shape)
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == up.series_uid
    assert seg.StudyInstanceUID == up.study_uid
    m = up.mask_threshold
    assert f"mask thresholds (IPH,IVH,SAH,SDH,EDH): {m}, {m}, {m}, {m}, {m}" in draft, draft
    assert report["model"]["name"] == Path(model).name
    assert report["volumes_ml"]["total"] == pytest.approx(table_total, abs=1e-3)
    # its own edit, and no other session's: EDH exactly where this session painted, that slice alone edited
    lab = np.asarray(labels.dataobj).transpose(2, 1, 0)
    assert (lab[up.edit_slice][cv2.imread(str(up.brush), cv2.IMREAD_GRAYSCALE) > 0] == 5).all()
    review = ["draft"] * up.shape[0]
    review[up.edit_slice] = "edited"
    assert report["review"]["slices"] == review, report["review"]
    return report["volumes_ml"]


def session_round(url: str, up: Upload, model: str) -> dict[str, float]:
    """One browser session from upload to export; returns the exported volumes."""
    c = Client(url, verbose=False)
    try:
        info = c.predict([handle_file(str(f)) for f in up.files], "auto", "", False, api_name="/load")
        n, rows, cols = up.shape
        assert f"seed {up.seed} " in info and f"{n} slice(s) of {cols} x {rows} px" in info, info
        ran = c.predict([model], None, "brain", 0.45, 0.5, False, False, api_name="/analyze")
        assert ran[0] == "Ran 1 of 1 model(s).", ran[0]
        edited = c.predict([model], model, up.edit_slice, "brain", 0.45, 0.5, False, False, "paint", "EDH",
                           handle_file(str(up.brush)), -1, -1, api_name="/edit")  # this session's own correction
        assert f"Reviewed 1 of {n} slices" in edited[6], edited[6]
        view = c.predict(
            [model], model, n // 2, "brain", 0.45, 0.5, False, False, *up.set_thresholds_args(),
            api_name="/set_thresholds",
        )  # fmt: skip
        overlay, table = view[0], view[-1]
        assert cv2.imread(overlay).shape[:2] == (rows, cols)
        total = float(table["data"][-1][1])
        zpath, note = c.predict(model, ["dicom-seg"], api_name="/session_export")
        assert "Draft written" in note and "skipped" not in note, note
        return check_export(zpath, up, total, model)
    finally:
        c.close()


@dataclass
class Monitor:
    """Samples the server while the sessions run: request latency, resident memory, live session folders, and the
    answer to a request for a draft zip inside a session folder (by its server path)."""

    server: Server
    stop: threading.Event
    latency_s: list[float]
    rss: list[tuple[float, float]]  # (seconds since start, MB)
    folders: list[int]
    probes: list[int]  # HTTP status of those requests
    errors: list[str]

    def run(self, t0: float) -> None:
        while not self.stop.wait(1.0):
            start = time.monotonic()
            try:
                ok = httpx.get(self.server.url + "config", timeout=30).status_code == 200
                if not ok:
                    self.errors.append("GET /config did not answer 200")
            except httpx.HTTPError as err:
                self.errors.append(f"GET /config: {type(err).__name__}: {err}")
            self.latency_s.append(time.monotonic() - start)
            self.rss.append((time.monotonic() - t0, self.server.rss_mb()))
            folders = self.server.session_folders()
            self.folders.append(len(folders))
            for draft in [z for f in folders for z in f.glob("*.zip")][:1]:
                self.probes.append(httpx.get(self.server.url + f"gradio_api/file={draft}", timeout=30).status_code)


# ------------------------------------------------------------------------------------------------ the test
def test_eight_sessions_stay_apart_and_clean_up(server, tmp_path):
    uploads = make_uploads(tmp_path)
    deadline = time.monotonic() + LOAD_S
    volumes: dict[int, list[dict[str, float]]] = {u.number: [] for u in uploads}
    errors: list[str] = []

    def drive(up: Upload) -> None:
        while time.monotonic() < deadline:
            try:
                volumes[up.number].append(session_round(server.url, up, server.model))
            except Exception as err:  # noqa: BLE001 - every failure is collected and reported below
                errors.append(f"session {up.number}, round {len(volumes[up.number]) + 1}: {type(err).__name__}: {err}")
                return

    t0 = time.monotonic()
    mon = Monitor(server, threading.Event(), [], [], [], [], [])
    watcher = threading.Thread(target=mon.run, args=(t0,), daemon=True)
    watcher.start()
    workers = [threading.Thread(target=drive, args=(u,), daemon=True) for u in uploads]
    for w in workers:
        w.start()
    for w in workers:
        w.join(LOAD_S + 120)
    mon.stop.set()
    watcher.join(30)
    assert not any(w.is_alive() for w in workers), "a session did not finish: hung request"
    run_s = time.monotonic() - t0
    rounds = [len(v) for v in volumes.values()]
    print(
        f"\n{sum(rounds)} sessions in {run_s:.0f} s (per series: {rounds}); /config latency max "
        f"{max(mon.latency_s, default=0):.2f} s; RSS {mon.rss[0][1]:.0f} -> {mon.rss[-1][1]:.0f} MB; "
        f"session folders at most {max(mon.folders, default=0)}"
    )

    assert not errors, "\n".join(errors) + f"\nserver log:\n{server.log_tail()}"
    assert min(rounds) >= 2, rounds  # every series went through at least two sessions
    for number, vols in volumes.items():  # same series and thresholds: the same volumes in every session
        assert all(v == pytest.approx(vols[0], abs=1e-6) for v in vols), (number, vols)
    totals = {round(v[0]["total"], 3) for v in volumes.values()}
    assert len(totals) >= N_SESSIONS - 1, totals  # the series differ, so a mix-up would show
    assert not mon.errors and max(mon.latency_s) < 15, (mon.errors, max(mon.latency_s))
    assert max(mon.folders) <= 2 * N_SESSIONS  # folders of closed sessions go while the others run

    # a session folder is never served: its drafts reach the user only as Gradio's copy
    assert mon.probes and set(mon.probes) <= {403, 404}, mon.probes
    # closed sessions: folders removed (unload after the heartbeat stops), memory back to its level
    wait_for(lambda: not server.session_folders(), 30, "session folders of closed sessions were not removed", server)
    halfway = [mb for t, mb in mon.rss if abs(t - LOAD_S / 2) <= 5]  # caches are warm by then: later growth is a leak
    rss_mid, rss_end = sum(halfway) / len(halfway), server.rss_mb()
    assert rss_end <= 1.2 * rss_mid, f"resident memory grew from {rss_mid:.0f} MB halfway to {rss_end:.0f} MB"

    # Gradio's cache (uploads and their stubs, returned images, export copies): emptied on the delete_cache
    # schedule, except the example slices, which the UI keeps offering
    frequency, age = CACHE_SCHEDULE
    examples = sorted(p.name for p in (REPO / "examples").rglob("*.jpg"))
    emptied = lambda: server.cached_names() == examples  # noqa: E731
    wait_for(emptied, age + 3 * frequency + 60, "Gradio's cache was not emptied", server)  # slack: busy CI machines

    # after the server stops: nothing of it left in its temp folder; its log has no traceback and no header value
    server.proc.send_signal(signal.SIGINT)
    try:
        server.proc.wait(60)
    except subprocess.TimeoutExpired:
        pytest.fail(f"app.py did not stop within 60 s of SIGINT\nserver log:\n{server.log_tail()}")
    assert not list(server.tmp.glob("ichdemo-*")), [p.name for p in server.tmp.iterdir()]
    assert server.cached_names() == examples
    text = server.log.read_text(errors="replace")
    assert "Traceback" not in text, server.log_tail()
    assert not [v for u in uploads for v in u.header_values if v in text], server.log_tail()
