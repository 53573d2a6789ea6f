"""RSNA 2019 Intracranial Hemorrhage Detection as training series, rebuilt from DICOM tags.

Layout (Kaggle release)::

    ROOT/stage_2_train.csv            rows "ID_<image>_<subtype>,<0|1>", subtypes epidural, intraparenchymal,
                                      intraventricular, subarachnoid, subdural, any
    ROOT/stage_2_train/ID_<image>.dcm one slice per file (also accepted: stage_2_train_images/, or any folder of
                                      .dcm files under ROOT)

The files carry no slice order, so series are rebuilt from their headers: grouped by SeriesInstanceUID (patient =
PatientID) and sorted by ImagePositionPatient along the slice normal, so a 3-slice stack holds true neighbours.
The header index takes a while on the full release (about 750k files): it is cached as JSON in ``cache_dir``
(default ``data_cache/`` of the working directory, git-ignored), keyed by the folder and its file count.
Images without a label row are skipped with a note. Pixels are converted to HU (RescaleSlope/Intercept) and
windowed (``window``, paper's by default).
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ichdemo.constants import CLASSES
from ichdemo.data.series import Series
from ichdemo.errors import CorruptInputError, UnsupportedInputError
from ichdemo.io.dicom import decode_pixels, read_header, to_hu
from ichdemo.transforms import to_unit

RSNA_SUBTYPES: dict[str, str] = {
    "IPH": "intraparenchymal",
    "IVH": "intraventricular",
    "SAH": "subarachnoid",
    "SDH": "subdural",
    "EDH": "epidural",
}
"""RSNA subtype name of each class in ``CLASSES``."""

CSV_NAMES: tuple[str, ...] = ("stage_2_train.csv", "stage_1_train.csv", "train.csv")
IMAGE_DIRS: tuple[str, ...] = ("stage_2_train", "stage_2_train_images", "stage_1_train_images", "train")


def find_csv(root: Path) -> Path:
    """The label CSV of an RSNA folder.

    Raises:
        UnsupportedInputError: none of ``CSV_NAMES`` is there.
    """
    for name in CSV_NAMES:
        if (root / name).is_file():
            return root / name
    raise UnsupportedInputError(f"{root}: not an RSNA 2019 folder ({' or '.join(CSV_NAMES)} not found)")


def read_labels(csv_path: Path) -> dict[str, np.ndarray]:
    """{image id: (5,) uint8 labels in ``CLASSES`` order} from "ID_<image>_<subtype>,Label" rows."""
    index = {name: k for k, name in enumerate(RSNA_SUBTYPES[c] for c in CLASSES)}
    out: dict[str, np.ndarray] = {}
    with open(csv_path, newline="", encoding="utf-8-sig") as fh:
        for row in csv.DictReader(fh):
            image, _, subtype = row["ID"].rpartition("_")
            if subtype in index:
                out.setdefault(image, np.zeros(len(CLASSES), np.uint8))[index[subtype]] = int(float(row["Label"]))
    return out


def find_images(root: Path) -> list[Path]:
    """The DICOM files of an RSNA folder (a known image folder, else every .dcm under ``root``)."""
    for name in IMAGE_DIRS:
        if (root / name).is_dir():
            files = sorted((root / name).glob("*.dcm"))
            if files:
                return files
    return sorted(root.rglob("*.dcm"))


def _header_record(path: Path, root: Path) -> dict:
    ds = read_header(path)
    iop = [float(v) for v in ds.get("ImageOrientationPatient", [1, 0, 0, 0, 1, 0])]
    pos = [float(v) for v in ds.get("ImagePositionPatient", [0, 0, float(ds.get("InstanceNumber", 0) or 0)])]
    normal = np.cross(iop[:3], iop[3:])
    return {
        "file": str(path.relative_to(root)),
        "sop": str(ds.get("SOPInstanceUID", path.stem)),
        "series": str(ds.get("SeriesInstanceUID", "unknown")),
        "patient": str(ds.get("PatientID", "unknown")),
        "z": float(np.dot(normal, pos)),
        "spacing": [float(v) for v in ds.get("PixelSpacing", [1.0, 1.0])],
    }


def build_index(root: Path, files: list[Path], cache_dir: Path | None) -> list[dict]:
    """Header records of ``files`` under ``root`` (cached as JSON in ``cache_dir`` when given)."""
    key = hashlib.sha1(f"{root.resolve()}|{len(files)}".encode()).hexdigest()[:16]
    cache = cache_dir / f"rsna_index_{key}.json" if cache_dir else None
    if cache is not None and cache.is_file():
        return json.loads(cache.read_text())
    records = [_header_record(p, root) for p in files]
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps(records))
    return records


class RSNASeries(Series):
    """One RSNA series: DICOM files in slice order, read and windowed on demand."""

    def __init__(self, patient: str, name: str, files: list[Path], labels: np.ndarray, spacing, window: str) -> None:
        self.files, self.window = files, window
        super().__init__(patient=patient, name=name, labels=labels, spacing=spacing)

    def read(self, indices: Sequence[int]) -> np.ndarray:
        out = []
        for i in indices:
            ds = _read(self.files[i])
            out.append(to_hu(ds, decode_pixels(ds, self.files[i].name)))
        return to_unit(np.stack(out), prewindowed=False, window_=self.window)


def _read(path: Path):
    """The full dataset of one file (typed error when it cannot be parsed)."""
    import pydicom

    try:
        return pydicom.dcmread(path, force=True)
    except Exception as err:  # noqa: BLE001 - pydicom raises many types on damaged files
        raise CorruptInputError(f"{path.name}: DICOM file cannot be read ({type(err).__name__})") from err


def _slice_gap(zs: list[float]) -> float:
    steps = np.diff(sorted(zs))
    steps = steps[steps > 1e-3]
    return float(np.median(steps)) if steps.size else 5.0


def rsna_series(
    root: str | Path, window: str = "paper", cache_dir: str | Path | None = "data_cache"
) -> tuple[list[RSNASeries], list[str]]:
    """Every labelled series of an RSNA folder, and notes on what was skipped.

    Raises:
        UnsupportedInputError: no CSV, no DICOM file, or no labelled image.
    """
    root = Path(root)
    labels = read_labels(find_csv(root))
    files = find_images(root)
    if not files:
        raise UnsupportedInputError(f"{root}: no .dcm images found (expected stage_2_train/ID_<image>.dcm)")
    records = build_index(root, files, Path(cache_dir) if cache_dir else None)
    by_series: dict[str, list[dict]] = defaultdict(list)
    unlabelled = 0
    for rec in records:
        image = Path(rec["file"]).stem if Path(rec["file"]).stem in labels else rec["sop"]
        if image not in labels:
            unlabelled += 1
            continue
        by_series[rec["series"]].append({**rec, "image": image})
    if not by_series:
        raise UnsupportedInputError(f"{root}: none of the {len(files)} images has a label row in the CSV")
    series = []
    for uid, recs in sorted(by_series.items()):
        recs.sort(key=lambda r: r["z"])
        spacing = (_slice_gap([r["z"] for r in recs]), *recs[0]["spacing"])
        series.append(RSNASeries(recs[0]["patient"], uid, [root / r["file"] for r in recs],
                                 np.stack([labels[r["image"]] for r in recs]).astype(np.float32), spacing, window))
    notes = [f"RSNA: {unlabelled} image(s) without a label row skipped"] if unlabelled else []
    return series, notes
