"""Random geometric augmentation of image batches: one affine transform per image (rotation, translation, scale,
shear), applied with ``F.affine_grid`` / ``F.grid_sample`` (bilinear, zeros outside).

The paper's code trains with rotation +-30 degrees, translation 10%, scale 0.8 to 1.2 and shear; those are the
defaults of ``AffineRanges`` (shear +-10 degrees: the paper's code names shear without a range we could read, so
DECIDE: a moderate 10 degrees, configurable). Pure tensor functions, no dataset plumbing: the caller draws
parameters from its own seeded ``torch.Generator`` so a run is reproducible.

Apply it to images in [0, 1] (before mean/std normalisation) so that "zeros outside" is air, as the letterbox
padding is.

Example:
    >>> gen = torch.Generator().manual_seed(0)
    >>> theta = random_affine(4, gen, AffineRanges())
    >>> warp(torch.rand(4, 3, 64, 64), theta).shape
    torch.Size([4, 3, 64, 64])
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ichdemo.errors import ConfigError


@dataclass(frozen=True)
class AffineRanges:
    """Ranges of the random affine transform, each drawn uniformly and independently per image.

    Attributes:
        rotate: rotation in degrees, drawn from [-rotate, rotate].
        translate: shift as a fraction of the image side, per axis, from [-translate, translate].
        scale: zoom factor range (low, high); > 1 enlarges the content.
        shear: shear angle in degrees (along x), from [-shear, shear].
    """

    rotate: float = 30.0
    translate: float = 0.1
    scale: tuple[float, float] = (0.8, 1.2)
    shear: float = 10.0

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> AffineRanges:
        """Ranges from a config mapping (``augment_args``); unknown keys or bad values raise ``ConfigError``."""
        values = dict(values or {})
        known = set(asdict(cls()))
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown augment_args: {', '.join(unknown)}; use {', '.join(sorted(known))}")
        if "scale" in values:
            scale = values["scale"]
            if not isinstance(scale, (list, tuple)) or len(scale) != 2:
                raise ConfigError(f"augment_args.scale must be [low, high], got {scale!r}")
            values["scale"] = (float(scale[0]), float(scale[1]))
        for key in ("rotate", "translate", "shear"):
            if key in values:
                values[key] = float(values[key])
        ranges = cls(**values)
        ranges.check()
        return ranges

    def check(self) -> None:
        """Raise ``ConfigError`` for a range that makes no sense (negative, empty or degenerate)."""
        low, high = self.scale
        if not 0 < low <= high:
            raise ConfigError(f"augment_args.scale must satisfy 0 < low <= high, got {self.scale}")
        if self.rotate < 0 or self.translate < 0 or not 0 <= self.shear < 90:
            raise ConfigError("augment_args rotate and translate must be >= 0, shear in [0, 90) degrees")


def random_affine(n: int, generator: torch.Generator, ranges: AffineRanges = AffineRanges()) -> torch.Tensor:
    """``n`` random transforms as ``affine_grid`` matrices (n, 2, 3), drawn from ``generator`` (CPU).

    Each maps output coordinates to input coordinates (normalised [-1, 1]), i.e. it is the inverse of the forward
    transform "shear, then scale, then rotate, then translate" applied to the content.
    """
    u = torch.rand(n, 5, generator=generator, dtype=torch.float64) * 2 - 1  # (n, 5) in [-1, 1)
    angle = torch.deg2rad(u[:, 0] * ranges.rotate)
    shift = u[:, 1:3] * ranges.translate * 2  # a fraction of the side is twice that in [-1, 1] coordinates
    low, high = ranges.scale
    zoom = low + (u[:, 3] + 1) / 2 * (high - low)
    shear = torch.tan(torch.deg2rad(u[:, 4] * ranges.shear))
    cos, sin = torch.cos(angle), torch.sin(angle)
    rot = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)  # (n, 2, 2)
    sh = torch.eye(2, dtype=torch.float64).repeat(n, 1, 1)
    sh[:, 0, 1] = shear
    fwd = rot @ (zoom[:, None, None] * sh)  # content: shear, scale, rotate; then shift
    inv = torch.linalg.inv(fwd)
    theta = torch.cat([inv, -(inv @ shift[:, :, None])], dim=-1)  # x_in = inv (x_out - shift)
    return theta.float()


def warp(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Resample images ``x`` (B, C, H, W) through ``theta`` (B, 2, 3): bilinear, zeros outside the image.

    Raises:
        ValueError: ``theta`` does not hold one (2, 3) matrix per image.
    """
    if theta.shape != (x.shape[0], 2, 3):
        raise ValueError(f"theta has shape {tuple(theta.shape)}; need ({x.shape[0]}, 2, 3) for x {tuple(x.shape)}")
    grid = F.affine_grid(theta.to(device=x.device, dtype=torch.float32), list(x.shape), align_corners=False)
    out = F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out.to(x.dtype)


def identity(n: int) -> torch.Tensor:
    """``n`` identity matrices (n, 2, 3) for ``warp``."""
    return torch.eye(2, 3).repeat(n, 1, 1)
