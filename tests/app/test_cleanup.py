"""What the app removes and when: Gradio's cache schedule (``ICHDEMO_DELETE_CACHE``), the empty stubs Gradio 6
leaves per uploaded file, the example slices it must keep, and a session's export drafts. The eight-session run
of tests/app/test_load.py checks the same on a real server under load."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest
from gradio_client import Client, handle_file

from webui import cache as webui_cache

REPO = Path(__file__).resolve().parents[2]


def test_cache_schedule(app_module):
    assert webui_cache.cache_schedule("1800,3600") == (1800, 3600)
    assert app_module.DELETE_CACHE == webui_cache.cache_schedule(os.environ.get("ICHDEMO_DELETE_CACHE", "1800,3600"))
    for bad in ("3600", "0,10", "10,-1", "a,b", "1,2,3"):
        with pytest.raises(ValueError, match="ICHDEMO_DELETE_CACHE must be 'frequency,age' in seconds"):
            webui_cache.cache_schedule(bad)


def test_sweep_removes_only_old_empty_stubs(app_module, tmp_path):
    old = time.time() - 120
    for name, data, age in [
        ("tmpold", b"", old),  # the stub: removed
        ("tmpyoung", b"", None),  # an upload just starting is written under such a name too
        ("tmpupload", b"x", old),  # an upload being written
        ("other", b"", old),  # not Gradio's temp-file name
    ]:
        (tmp_path / name).write_bytes(data)
        if age:
            os.utime(tmp_path / name, (age, age))
    (tmp_path / "tmpdir").mkdir()
    os.utime(tmp_path / "tmpdir", (old, old))
    assert webui_cache.sweep_upload_stubs(60, tmp_path) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other", "tmpdir", "tmpupload", "tmpyoung"]
    assert webui_cache.sweep_upload_stubs(60, tmp_path / "missing") == 0


def test_sweep_removes_viewer_pictures_by_age(app_module, tmp_path):
    """Cached copies of the viewer's pictures go by age (ctime, which cannot be set back: age 0 vs an hour)."""
    picture = tmp_path / "a" / "0123456789abcdef01234567.jpg"
    other = tmp_path / "b" / "ctich_080_18_IVH.jpg"  # an example slice: not the viewer's
    for f in (picture, other):
        f.parent.mkdir()
        f.write_bytes(b"jpg")
    assert webui_cache.sweep_view_pictures(3600, tmp_path) == 0  # young: kept
    time.sleep(0.05)
    assert webui_cache.sweep_view_pictures(0, tmp_path) == 1
    assert not picture.parent.exists() and other.is_file()


@pytest.fixture
def short_cache_app(app_module, tmp_path):
    """The app with Gradio's cache schedule at (1 s, 1 s), served on 127.0.0.1."""
    from ichdemo.catalogue import ModelPool
    from ichdemo.examples import PhantomExamples

    demo = app_module.build_demo(ModelPool([]), PhantomExamples(tmp_path / "phantoms"), delete_cache=(1, 1))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    demo.launch(
        server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, **app_module.launch_options()
    )
    yield demo, f"http://127.0.0.1:{port}/"
    demo.close()


def test_cache_schedule_keeps_examples_and_sweeps_stubs(short_cache_app, phantom_series):
    """After two rounds of the (1 s, 1 s) schedule the upload's stub is gone and the example slices (cached once,
    at start-up, and offered by the UI all along) are still there."""
    from gradio.utils import get_upload_folder

    demo, url = short_cache_app
    upload_box = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "upload")
    kept = sorted(upload_box.keep_in_cache)
    assert sorted(Path(p).name for p in kept) == sorted(p.name for p in (REPO / "examples").rglob("*.jpg"))
    cache = Path(get_upload_folder())
    before = {p.name for p in cache.glob("tmp*")}
    client = Client(url, verbose=False)
    try:
        info = client.predict([handle_file(str(phantom_series[0][0]))], "auto", "", False, api_name="/load")
        assert "1 slice(s)" in info
    finally:
        client.close()
    stubs = {p.name for p in cache.glob("tmp*") if p.is_file() and p.stat().st_size == 0} - before
    assert stubs  # Gradio 6 leaves one per uploaded file
    time.sleep(4)
    assert not stubs & {p.name for p in cache.glob("tmp*")}
    assert all(Path(p).is_file() for p in kept)


def test_an_upload_gone_meanwhile_is_refused_by_name(app_module, tmp_path):
    import gradio as gr

    from ichdemo.catalogue import ModelPool
    from ichdemo.examples import PhantomExamples

    app = app_module.App(ModelPool([]), PhantomExamples(tmp_path / "phantoms"))
    gone = tmp_path / "cache" / "0a1b2c" / "CT0001.dcm"
    with pytest.raises(gr.Error) as info:
        app.load_files([str(gone)], "auto", "", False, None, None)
    assert info.value.message.startswith("CT0001.dcm: this upload is no longer on the server")
    assert str(gone.parent) not in info.value.message
    with pytest.raises(gr.Error, match="no longer on the server"):
        app.predict([str(gone)], "")


def test_a_session_keeps_its_two_newest_drafts(tiny_models, phantom_series, tmp_path, monkeypatch):
    import ichdemo.session
    from ichdemo.catalogue import ModelPool
    from ichdemo.session import KEEP_DRAFTS, Session

    stamps = iter(f"20260101-00000{i}" for i in range(9))  # a new draft name every time, not every second
    strftime = time.strftime
    monkeypatch.setattr(
        ichdemo.session.time, "strftime", lambda fmt, *a: next(stamps) if fmt == "%Y%m%d-%H%M%S" else strftime(fmt, *a)
    )
    s = Session(base_dir=str(tmp_path))
    s.load_files(phantom_series[0])
    ref = tiny_models["lse"]
    s.analyze(ModelPool([ref]), [ref])
    drafts = [s.export(ref)[0] for _ in range(4)]
    assert KEEP_DRAFTS == 2
    assert sorted(s.folder.glob("*.zip")) == drafts[-2:]  # the older ones went, the two newest are served
    assert s.export(ref)[0] != drafts[-1] and len(list(s.folder.glob("*.zip"))) == 2
    s.cleanup()
    assert not any(tmp_path.iterdir())


def test_tidy_cache_outlives_a_file_set_changed_under_it(app_module, tmp_path):
    """Gradio's delete_cache pass raises when an upload adds to its file set meanwhile (here on the first pass,
    deterministically), which ends Gradio's own schedule for good; tidy_cache logs it, and its next pass deletes
    the old files."""
    from types import SimpleNamespace

    paths = [tmp_path / f"upload{i}.dcm" for i in range(3)]
    for path in paths:
        path.write_bytes(b"x")

    class UploadArrives(set):
        arrived = False

        def __iter__(self):
            for path in super().__iter__():
                if not self.arrived:
                    self.arrived = True
                    self.add(str(tmp_path / "late.dcm"))  # what /upload does on the event loop meanwhile
                yield path

    files = UploadArrives(map(str, paths))
    blocks = SimpleNamespace(blocks={}, temp_file_sets=[files])
    from gradio.route_utils import delete_files_created_by_app

    with pytest.raises(RuntimeError, match="changed size during iteration"):
        delete_files_created_by_app(blocks, 0)  # Gradio's pass on its own
    files.arrived = False
    webui_cache.tidy_cache(blocks, 0)  # the same failure, kept inside one pass
    webui_cache.tidy_cache(blocks, 0)
    assert not any(path.exists() for path in paths)
