"""What every export carries about where it came from: model, version, thresholds and the draft notice.

An annotator who opens a file weeks later must see, inside the file, that it is an unreviewed draft from a named
model with named thresholds. Each format stores this where its tools show it: the NIfTI ``descrip`` field
and a JSON sidecar, DICOM SEG SeriesDescription/ContentLabel/ContentDescription and AlgorithmIdentification, nrrd
header fields, the CVAT label map comment, Label Studio's ``model_version``, COCO ``info`` and PNG text chunks.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ichdemo import __version__
from ichdemo.constants import RESEARCH_NOTICE
from ichdemo.quantify import Thresholds

DRAFT_LABEL = "DRAFT - research use only"
"""Short form of the notice, for fields with little room (file headers, image corners)."""


def _utc_now() -> str:
    return _dt.datetime.now(_dt.UTC).replace(microsecond=0).isoformat()


def _compact(values: tuple[float, ...]) -> str:
    """(0.5, 0.25, 75.0) -> "0.5/0.25/75": short and exact enough to identify a setting."""
    return "/".join(f"{v:g}" for v in values)


@dataclass(frozen=True)
class Provenance:
    """The stamp put on every export.

    Attributes:
        model: model name (``LoadedModel.name``).
        version: model version from its config ("unversioned" when it has none).
        thresholds: the thresholds that made the label map (``Thresholds``).
        weights_sha256: first hex digits of the weights' digest, when known.
        notice: the research-use notice (``constants.RESEARCH_NOTICE``).
        software: "ichdemo <version>".
        created: UTC time of the export, ISO 8601.
    """

    model: str
    version: str
    thresholds: Thresholds
    weights_sha256: str = ""
    notice: str = RESEARCH_NOTICE
    software: str = f"ichdemo {__version__}"
    created: str = field(default_factory=_utc_now)

    @classmethod
    def build(cls, model_info: Mapping[str, Any] | str, thresholds: Thresholds | Mapping[str, Any]) -> Provenance:
        """From ``LoadedModel.describe()`` (or a report's "model" entry, or just a name) and thresholds.

        Args:
            model_info: dict with at least "name" (and "version", "weights_sha256" when known), or a model name.
            thresholds: a ``Thresholds`` or its ``to_dict()`` form (as stored in report.json).
        """
        info = {"name": model_info} if isinstance(model_info, str) else dict(model_info)
        t = thresholds if isinstance(thresholds, Thresholds) else Thresholds.from_config(dict(thresholds))
        return cls(
            model=str(info.get("name") or "unknown-model"),
            version=str(info.get("version") or "unversioned"),
            thresholds=t,
            weights_sha256=str(info.get("weights_sha256") or ""),
        )

    @property
    def thresholds_text(self) -> str:
        """e.g. "class 0.5/0.5/0.5/0.5/0.5, mask 75/125/125/75/25 (IPH/IVH/SAH/SDH/EDH)"."""
        t = self.thresholds
        scale = "" if t.scale_mode == "image" else f", scale {t.scale_mode}"
        return f"class {_compact(t.class_thresholds)}, mask {_compact(t.mask_thresholds)}{scale} (IPH/IVH/SAH/SDH/EDH)"

    @property
    def model_text(self) -> str:
        """e.g. "lse_unet_lite0 v1"."""
        return f"{self.model} {self.version}"

    @property
    def headline(self) -> str:
        """One line for headers: "DRAFT - research use only: lse_unet_lite0 v1; class ...; mask ..."."""
        return f"{DRAFT_LABEL}: {self.model_text}; {self.thresholds_text}"

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form, the same in every sidecar."""
        return {
            "status": DRAFT_LABEL,
            "notice": self.notice,
            "model": self.model,
            "model_version": self.version,
            "weights_sha256": self.weights_sha256,
            "thresholds": self.thresholds.to_dict(),
            "software": self.software,
            "created": self.created,
        }
