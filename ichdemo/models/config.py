"""A checkpoint's ``config.json`` as one typed object, built once, with every default in one place.

Like timm's ``pretrained_cfg``, the configuration travels with the weights and says how to feed the model (window,
input size), how to read its output (heatmap stride, thresholds) and where it came from (version, provenance).
``LoadedModel``, the app's model catalogue and ``ichdemo models`` all read a model through ``ModelConfig``, so a
missing entry falls back to the same value everywhere.

Example:
    >>> cfg = ModelConfig.read("checkpoints/lse_unet_lite0_blood")
    >>> cfg.input_size, cfg.window, cfg.heatmap_size, cfg.thresholds.class_thresholds
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ichdemo.constants import CLASSES, WINDOWS
from ichdemo.errors import ModelError
from ichdemo.quantify import Thresholds
from ichdemo.refine import RefineParams

CONFIG_NAME = "config.json"
DEFAULT_INPUT_SIZE = 512
"""The paper's input side (METHOD.md, Input) for configs that do not say."""
DEFAULT_WINDOW: tuple[float, float] = WINDOWS["paper"]
DEFAULT_STRIDES = {"lse_unet": 4, "gap": 32}
"""Input pixels per heatmap cell: the LSE-UNet's top level is input/4, Grad-CAM's last stage input/32."""
DEFAULT_LSE_R = 3.0


def read_config(folder: str | Path) -> dict[str, Any]:
    """The raw ``config.json`` of a checkpoint folder.

    Raises:
        ModelError: no folder, no config.json, unreadable JSON, or no "architecture" entry.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelError(f"checkpoint folder {folder} does not exist")
    path = folder / CONFIG_NAME
    if not path.is_file():
        raise ModelError(f"{folder} is not a checkpoint: no {CONFIG_NAME}")
    try:
        cfg = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelError(f"cannot read {path}: {err}") from err
    if not isinstance(cfg, dict) or "architecture" not in cfg:
        raise ModelError(f"{path} has no 'architecture' entry")
    return cfg


@dataclass(frozen=True)
class ModelConfig:
    """What a checkpoint says about itself.

    Attributes:
        architecture: registry name (``ichdemo.models.create_model``).
        family: "lse_unet" or "gap" (Grad-CAM baseline).
        model_args: keyword arguments that rebuild the network.
        classes: output order (``CLASSES``).
        input_size: square input side in pixels.
        window: (centre, width) in HU applied to HU input (for CT-ICH models the window baked into its JPEGs).
        heatmap_stride: input pixels per native heatmap cell.
        thresholds: the calibrated Algorithm 1 thresholds (defaults where never calibrated).
        refine: the refinement's settings (``ichdemo.refine``; physical defaults where the config has none).
        version: the checkpoint's version string.
        trained: True when training provenance is recorded (an untrained model's maps are meaningless).
        hloss: for lse_unet, whether HLoss was used in training (None when unknown or not an lse_unet).
        lse_r: for lse_unet, the LSE sharpness r.
        raw: the whole config.json (calibration and evaluation records, provenance...).
    """

    architecture: str
    family: str = "gap"
    model_args: dict[str, Any] = field(default_factory=dict)
    classes: tuple[str, ...] = CLASSES
    input_size: int = DEFAULT_INPUT_SIZE
    window: tuple[float, float] = DEFAULT_WINDOW
    heatmap_stride: int = DEFAULT_STRIDES["gap"]
    thresholds: Thresholds = field(default_factory=Thresholds)
    refine: RefineParams = field(default_factory=RefineParams)
    version: str = "unversioned"
    trained: bool = False
    hloss: bool | None = None
    lse_r: float | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def heatmap_size(self) -> int:
        """Native heatmap side in cells: input/4 for lse_unet, the last feature map for Grad-CAM."""
        return max(1, self.input_size // self.heatmap_stride)

    @classmethod
    def from_dict(cls, cfg: dict[str, Any]) -> ModelConfig:
        """Build from a parsed config.json (missing entries take this module's defaults)."""
        family = str(cfg.get("family") or ("lse_unet" if cfg.get("architecture") == "lse_unet" else "gap"))
        w = cfg.get("window") or {}
        train_cfg = (cfg.get("provenance") or {}).get("config") if isinstance(cfg.get("provenance"), dict) else None
        hloss = train_cfg.get("hloss") if isinstance(train_cfg, dict) and family == "lse_unet" else None
        args = dict(cfg.get("model_args") or {})
        return cls(
            architecture=str(cfg.get("architecture", "")),
            family=family,
            model_args=args,
            classes=tuple(cfg.get("classes") or CLASSES),
            input_size=int((cfg.get("input_size") or [3, DEFAULT_INPUT_SIZE])[-1]),
            window=(float(w.get("centre", DEFAULT_WINDOW[0])), float(w.get("width", DEFAULT_WINDOW[1]))),
            heatmap_stride=int(cfg.get("heatmap_stride") or DEFAULT_STRIDES.get(family, DEFAULT_STRIDES["gap"])),
            thresholds=Thresholds.from_config(cfg.get("thresholds")),
            refine=RefineParams.from_config(cfg.get("refine")),
            version=str(cfg.get("version", "unversioned")),
            trained=bool(cfg.get("provenance")),
            hloss=None if hloss is None else bool(hloss),
            lse_r=float(args.get("lse_r", DEFAULT_LSE_R)) if family == "lse_unet" else None,
            raw=cfg,
        )

    @classmethod
    def read(cls, folder: str | Path) -> ModelConfig:
        """``from_dict`` of a checkpoint folder's config.json (see ``read_config`` for the errors)."""
        return cls.from_dict(read_config(folder))
