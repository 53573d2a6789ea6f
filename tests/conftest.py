"""Settings of every test: temporary files and reviews in progress (``ichdemo.review``) go to a folder of this run,
never to the user's /tmp or ~/.cache, and are removed with it; the weak-supervision trainings start at collection and
run beside the suite."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

# Every temporary file of the run, the servers' and subprocesses' included, in one folder removed at the end: the
# gradio_client leaves an empty /tmp/<40 hex> folder behind for each file it downloads (4000 of them after a few runs).
_TMP = tempfile.mkdtemp(prefix="ichdemo-test-tmp-")
os.environ["TMPDIR"] = tempfile.tempdir = _TMP
_REVIEWS = tempfile.mkdtemp(prefix="ichdemo-test-reviews-")
os.environ["ICHDEMO_REVIEW_DIR"] = _REVIEWS  # before any test imports app.py (whose demo makes the store's secret)


_WEAK: list = []  # the test module of the weak-supervision trainings, once started


@pytest.hookimpl(trylast=True)  # after -k / -m have deselected
def pytest_collection_modifyitems(session, config, items) -> None:
    """Start the weak-supervision trainings (``tests/test_weak_supervision.py``: two single-thread processes, the
    slowest part of the suite) now, so that they run beside the other tests, and move their tests to the end."""
    weak = [item for item in items if hasattr(item.module, "start_trainings")]
    if not weak or config.option.collectonly:
        return
    items[:] = [item for item in items if item not in weak] + weak
    weak[0].module.start_trainings(Path(tempfile.mkdtemp(prefix="weak-supervision-")))
    _WEAK.append(weak[0].module)


def pytest_unconfigure(config) -> None:
    if _WEAK:
        _WEAK[0].stop_trainings()
    shutil.rmtree(_TMP, ignore_errors=True)
