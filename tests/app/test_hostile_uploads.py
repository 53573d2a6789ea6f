"""Bad and hostile input through the app: every hostile input of tests/security fed to the upload
handler of the served app (the ``/load`` event of the upload box, driven with gradio_client over 127.0.0.1).

Each refusal must reach the user as one specific line (the loader's message, not "internal error" and never a
traceback), within a time limit (no hung worker), and leave the session usable: its series stays loaded, and the
next good upload in the same session loads and analyses. Uploads over the app's size limit are refused by the web
server before the app sees them. tests/security/test_hostile_inputs.py defines the inputs (``CASES``: input,
error class, message) and checks them at loader and CLI level.
"""

from __future__ import annotations

import html
import re
import socket
import sys
from pathlib import Path

import httpx
import pytest
from gradio.utils import get_upload_folder
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "security"))  # the hostile inputs, defined once for loader, CLI and app
from security_helpers import tiny_series  # noqa: E402
from test_hostile_inputs import CASES, OK_CASES  # noqa: E402

LIMIT_S = 60  # a refusal that takes longer than this is a hung worker
# A folder upload (the loader ignores junk like .DS_Store in folders) becomes a list of files in the app, where
# a named file that is no image is reported as such.
APP_FRAGMENTS = {  # where the app says more than the reader: a DICOM SEG is labels, to upload beside their CT
    "empty-nested-folders": r"\.DS_Store: unrecognised file type; expected DICOM, NIfTI",
    "dicom-modality-SEG": r"labels alone \([^)]*\.dcm: exported labels, a DICOM SEG or a report\): upload them beside",
    "dicom-real-seg": r"labels alone \([^)]*\.dcm: exported labels, a DICOM SEG or a report\): upload them beside",
}


def upload_of(src) -> list[Path]:
    """What the upload box sends for a built input: the files themselves (a browser uploads files, not folders)."""
    if isinstance(src, list):
        return [Path(p) for p in src]
    path = Path(src)
    return sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]


def load(client: Client, files: list[Path]):
    """``/load`` of ``files``; fails the test when the server takes longer than ``LIMIT_S``."""
    return client.submit([handle_file(str(f)) for f in files], "auto", "", False, api_name="/load").result(
        timeout=LIMIT_S
    )


def analyze(client: Client, refs: list[str]) -> str:
    """``/analyze`` of the loaded series with ``refs``: its status line."""
    return client.predict(refs, None, "brain", 0.45, 0.5, False, True, api_name="/analyze")[0]


def refusal(client: Client, files: list[Path]) -> str:
    """The message the UI shows for an upload that must be refused (unescaped: the app HTML-escapes it)."""
    with pytest.raises(AppError) as info:
        load(client, files)
    return html.unescape(str(info.value))


def assert_user_message(message: str, *private: Path) -> None:
    """One short line, from the loader, naming no server folder."""
    assert "\n" not in message and len(message) < 400, message
    assert "Traceback" not in message and not message.startswith("internal error"), message
    assert not any(str(p) in message for p in private), message


@pytest.fixture(scope="module")
def client(app_url):
    """One browser session for every hostile case: the same session must survive all of them."""
    c = Client(app_url, verbose=False)
    yield c
    c.close()


@pytest.mark.filterwarnings("ignore::UserWarning", "ignore::RuntimeWarning")  # pydicom/numpy on damaged values
@pytest.mark.parametrize("name", sorted(CASES))
def test_hostile_upload_is_refused_with_its_message(name, client, tmp_path):
    build, _, fragment = CASES[name]
    message = refusal(client, upload_of(build(tmp_path)))
    assert re.search(APP_FRAGMENTS.get(name, fragment), message), message
    assert_user_message(message, tmp_path, Path(get_upload_folder()))


@pytest.mark.parametrize("name", sorted(OK_CASES))
def test_odd_but_valid_upload_loads(name, client, tmp_path):
    build, _, shape = OK_CASES[name]
    info = load(client, upload_of(build(tmp_path)))
    assert f"{shape[0]} slice(s) of {shape[2]} x {shape[1]} px" in info


