"""Gradio's file cache, kept tidy by the app itself: uploads, returned images and export copies older than an age
go on a schedule (``ICHDEMO_DELETE_CACHE``), and the empty upload stubs Gradio 6 leaves behind go too.

Gradio's own ``delete_cache`` is not used: see ``tidy_cache``. ``server_lifespan`` runs the schedule inside the
server (``demo.launch(app_kwargs={"lifespan": server_lifespan})``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import stat
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import gradio as gr
from gradio.route_utils import delete_files_created_by_app
from gradio.utils import get_upload_folder

log = logging.getLogger("ichdemo.app")
DEFAULT_SCHEDULE = "1800,3600"


def cache_schedule(text: str) -> tuple[int, int]:
    """``"frequency,age"`` in seconds -> the cache schedule (``tidy_cache``): every ``frequency`` s, the files
    Gradio cached for this app (uploads, returned images, export copies) that are older than ``age`` s go."""
    why = f"ICHDEMO_DELETE_CACHE must be 'frequency,age' in seconds, frequency > 0 (e.g. 1800,3600), not {text!r}"
    try:
        frequency, age = (int(v) for v in text.split(","))
    except ValueError as err:
        raise ValueError(why) from err
    if frequency <= 0 or age < 0:
        raise ValueError(why)
    return frequency, age


def sweep_upload_stubs(age_s: float, root: str | Path | None = None) -> int:
    """Remove the empty ``tmp*`` files older than ``age_s`` at the top of Gradio's cache (default: its upload
    folder); returns how many were removed.

    Gradio 6's ``gr.File`` (type "filepath") creates one such file, never used, for every uploaded file it hands to
    a callback, and does not register it, so ``delete_cache`` never removes it: without this sweep the cache
    gains one inode per uploaded file for as long as the server runs. Only empty files are touched (an upload in
    progress is written under such a name too, which is why young ones are left alone).
    """
    limit = time.time() - age_s
    removed = 0
    try:
        entries = list(os.scandir(root or get_upload_folder()))
    except FileNotFoundError:
        return 0
    for entry in entries:
        if not entry.name.startswith("tmp"):
            continue
        with contextlib.suppress(FileNotFoundError):  # an upload's temp file is renamed into place meanwhile
            st = entry.stat(follow_symlinks=False)
            if stat.S_ISREG(st.st_mode) and st.st_size == 0 and st.st_mtime <= limit:
                os.unlink(entry.path)
                removed += 1
    return removed


VIEW_PICTURE = re.compile(r"[0-9a-f]{24}\.jpg")
"""Names of the viewer's pictures (``Session.picture``: a content digest), as Gradio copies them into its cache."""


def sweep_view_pictures(age_s: float, root: str | Path | None = None) -> int:
    """Remove the viewer's pictures older than ``age_s`` (by ctime, as Gradio ages files) from Gradio's cache and
    the folders they leave empty; returns how many were removed.

    A picture handed to several sessions (the same slice drawn alike) is cached once under its digest and not
    always in a file set that ``delete_files_created_by_app`` walks (a session's copy of a component keeps its
    own), so without this sweep such copies outlive their sessions.
    """
    limit = time.time() - age_s
    removed = 0
    for path in Path(root or get_upload_folder()).glob("*/*.jpg"):
        if not VIEW_PICTURE.fullmatch(path.name):
            continue
        with contextlib.suppress(FileNotFoundError, OSError):
            if path.lstat().st_ctime <= limit:
                path.unlink()
                removed += 1
                path.parent.rmdir()  # only when empty: OSError otherwise
    return removed


def tidy_cache(blocks: gr.Blocks, age: float) -> None:
    """One pass of the cache clean-up: ``sweep_upload_stubs``, ``sweep_view_pictures`` and the pass of Gradio's
    ``delete_cache`` (``delete_files_created_by_app``), for files older than ``age`` s; and the reviews in progress
    past their own time to live (``ReviewStore.sweep``, a day by default).

    Gradio's own ``delete_cache`` is not used: it runs that pass in a worker thread on a task that ends for good at
    its first exception, and the pass iterates the set of uploaded files that every upload request adds to, so
    under load it fails with "Set changed size during iteration" and the cache is never emptied again (Gradio
    6.31). Here such a pass is retried on the next one.
    """
    sweep_upload_stubs(age)
    sweep_view_pictures(age)
    if hasattr(blocks, "ichdemo_app"):
        blocks.ichdemo_app.reviews.sweep()
    try:
        delete_files_created_by_app(blocks, age)
    except RuntimeError as err:  # an upload or a reply changed a file set under the pass
        log.info("cache clean-up retried on its next pass: %s", err)


@contextlib.asynccontextmanager
async def server_lifespan(server: Any) -> AsyncIterator[None]:
    """The cache schedule of ``build_demo``: ``tidy_cache`` every ``frequency`` seconds for files older than
    ``age``; when the server stops, every file of this app and the stubs older than ``age``."""
    blocks = server.get_blocks()
    frequency, age = getattr(blocks, "ichdemo_delete_cache", None) or cache_schedule(DEFAULT_SCHEDULE)

    async def sweep() -> None:
        while True:
            await asyncio.sleep(frequency)
            try:
                await asyncio.to_thread(tidy_cache, blocks, age)
            except Exception:  # noqa: BLE001 - a failed pass must not end the schedule, as Gradio's did
                log.exception("cleaning the cache failed; retried on the next pass")

    task = asyncio.create_task(sweep())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        delete_files_created_by_app(blocks, None)  # what Gradio's delete_cache does on stop
        sweep_upload_stubs(age)  # not younger ones: another server may share the cache folder
