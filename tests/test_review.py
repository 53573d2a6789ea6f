"""A browser's review in progress on disk (ichdemo.review): kept, reopened, isolated, replaced, swept."""

from __future__ import annotations

import os
import stat
import time
from types import SimpleNamespace

import numpy as np
import pytest

from ichdemo.edits import Edits
from ichdemo.review import ReviewStore, new_key

SHAPE = (3, 16, 16)


@pytest.fixture()
def series(tmp_path):
    files = []
    for i in range(3):
        f = tmp_path / "upload" / f"slice{i}.dcm"
        f.parent.mkdir(exist_ok=True)
        f.write_bytes(bytes([i]) * 10)
        files.append(f)
    return files


def _edits() -> Edits:
    ed = Edits(SHAPE)
    mask = np.zeros(SHAPE[1:], bool)
    mask[2:5, 2:5] = True
    ed.paint(1, mask, "IVH", np.zeros(SHAPE, np.uint8))
    return ed


def test_a_review_comes_back_with_its_files_and_edits(tmp_path, series):
    store, key = ReviewStore(tmp_path / "reviews"), new_key()
    assert store.load(key) is None
    store.save(key, {"series": "s1", "image_window": "auto"}, series, _edits())
    for f in series:
        f.unlink()  # the upload folder is swept: the review has its own copies
    again = ReviewStore(tmp_path / "reviews")  # a restarted server
    source, files = again.load(key)
    assert source["series"] == "s1" and source["image_window"] == "auto"
    assert [f.read_bytes() for f in files] == [bytes([i]) * 10 for i in range(3)]
    ed = again.edits(key, SHAPE)
    assert ed.provenance() == ["draft", "edited", "draft"]
    assert (ed.apply(np.zeros(SHAPE, np.uint8))[1, 2:5, 2:5] == 2).all()
    assert stat.S_IMODE(store.folder(key).stat().st_mode) == 0o700


def test_keys_are_isolated_and_a_bad_key_is_refused(tmp_path, series):
    store = ReviewStore(tmp_path)
    a, b = new_key(), new_key()
    store.save(a, {"series": "s1"}, series, _edits())
    assert store.load(b) is None
    assert key_not_in_listing(store, a)
    for bad in ["", "../../etc", "a" * 8, None, "x/" * 20]:
        assert store.load(bad) is None
        with pytest.raises(ValueError):
            store.folder(bad)
    store.drop("../..")  # nothing happens, nothing raises
    assert store.load(a) is not None


def key_not_in_listing(store: ReviewStore, key: str) -> bool:
    return all(key not in p.name for p in store.root.rglob("*"))


def test_another_series_replaces_the_old_files_and_edits(tmp_path, series):
    store, key = ReviewStore(tmp_path / "r"), new_key()
    store.save(key, {"series": "s1"}, series, _edits())
    store.save(key, {"series": "s2"}, series[:1], Edits(SHAPE))
    source, files = store.load(key)
    assert source["series"] == "s2" and len(files) == 1 and len(list((store.folder(key) / "files").iterdir())) == 1
    assert store.edits(key, SHAPE).reviewed() == 0
    store.drop(key)
    assert store.load(key) is None


def test_secret_is_made_once_and_kept(tmp_path):
    first = ReviewStore(tmp_path).secret()
    assert len(first) >= 24 and ReviewStore(tmp_path).secret() == first
    assert stat.S_IMODE((tmp_path / ".browser-secret").stat().st_mode) == 0o600


def test_sweep_removes_only_reviews_past_their_time(tmp_path, series):
    store = ReviewStore(tmp_path, ttl_s=3600)
    old, fresh = new_key(), new_key()
    store.save(old, {"series": "s1"}, series, _edits())
    store.save(fresh, {"series": "s1"}, series, _edits())
    past = time.time() - 7200
    os.utime(store.folder(old) / "source.json", (past, past))
    assert store.sweep() == 1
    assert store.load(old) is None and store.load(fresh) is not None
    assert store.secret()  # the secret is not a review: never swept
    assert ReviewStore(tmp_path, ttl_s=3600).sweep(now=time.time() + 7200) == 1


def test_the_cache_schedule_sweeps_reviews(tmp_path, series):
    from webui import cache

    store, key = ReviewStore(tmp_path, ttl_s=0), new_key()
    store.save(key, {"series": "s1"}, series, _edits())
    time.sleep(0.01)
    cache.tidy_cache(SimpleNamespace(blocks={}, temp_file_sets=[], ichdemo_app=SimpleNamespace(reviews=store)), 3600)
    assert store.load(key) is None
