"""Example series with a known truth: seeded synthetic phantoms (written as DICOM on first use, with their label
maps) and real CT-ICH slices whose expert hemorrhage mask ships beside them (``examples/ctich/truth/``)."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ichdemo.errors import ConfigError
from ichdemo.volume import Volume

log = logging.getLogger(__name__)

PHANTOM_EXAMPLES: dict[str, tuple[str, ...]] = {
    "Normal": (),
    "IPH": ("IPH",),
    "IVH": ("IVH",),
    "SAH": ("SAH",),
    "SDH": ("SDH",),
    "EDH": ("EDH",),
    "IPH + IVH": ("IPH", "IVH"),
}
"""Example button label -> subtypes."""
PHANTOM_SEED = 7


class PhantomExamples:
    """Synthetic series for the example buttons, generated on first use and written once as DICOM.

    Args:
        root: where to write them (default: a new temp folder).
        shape: phantom grid (slices, rows, cols).
        seed: generator seed (the same for every example, so the heads differ only by their lesions).
    """

    def __init__(self, root: str | Path | None = None, shape: Sequence[int] | None = None, seed: int = PHANTOM_SEED):
        self.root = Path(root) if root else Path(tempfile.mkdtemp(prefix="ichdemo-phantoms-"))
        self.shape = tuple(shape) if shape else None
        self.seed = seed
        self._locks = {name: threading.Lock() for name in PHANTOM_EXAMPLES}

    def _folder(self, name: str) -> Path:
        if name not in PHANTOM_EXAMPLES:
            raise ConfigError(f"unknown phantom example {name!r}; choose one of {', '.join(PHANTOM_EXAMPLES)}")
        return self.root / name.replace(" ", "").replace("+", "-")

    def files(self, name: str) -> list[Path]:
        """The DICOM files of example ``name`` (a key of ``PHANTOM_EXAMPLES``), writing them if needed."""
        from ichdemo.phantom import DEFAULT_SHAPE, TRUTH_DIR, generate_phantom, write_phantom

        folder = self._folder(name)
        with self._locks[name]:
            if not (folder / TRUTH_DIR / "truth.json").is_file():
                shutil.rmtree(folder, ignore_errors=True)
                p = generate_phantom(self.seed, PHANTOM_EXAMPLES[name], shape=self.shape or DEFAULT_SHAPE)
                write_phantom(p, folder, "dicom")
        return sorted(f for f in folder.iterdir() if f.is_file())

    def truth_labels(self, name: str, volume: Volume) -> np.ndarray:
        """(S, H, W) uint8: the example's true subtype labels on the grid of ``volume`` (its series as loaded)."""
        from ichdemo.export.nifti import labels_from_nifti
        from ichdemo.phantom import TRUTH_DIR

        self.files(name)
        return labels_from_nifti(self._folder(name) / TRUTH_DIR / "labels.nii.gz", volume)

    def truth(self, name: str) -> dict:
        """The ground truth record (true volumes in mL...) of an example."""
        from ichdemo.phantom import TRUTH_DIR

        self.files(name)
        return json.loads((self._folder(name) / TRUTH_DIR / "truth.json").read_text())

    def warm(self) -> threading.Thread:
        """Write every example in a background thread (start-up), so the first click is instant."""

        def run() -> None:
            for name in PHANTOM_EXAMPLES:
                try:
                    self.files(name)
                except Exception as err:  # noqa: BLE001 - a failed warm-up is retried, and reported, on the click
                    log.warning("phantom example %s not pre-generated: %s", name, err)

        t = threading.Thread(target=run, name="ichdemo-phantoms", daemon=True)
        t.start()
        return t

    def cleanup(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def fingerprint(path: str | Path) -> str:
    """A file's name and content digest: the same file under another path (an upload cache) has the same one."""
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return f"{Path(path).name}:{digest.hexdigest()}"


def image_truth(paths: Sequence[str | Path], volume: Volume, folder: str | Path) -> np.ndarray | None:
    """(1, H, W) uint8 any-hemorrhage truth (0/1) when ``paths`` is one example image of ``folder`` (byte for byte,
    under any name of the upload cache's choosing) that has an expert mask in ``folder/truth/<stem>.png``."""
    import cv2

    folder = Path(folder)
    if len(paths) != 1 or volume.shape[0] != 1:
        return None
    mask = folder / "truth" / f"{Path(paths[0]).stem}.png"
    example = folder / Path(paths[0]).name
    if not (mask.is_file() and example.is_file()) or fingerprint(example) != fingerprint(paths[0]):
        return None
    truth = cv2.imread(str(mask), cv2.IMREAD_GRAYSCALE)
    if truth is None or truth.shape != volume.shape[1:]:
        return None
    return (truth > 127).astype(np.uint8)[None]
