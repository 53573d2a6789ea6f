"""A person's corrections of a model's draft: slices whose labels they painted, erased or accepted.

The draft stays what the model and the thresholds make (``Session.labels``); an ``Edits`` holds only the slices a
person touched, each a full (H, W) label map that replaces the draft's slice, and each slice's review status. Every
change can be undone and redone; ``save`` and ``load`` keep them on disk (written atomically), so that they outlive a
page reload or a server restart.

Example:
    >>> ed = Edits((24, 256, 256))
    >>> ed.paint(12, brush, "SDH", draft)            # brush: (H, W) bool, draft: the model's (S, H, W) labels
    >>> ed.erase(13, eraser, draft)
    >>> ed.undo()                                     # slice 13 is the draft's again
    >>> labels = ed.apply(draft)                      # what exports and volumes use
    >>> ed.status_of(12), ed.status_of(13)
    ('edited', 'draft')
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from scipy import ndimage

from ichdemo.atomic import write_bytes, write_text
from ichdemo.constants import CLASSES
from ichdemo.errors import UnsupportedInputError

Status = Literal["draft", "edited", "reviewed", "no-hemorrhage"]
"""A slice's review status: the model's draft untouched; painted or erased by a person; accepted as it is (draft or
edited); declared free of hemorrhage (all normal)."""
STATUSES: tuple[str, ...] = ("draft", "edited", "reviewed", "no-hemorrhage")
EDITS_FILE, LABELS_FILE = "edits.json", "edits.npz"
MAX_HISTORY = 200  # undo steps kept


@dataclass
class _Step:
    index: int
    before: tuple[np.ndarray | None, str]  # (the slice's edit or None, its status) before the change
    after: tuple[np.ndarray | None, str]


@dataclass
class Edits:
    """The corrected slices of one series.

    Attributes:
        shape: (S, H, W) of the series' label map.
        slices: slice index -> (H, W) uint8 labels (0 normal, k = CLASSES[k-1]) replacing the draft's slice.
        status: slice index -> its ``Status`` when not "draft".
    """

    shape: tuple[int, int, int]
    slices: dict[int, np.ndarray] = field(default_factory=dict)
    status: dict[int, str] = field(default_factory=dict)
    revision: int = 0  # counts changes (undo and redo included): caches of what the edits change key on it
    _undo: list[_Step] = field(default_factory=list, repr=False)
    _redo: list[_Step] = field(default_factory=list, repr=False)

    @classmethod
    def from_labels(cls, labels: np.ndarray, statuses: Sequence[str]) -> Edits:
        """Edits that put back a review exported before: ``labels`` (S, H, W) on every slice whose status in
        ``statuses`` (one per slice, ``summary()["slices"]``) is not "draft"; no undo history."""
        labels = np.asarray(labels, np.uint8)
        ed = cls(tuple(labels.shape))  # type: ignore[arg-type]
        for i, status in enumerate(statuses):
            if status != "draft":
                ed.slices[i], ed.status[i] = labels[i].copy(), status
        return ed

    # ------------------------------------------------------------------ reading
    def status_of(self, index: int) -> str:
        return self.status.get(self._check(index), "draft")

    def current(self, index: int, draft: np.ndarray) -> np.ndarray:
        """(H, W) labels of slice ``index``: the person's where they edited it, else the draft's."""
        i = self._check(index)
        return self.slices[i] if i in self.slices else np.asarray(draft[i], np.uint8)

    def apply(self, draft: np.ndarray) -> np.ndarray:
        """(S, H, W) labels: the draft with every edited slice replaced (a copy; the draft is not changed)."""
        self._check_shape(draft)
        out = np.array(draft, np.uint8, copy=True)
        for i, lab in self.slices.items():
            out[i] = lab
        return out

    def provenance(self) -> list[str]:
        """Each slice's status, in slice order (for reports and exports)."""
        return [self.status.get(i, "draft") for i in range(self.shape[0])]

    def summary(self) -> dict:
        """For report.json: each slice's status and the counts, so that a reader knows what a person checked."""
        slices = self.provenance()
        return {
            "slices": slices,
            "counts": {s: slices.count(s) for s in STATUSES},
            "note": "draft = the model's, untouched; edited = painted or erased by a person; reviewed = accepted by "
            "a person; no-hemorrhage = declared normal by a person",
        }

    def reviewed(self) -> int:
        """How many slices a person has seen through: edited, accepted or declared free of hemorrhage."""
        return sum(1 for s in self.status.values() if s != "draft")

    def next_unreviewed(self, after: int = -1) -> int | None:
        """The first slice after ``after`` (wrapping round) still a plain draft; None when all are reviewed."""
        n = self.shape[0]
        for k in range(1, n + 1):
            i = (after + k) % n
            if self.status.get(i, "draft") == "draft":
                return i
        return None

    # ------------------------------------------------------------------ changes
    def paint(self, index: int, mask: np.ndarray, subtype: str, draft: np.ndarray) -> None:
        """Label the pixels of ``mask`` (H, W bool) on slice ``index`` as ``subtype`` (a name of CLASSES)."""
        if subtype not in CLASSES:
            raise UnsupportedInputError(f"unknown subtype {subtype!r}; choose one of {', '.join(CLASSES)}")
        self._set_pixels(index, mask, CLASSES.index(subtype) + 1, draft)

    def erase(self, index: int, mask: np.ndarray, draft: np.ndarray) -> None:
        """Make the pixels of ``mask`` normal (0) on slice ``index``."""
        self._set_pixels(index, mask, 0, draft)

    def fill(self, index: int, outline: np.ndarray, subtype: str, draft: np.ndarray) -> None:
        """Label a closed outline (H, W bool, the line a person drew) and everything it encloses as ``subtype``."""
        self.paint(index, ndimage.binary_fill_holes(self._mask(outline)), subtype, draft)

    def remove_region(self, index: int, row: int, col: int, draft: np.ndarray) -> bool:
        """Erase the connected region (8-connected, one label) under pixel (row, col); False where it is normal."""
        lab = self.current(index, draft)
        if not (0 <= row < lab.shape[0] and 0 <= col < lab.shape[1]) or lab[row, col] == 0:
            return False
        regions, _ = ndimage.label(lab == lab[row, col], structure=np.ones((3, 3), bool))
        self.erase(index, regions == regions[row, col], draft)
        return True

    def clear_slice(self, index: int) -> None:
        """Every pixel of slice ``index`` normal, as an edit (the draft's labels there are dropped)."""
        self._change(index, np.zeros(self.shape[1:], np.uint8), "edited")

    def no_hemorrhage(self, index: int) -> None:
        """Slice ``index`` reviewed and free of hemorrhage."""
        self._change(index, np.zeros(self.shape[1:], np.uint8), "no-hemorrhage")

    def accept(self, index: int) -> None:
        """Slice ``index`` reviewed as it stands (the draft, or the person's edit of it)."""
        i = self._check(index)
        self._change(i, self.slices.get(i), "reviewed")

    def revert(self, index: int) -> None:
        """Slice ``index`` back to the model's draft, unreviewed."""
        self._change(index, None, "draft")

    def undo(self) -> int | None:
        """Undo the last change; returns its slice (None when there is nothing to undo)."""
        if not self._undo:
            return None
        step = self._undo.pop()
        self._restore(step.index, *step.before)
        self._redo.append(step)
        return step.index

    def redo(self) -> int | None:
        """Redo the last undone change; returns its slice (None when there is nothing to redo)."""
        if not self._redo:
            return None
        step = self._redo.pop()
        self._restore(step.index, *step.after)
        self._undo.append(step)
        return step.index

    # ------------------------------------------------------------------ disk
    def save(self, folder: str | Path) -> None:
        """Write the edits to ``folder`` (edits.json and edits.npz, each atomically; the undo history is not kept)."""
        import io

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        np.savez_compressed(buf, **{f"s{i}": lab for i, lab in self.slices.items()})
        write_bytes(folder / LABELS_FILE, buf.getvalue())
        meta = {"shape": list(self.shape), "status": {str(i): s for i, s in sorted(self.status.items())}}
        write_text(folder / EDITS_FILE, json.dumps(meta) + "\n")

    @classmethod
    def load(cls, folder: str | Path, shape: Sequence[int]) -> Edits:
        """The edits saved in ``folder`` for a series of ``shape``; empty edits when there are none.

        Raises:
            UnsupportedInputError: saved edits of a series of another shape, or damaged files.
        """
        folder = Path(folder)
        shape = tuple(int(v) for v in shape)
        if not (folder / EDITS_FILE).is_file():
            return cls(shape)
        try:
            meta = json.loads((folder / EDITS_FILE).read_text())
            with np.load(folder / LABELS_FILE) as z:
                slices = {int(k[1:]): np.asarray(z[k], np.uint8) for k in z.files}
        except (OSError, ValueError, KeyError) as err:
            raise UnsupportedInputError(f"saved edits unreadable: {err}") from err
        if tuple(meta.get("shape", ())) != shape:
            raise UnsupportedInputError(f"saved edits are for a series of shape {meta.get('shape')}, not {shape}")
        status = {int(i): s for i, s in meta.get("status", {}).items() if s in STATUSES}
        out = cls(shape, slices, status)
        for i in [*slices, *status]:
            out._check(i)
        return out

    # ------------------------------------------------------------------ helpers
    def _set_pixels(self, index: int, mask: np.ndarray, value: int, draft: np.ndarray) -> None:
        lab = self.current(index, draft).copy()
        lab[self._mask(mask)] = value
        self._change(index, lab, "edited")

    def _change(self, index: int, lab: np.ndarray | None, status: str) -> None:
        i = self._check(index)
        before = (self.slices.get(i), self.status.get(i, "draft"))
        self._restore(i, lab, status)
        self._undo.append(_Step(i, before, (lab, status)))
        del self._undo[:-MAX_HISTORY]
        self._redo.clear()

    def _restore(self, i: int, lab: np.ndarray | None, status: str) -> None:
        self.revision += 1
        if lab is None:
            self.slices.pop(i, None)
        else:
            self.slices[i] = lab
        if status == "draft":
            self.status.pop(i, None)
        else:
            self.status[i] = status

    def _mask(self, mask: np.ndarray) -> np.ndarray:
        m = np.asarray(mask).astype(bool)
        if m.shape != self.shape[1:]:
            raise UnsupportedInputError(f"mask of shape {m.shape} for slices of {self.shape[1:]}")
        return m

    def _check(self, index: int) -> int:
        i = int(index)
        if not 0 <= i < self.shape[0]:
            raise UnsupportedInputError(f"slice {index} outside the series (0..{self.shape[0] - 1})")
        return i

    def _check_shape(self, draft: np.ndarray) -> None:
        if tuple(np.shape(draft)) != self.shape:
            raise UnsupportedInputError(f"labels of shape {np.shape(draft)} for edits of a {self.shape} series")