def test_session_stays_usable_after_bad_uploads(app_url, phantom_series, tiny_models, tmp_path):
    """A good series, then one bad upload of each kind: the series stays loaded and exportable; the next good
    upload in the same session replaces it."""
    files, phantom = phantom_series
    refs = [tiny_models["lse"]]
    c = Client(app_url, verbose=False)
    try:
        assert f"{phantom.shape[0]} slice(s)" in load(c, files)
        assert analyze(c, refs) == "Ran 1 of 1 model(s)."
        kinds = ["dicom-zero-byte", "dicom-ts-mpeg2", "dicom-modality-MR", "dicom-two-matrix-sizes", "html-named-dcm"]
        kinds += ["zip-bomb-ratio", "zip-dotdot-nested", "nifti-minus-inf", "png-real-bomb-4097", "empty-png"]
        for kind in kinds:
            build, _, fragment = CASES[kind]
            (tmp_path / kind).mkdir()
            assert re.search(fragment, refusal(c, upload_of(build(tmp_path / kind))))
            overlay, *_ = c.predict(refs, refs[0], 2, "brain", 0.45, 0.5, False, True, api_name="/render")
            assert Path(overlay).is_file()  # the session still shows its series
        zpath, note = c.predict(refs[0], [], api_name="/session_export")
        assert "lse_tiny" in note and Path(zpath).is_file()
        other = tiny_series(tmp_path / "other", 3, (16, 16))
        assert "3 slice(s) of 16 x 16 px" in load(c, other)
        assert analyze(c, refs) == "Ran 1 of 1 model(s)."  # the new series runs
    finally:
        c.close()


def test_one_slice_upload_loads_and_analyzes(client, tiny_models, tmp_path):
    """Too few slices for a 3-slice stack is not an error: the edge slice is repeated, the slider is fixed."""
    info = load(client, tiny_series(tmp_path / "s", 1, (16, 16)))
    assert "1 slice(s) of 16 x 16 px" in info
    assert analyze(client, [tiny_models["lse"]]) == "Ran 1 of 1 model(s)."


def test_an_unexpected_crash_is_one_line_and_the_server_keeps_serving(client, phantom_series, monkeypatch, caplog):
    """A failure that is no typed error (a bug, memory) still ends as one line for the user, logged in full."""
    import ichdemo.io

    def crash(*args, **kwargs):
        raise MemoryError("cannot allocate 8 GiB for /srv/secret/path")

    monkeypatch.setattr(ichdemo.io, "load_volume", crash)  # the served app runs in this process
    message = refusal(client, phantom_series[0])
    assert message.startswith("internal error (MemoryError: cannot allocate") and "keeps running" in message
    assert "\n" not in message and "Traceback" not in message
    assert any(r.exc_info and r.exc_info[0] is MemoryError for r in caplog.records)  # the server log has it all
    monkeypatch.undo()
    assert "8 slice(s)" in load(client, phantom_series[0])


def test_upload_over_the_size_limit_is_refused_by_the_server(app_module, phantom_series, tmp_path):
    """``max_file_size`` (ICHDEMO_MAX_FILE_SIZE): the web server answers 413 with the limit and keeps nothing; the
    client refuses before sending; the app keeps serving."""
    from ichdemo.catalogue import ModelPool
    from ichdemo.examples import PhantomExamples

    demo = app_module.build_demo(ModelPool([]), PhantomExamples(tmp_path / "phantoms"))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    demo.launch(
        server_name="127.0.0.1",
        server_port=port,
        prevent_thread_lock=True,
        quiet=True,
        **app_module.launch_options(max_file_size="64kb"),
    )
    url = f"http://127.0.0.1:{port}/"
    try:
        name = f"huge-{tmp_path.name}.dcm"
        r = httpx.post(url + "gradio_api/upload", files=[("files", (name, b"\0" * (1 << 20)))], timeout=60)
        assert r.status_code == 413 and "maximum allowed size of 65536 bytes" in r.text
        ok = httpx.post(url + "gradio_api/upload", files=[("files", ("small.dcm", b"x"))], timeout=60).json()[0]
        assert not list(Path(ok).parents[1].rglob(name))  # nothing of the refused upload is kept
        big = tmp_path / "big.dcm"
        big.write_bytes(b"\0" * (1 << 17))
        c = Client(url, verbose=False)
        try:
            with pytest.raises(ValueError, match="exceeds the maximum file size of 65536 bytes"):
                c.predict([handle_file(str(big))], "auto", "", False, api_name="/load")
            assert "8 slice(s)" in load(c, phantom_series[0])  # 8 files of 18 KB each: under the limit
        finally:
            c.close()
    finally:
        demo.close()


