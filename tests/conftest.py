"""Settings of every test: reviews in progress (``ichdemo.review``) go to a folder of this run, never to the user's
~/.cache, and are removed with it; the weak-supervision trainings start at collection and run beside the suite."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

_REVIEWS = tempfile.mkdtemp(prefix="ichdemo-test-reviews-")
os.environ["ICHDEMO_REVIEW_DIR"] = _REVIEWS  # before any test imports app.py (whose demo makes the store's secret)


_WEAK: list = []  # the test module of the weak-supervision trainings, once started, and their folder


@pytest.hookimpl(trylast=True)  # after -k / -m have deselected
def pytest_collection_modifyitems(session, config, items) -> None:
    """Start the weak-supervision trainings (``tests/test_weak_supervision.py``: two single-thread processes, the
    slowest part of the suite) now, so that they run beside the other tests, and move their tests to the end."""
    weak = [item for item in items if hasattr(item.module, "start_trainings")]
    if not weak or config.option.collectonly:
        return
    items[:] = [item for item in items if item not in weak] + weak
    folder = Path(tempfile.mkdtemp(prefix="ichdemo-test-weak-"))
    weak[0].module.start_trainings(folder)
    _WEAK.extend([weak[0].module, folder])


def pytest_unconfigure(config) -> None:
    shutil.rmtree(_REVIEWS, ignore_errors=True)
    if _WEAK:
        _WEAK[0].stop_trainings()
        shutil.rmtree(_WEAK[1], ignore_errors=True)
