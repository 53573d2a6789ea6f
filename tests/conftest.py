"""Settings of every test: reviews in progress (``ichdemo.review``) go to a folder of this run, never to the user's
~/.cache, and are removed with it."""

from __future__ import annotations

import os
import shutil
import tempfile

_REVIEWS = tempfile.mkdtemp(prefix="ichdemo-test-reviews-")
os.environ["ICHDEMO_REVIEW_DIR"] = _REVIEWS  # before any test imports app.py (whose demo makes the store's secret)


def pytest_unconfigure(config) -> None:
    shutil.rmtree(_REVIEWS, ignore_errors=True)
