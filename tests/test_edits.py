"""A person's corrections of a draft (ichdemo.edits): paint, erase, fill, remove a region, review, undo, disk."""

from __future__ import annotations

import numpy as np
import pytest

from ichdemo.edits import Edits
from ichdemo.errors import UnsupportedInputError

SHAPE = (4, 32, 32)


@pytest.fixture()
def draft() -> np.ndarray:
    lab = np.zeros(SHAPE, np.uint8)
    lab[1, 4:10, 4:10] = 1  # an IPH square on slice 1
    lab[1, 20:24, 20:24] = 4  # an SDH square on slice 1
    return lab


def _box(r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
    m = np.zeros(SHAPE[1:], bool)
    m[r0:r1, c0:c1] = True
    return m


def test_paint_erase_and_the_draft_stays_untouched(draft):
    ed = Edits(SHAPE)
    before = draft.copy()
    ed.paint(2, _box(0, 3, 0, 3), "IVH", draft)
    ed.erase(1, _box(4, 10, 4, 7), draft)
    out = ed.apply(draft)
    assert np.array_equal(draft, before)  # the model's draft is never changed
    assert (out[2, :3, :3] == 2).all() and out[2].sum() == 9 * 2
    assert (out[1, 4:10, 4:7] == 0).all() and (out[1, 4:10, 7:10] == 1).all() and (out[1, 20:24, 20:24] == 4).all()
    assert np.array_equal(out[[0, 3]], draft[[0, 3]])
    assert ed.provenance() == ["draft", "edited", "edited", "draft"] and ed.reviewed() == 2


def test_undo_redo_walk_back_and_forth(draft):
    ed = Edits(SHAPE)
    ed.paint(0, _box(0, 2, 0, 2), "SAH", draft)
    ed.paint(0, _box(5, 6, 5, 6), "EDH", draft)
    assert ed.undo() == 0 and ed.apply(draft)[0, 5, 5] == 0 and ed.apply(draft)[0, 0, 0] == 3
    assert ed.undo() == 0 and ed.status_of(0) == "draft" and np.array_equal(ed.apply(draft), draft)
    assert ed.undo() is None
    assert ed.redo() == 0 and ed.apply(draft)[0, 0, 0] == 3 and ed.apply(draft)[0, 5, 5] == 0
    ed.erase(0, _box(0, 1, 0, 1), draft)  # a new change drops what could be redone
    assert ed.redo() is None


def test_fill_an_outline_and_remove_a_region_with_one_click(draft):
    ed = Edits(SHAPE)
    ring = _box(10, 20, 10, 20) & ~_box(11, 19, 11, 19)
    ed.fill(3, ring, "SDH", draft)
    assert (ed.apply(draft)[3, 10:20, 10:20] == 4).all() and ed.apply(draft)[3].astype(bool).sum() == 100
    assert ed.remove_region(1, 5, 5, draft)  # the IPH square goes, the SDH square stays
    out = ed.apply(draft)[1]
    assert (out[4:10, 4:10] == 0).all() and (out[20:24, 20:24] == 4).all()
    assert not ed.remove_region(1, 0, 0, draft)  # a normal pixel: nothing to remove


def test_review_states_and_the_next_unreviewed_slice(draft):
    ed = Edits(SHAPE)
    ed.accept(1)
    assert ed.status_of(1) == "reviewed" and np.array_equal(ed.apply(draft), draft)  # accepted as drafted
    ed.no_hemorrhage(1)
    assert ed.status_of(1) == "no-hemorrhage" and not ed.apply(draft)[1].any()
    ed.clear_slice(2)
    assert ed.status_of(2) == "edited" and not ed.apply(draft)[2].any()
    assert ed.next_unreviewed() == 0 and ed.next_unreviewed(0) == 3 and ed.next_unreviewed(3) == 0
    ed.revert(1)
    assert ed.status_of(1) == "draft" and np.array_equal(ed.apply(draft)[1], draft[1])
    for i in range(SHAPE[0]):
        ed.accept(i)
    assert ed.next_unreviewed() is None and ed.reviewed() == SHAPE[0]


def test_saved_edits_come_back_exactly(draft, tmp_path):
    ed = Edits(SHAPE)
    ed.paint(2, _box(3, 9, 1, 4), "EDH", draft)
    ed.accept(0)
    ed.save(tmp_path / "s")
    back = Edits.load(tmp_path / "s", SHAPE)
    assert np.array_equal(back.apply(draft), ed.apply(draft)) and back.provenance() == ed.provenance()
    assert Edits.load(tmp_path / "none", SHAPE).provenance() == ["draft"] * 4
    with pytest.raises(UnsupportedInputError, match="series of shape"):
        Edits.load(tmp_path / "s", (5, 32, 32))


def test_bad_edits_are_refused_by_name(draft):
    ed = Edits(SHAPE)
    with pytest.raises(UnsupportedInputError, match="unknown subtype 'XYZ'"):
        ed.paint(0, _box(0, 1, 0, 1), "XYZ", draft)
    with pytest.raises(UnsupportedInputError, match="slice 9 outside the series"):
        ed.accept(9)
    with pytest.raises(UnsupportedInputError, match="mask of shape"):
        ed.erase(0, np.ones((5, 5), bool), draft)
    assert ed.provenance() == ["draft"] * 4  # nothing half-done
