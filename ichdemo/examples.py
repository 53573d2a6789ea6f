"""One-click example series: seeded synthetic phantoms, written as DICOM on first use, with their ground truth."""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path

from ichdemo.errors import ConfigError

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
