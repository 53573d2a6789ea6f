"""A review in progress, kept on disk per browser so that a person's edits outlive a page reload and a server restart.

The app gives every browser a random key (kept in the browser's localStorage, encrypted with ``secret``). At a
person's first correction of a series, the store copies the files the series was read from and, after every
correction, writes the edits (``ichdemo.edits``) beside them; when that browser opens the app again, ``load`` gives
back the series and its edits. One review per browser: a new series, or clearing it, drops the old one, and a review
untouched for ``ttl_s`` seconds is swept away. The folder of a key is named by a hash of it, so a listing of the store
does not reveal keys, and nothing in one key's folder is reachable from another's.

Example:
    >>> store = ReviewStore("~/.cache/ichdemo/reviews")
    >>> store.save(key, {"image_window": "auto"}, ["a.dcm", "b.dcm"], edits)
    >>> source, files, edits = store.load(key, shape)
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ichdemo.atomic import write_text
from ichdemo.edits import Edits

REVIEW_DIR_ENV, REVIEW_TTL_ENV = "ICHDEMO_REVIEW_DIR", "ICHDEMO_REVIEW_TTL_S"
DEFAULT_TTL_S = 24 * 3600
SOURCE_FILE, SECRET_FILE = "source.json", ".browser-secret"
_KEY = re.compile(r"^[A-Za-z0-9_-]{32,128}$")


def default_root() -> Path:
    """``$ICHDEMO_REVIEW_DIR``, else ``$XDG_CACHE_HOME/ichdemo/reviews`` (``~/.cache`` when unset): outside the
    temp folder, so that a review survives a server restart."""
    if os.environ.get(REVIEW_DIR_ENV):
        return Path(os.environ[REVIEW_DIR_ENV])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ichdemo" / "reviews"


def new_key() -> str:
    """A browser's key: 256 random bits."""
    return secrets.token_urlsafe(32)


class ReviewStore:
    """The reviews of every browser, one folder each (mode 0700)."""

    def __init__(self, root: str | Path | None = None, ttl_s: float | None = None) -> None:
        self.root = Path(root).expanduser() if root else default_root()
        self.ttl_s = float(ttl_s if ttl_s is not None else os.environ.get(REVIEW_TTL_ENV, DEFAULT_TTL_S))

    def secret(self) -> str:
        """The key that encrypts browser keys in localStorage, the same across restarts (created once, 0600)."""
        path = self.root / SECRET_FILE
        if not path.is_file():
            self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
            write_text(path, secrets.token_urlsafe(24))
            path.chmod(0o600)
        return path.read_text().strip()

    def folder(self, key: str) -> Path:
        """The folder of a browser key (ValueError for a key that is not one of ours)."""
        if not isinstance(key, str) or not _KEY.match(key):
            raise ValueError("not a review key")
        return self.root / hashlib.sha256(key.encode()).hexdigest()[:32]

    def save(self, key: str, source: dict[str, Any], files: Sequence[str | Path], edits: Edits) -> Path:
        """Keep ``edits`` of the series read from ``files`` (copied once per series) as ``source`` describes it
        (how it was read: image window, spacing, example name...)."""
        folder = self.folder(key)
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        meta = folder / SOURCE_FILE
        old = json.loads(meta.read_text()) if meta.is_file() else {}
        if old.get("series") != source.get("series"):  # another series: its files replace the old ones
            shutil.rmtree(folder / "files", ignore_errors=True)
            shutil.rmtree(folder / "edits", ignore_errors=True)
            names = []
            for n, f in enumerate(files):
                (folder / "files").mkdir(exist_ok=True)
                name = f"{n:04d}-{Path(f).name}"
                shutil.copyfile(f, folder / "files" / name)
                names.append(name)
            source = {**source, "files": names}
        else:
            source = {**source, "files": old.get("files", [])}
        edits.save(folder / "edits")
        write_text(meta, json.dumps(source) + "\n")
        return folder

    def load(self, key: str) -> tuple[dict[str, Any], list[Path]] | None:
        """(source, the copied files) of a browser's review, or None when it has none (or it expired)."""
        try:
            folder = self.folder(key)
        except ValueError:
            return None
        meta = folder / SOURCE_FILE
        if not meta.is_file():
            return None
        source = json.loads(meta.read_text())
        return source, [folder / "files" / n for n in source.get("files", [])]

    def edits(self, key: str, shape: Sequence[int]) -> Edits:
        """The saved edits of a browser's review for a series of ``shape`` (``Edits.load``)."""
        return Edits.load(self.folder(key) / "edits", shape)

    def drop(self, key: str) -> None:
        """Forget a browser's review (its series was replaced or cleared)."""
        try:
            shutil.rmtree(self.folder(key), ignore_errors=True)
        except ValueError:
            pass

    def sweep(self, now: float | None = None) -> int:
        """Remove reviews untouched for ``ttl_s``; returns how many."""
        now = time.time() if now is None else now
        gone = 0
        for folder in self.root.glob("[0-9a-f]" * 32) if self.root.is_dir() else []:
            meta = folder / SOURCE_FILE
            stamp = meta.stat().st_mtime if meta.is_file() else folder.stat().st_mtime
            if now - stamp > self.ttl_s:
                shutil.rmtree(folder, ignore_errors=True)
                gone += 1
        return gone