# ------------------------------------------------------------------------- limits too costly to send over HTTP
@pytest.fixture
def handler(app_module, tmp_path):
    """The upload handler (``App.load_files``) in-process, each call from a new page (a session hash of its own, as
    the browser gives)."""
    from types import SimpleNamespace

    from ichdemo.catalogue import ModelPool
    from ichdemo.examples import PhantomExamples

    pages = []

    def load(files):
        pages.append(SimpleNamespace(session_hash=f"hostile-{tmp_path.name}-{len(pages)}"))
        return app.load_files([str(f) for f in files], "auto", "", False, None, pages[-1])

    app = app_module.App(ModelPool([]), PhantomExamples(tmp_path / "phantoms"))
    yield load
    for page in pages:
        app_module._end_session(page)


def test_handler_refuses_too_many_slices_and_files(handler, tmp_path):
    import gradio as gr

    from ichdemo.io.limits import Limits

    series = tiny_series(tmp_path / "long", Limits().max_slices + 1)
    with pytest.raises(gr.Error, match=r"DICOM series: 2001 slices is over the limit of 2000 slices"):
        handler(series)
    assert "2000 slice(s)" in handler(series[:-1])[1]  # the limit itself loads
    many = tmp_path / "many"
    many.mkdir()
    for i in range(Limits().max_files + 1):
        (many / f"{i}.dcm").touch()
    with pytest.raises(gr.Error, match=r"upload has 4001 files, over the limit of 4000 files"):
        handler(sorted(many.iterdir()))


def test_handler_ignores_an_emptied_upload_box(handler):
    """Clearing the upload box fires the same event with no files: nothing changes, no error."""
    assert all(v is None or isinstance(v, dict) for v in handler([])[1:])


# ------------------------------------------------------------------------------------------------ in a browser
def test_browser_shows_the_refusal_and_takes_the_next_upload(app_url, phantom_series, tmp_path):
    """What a visitor sees: the refusal as an error toast with the loader's message, then a good upload works."""
    from test_browser import ARGS, CHROMIUM

    if not CHROMIUM.exists():
        pytest.skip("Debian chromium is missing: apt-get install chromium")
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (requirements-dev.txt)")
    bad = tmp_path / "scan.dcm"
    bad.write_text("<!doctype html><title>PACS login</title>\n" * 10)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(120_000)
            page.goto(app_url)
            page.set_input_files("#upload input[type=file]", [str(bad)])
            page.wait_for_selector(".toast-body")
            toast = page.inner_text(".toast-body")
            assert "Error" in toast and "scan.dcm: not a DICOM file (no 'DICM' marker" in toast, toast
            assert "Traceback" not in toast and "internal error" not in toast
            page.set_input_files("#upload input[type=file]", [str(f) for f in phantom_series[0]])
            page.wait_for_function("document.querySelector('#series-info').innerText.includes('8 slice(s)')")
            page.wait_for_function("document.querySelectorAll('#heatmaps img').length >= 3")  # analysed too
        finally:
            browser.close()


def test_labels_alone_with_no_series_say_what_they_need(handler, tmp_path):
    import gradio as gr
    import nibabel as nib
    import numpy as np

    path = tmp_path / "labels.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 3), np.uint8), np.eye(4)), path)
    with pytest.raises(gr.Error, match=r"labels alone \(labels.nii.gz: .*\): upload them beside the CT"):
        handler([path])
