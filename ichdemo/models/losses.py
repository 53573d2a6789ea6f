"""Training losses (METHOD.md, Losses): CLoss + HLoss for ``lse_unet``, plain BCE for ``gap``.

With f_0..f_3 the maps from the top (stride 4) to the bottom (stride 32) level and l_k = LSE_r(f_k):

* CLoss = sum_k alpha_k BCE(l_k, y), alphas (2, 0.5, 0.25, 0.125);
* HLoss = sum_k beta_k MSE(Pool(f_k), f_{k+1}), betas (0.5, 0.25, 0.125), Pool = 2x2 average pooling
  (``pool="sum"``: the 2x2 sum of the paper's appendix). DECIDE (METHOD.md): average by default, as in the main
  text: with LSE's log(n) subtracted (``lse_unet(lse_mean=True)``) a level's map and the average-pooled map above it
  are on the same scale, so the average keeps HLoss and CLoss pulling the same way; the sum asks f_{k+1} to be 4x
  larger than the maps above it;
* Loss = CLoss + hloss_weight * HLoss (``hloss_weight=0`` is the paper's "without HLoss" ablation).

r lives in the model (``lse_unet(lse_r=...)``): the logits the loss sees are the ones inference uses. The MSE lets
gradients reach both maps of each pair, as the formula is written (no stop-gradient).

Example:
    >>> criterion = build_loss(model, pos_weight=torch.ones(5))
    >>> loss = criterion(model(x), y)  # y (B, 5) in {0, 1}
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ichdemo.errors import ConfigError
from ichdemo.models.registry import Output

ALPHAS: tuple[float, ...] = (2.0, 0.5, 0.25, 0.125)
BETAS: tuple[float, ...] = (0.5, 0.25, 0.125)
POOLS: tuple[str, ...] = ("avg", "sum")


class CLoss(nn.Module):
    """Weighted multi-label BCE on every level's LSE logits."""

    def __init__(self, alphas: Sequence[float] = ALPHAS, pos_weight: torch.Tensor | None = None) -> None:
        super().__init__()
        self.alphas = tuple(float(a) for a in alphas)
        self.register_buffer("pos_weight", None if pos_weight is None else torch.as_tensor(pos_weight).float())

    def terms(self, level_logits: Sequence[torch.Tensor], target: torch.Tensor) -> list[torch.Tensor]:
        """Unweighted BCE per level, [BCE(l_0, y), ...]."""
        _check_levels("level_logits", level_logits, len(self.alphas))
        target = target.float()
        return [
            F.binary_cross_entropy_with_logits(lk.float(), target, pos_weight=self.pos_weight) for lk in level_logits
        ]

    def forward(self, level_logits: Sequence[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        return sum(a * t for a, t in zip(self.alphas, self.terms(level_logits, target)))


class HLoss(nn.Module):
    """Hierarchical consistency: each level's map close to the pooled map of the level above."""

    def __init__(self, betas: Sequence[float] = BETAS, pool: str = "avg") -> None:
        super().__init__()
        if pool not in POOLS:
            raise ConfigError(f"HLoss pool={pool!r}; use one of {POOLS}")
        self.betas = tuple(float(b) for b in betas)
        self.pool = pool

    def pooled(self, f: torch.Tensor, size: torch.Size) -> torch.Tensor:
        """2x2 average (or sum) pooling of ``f`` to ``size`` (adaptive when the sizes are not exactly 2:1)."""
        if f.shape[-2] == 2 * size[0] and f.shape[-1] == 2 * size[1]:
            p = F.avg_pool2d(f, 2)
        else:
            p = F.adaptive_avg_pool2d(f, size)
        return p * 4.0 if self.pool == "sum" else p

    def terms(self, maps: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Unweighted MSE per adjacent pair, [MSE(Pool(f_0), f_1), ...]."""
        _check_levels("maps", maps, len(self.betas) + 1)
        return [F.mse_loss(self.pooled(hi.float(), lo.shape[-2:]), lo.float()) for hi, lo in zip(maps[:-1], maps[1:])]

    def forward(self, maps: Sequence[torch.Tensor]) -> torch.Tensor:
        return sum(b * t for b, t in zip(self.betas, self.terms(maps)))


class LseUnetLoss(nn.Module):
    """CLoss + hloss_weight * HLoss (+ any_weight * BCE of an any-hemorrhage logit) on an ``lse_unet`` ``Output``.

    The any-hemorrhage logit (not in the paper) is ``logsumexp`` over the five subtypes' slice logits l_0, a soft
    maximum: every slice labelled with any hemorrhage then asks for evidence in some subtype's map, which gives the
    rare subtypes' slices a second, subtype-free signal of where blood is. No extra output: the network is unchanged.
    """

    def __init__(
        self,
        alphas: Sequence[float] = ALPHAS,
        betas: Sequence[float] = BETAS,
        pool: str = "avg",
        hloss_weight: float = 1.0,
        pos_weight: torch.Tensor | None = None,
        any_weight: float = 0.0,
    ) -> None:
        super().__init__()
        if hloss_weight < 0 or any_weight < 0:
            raise ConfigError(f"hloss_weight={hloss_weight} and any_weight={any_weight} must be >= 0")
        self.any_weight = float(any_weight)
        self.closs = CLoss(alphas, pos_weight)
        self.hloss = HLoss(betas, pool)
        self.hloss_weight = float(hloss_weight)

    def terms(self, out: Output, target: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every term for logging: ``bce_l0..bce_l3``, ``mse_h0..mse_h2``, ``closs``, ``hloss``, ``bce_any`` (with
        ``any_weight``), ``loss``."""
        if out.maps is None or out.level_logits is None:
            raise ConfigError("LseUnetLoss needs an lse_unet Output (maps and level_logits)")
        bce = self.closs.terms(out.level_logits, target)
        terms = {f"bce_l{k}": t for k, t in enumerate(bce)}
        closs = sum(a * t for a, t in zip(self.closs.alphas, bce))
        hloss = torch.zeros((), device=target.device)
        if self.hloss_weight > 0:
            mse = self.hloss.terms(out.maps)
            terms.update({f"mse_h{k}": t for k, t in enumerate(mse)})
            hloss = sum(b * t for b, t in zip(self.hloss.betas, mse))
        loss = closs + self.hloss_weight * hloss
        if self.any_weight > 0:
            any_logit = torch.logsumexp(out.level_logits[0].float(), dim=1)
            terms["bce_any"] = F.binary_cross_entropy_with_logits(any_logit, target.float().amax(dim=1))
            loss = loss + self.any_weight * terms["bce_any"]
        terms.update(closs=closs, hloss=hloss, loss=loss)
        return terms

    def forward(self, out: Output, target: torch.Tensor) -> torch.Tensor:
        return self.terms(out, target)["loss"]


class GapLoss(nn.Module):
    """Multi-label BCE on a ``gap`` model's logits."""

    def __init__(self, pos_weight: torch.Tensor | None = None) -> None:
        super().__init__()
        self.register_buffer("pos_weight", None if pos_weight is None else torch.as_tensor(pos_weight).float())

    def terms(self, out: Output, target: torch.Tensor) -> dict[str, torch.Tensor]:
        loss = F.binary_cross_entropy_with_logits(out.logits.float(), target.float(), pos_weight=self.pos_weight)
        return {"loss": loss}

    def forward(self, out: Output, target: torch.Tensor) -> torch.Tensor:
        return self.terms(out, target)["loss"]


def build_loss(model_or_family: nn.Module | str, **kwargs: Any) -> nn.Module:
    """The training loss for a model (or a family name): ``LseUnetLoss`` or ``GapLoss``, with ``kwargs`` passed on.

    Raises:
        ConfigError: unknown family, or an option the loss does not take.
    """
    family = model_or_family if isinstance(model_or_family, str) else getattr(model_or_family, "family", None)
    losses = {"lse_unet": LseUnetLoss, "gap": GapLoss}
    if family not in losses:
        raise ConfigError(f"no loss for model family {family!r}; known: {sorted(losses)}")
    try:
        return losses[family](**kwargs)
    except TypeError as err:
        raise ConfigError(f"loss for {family}: {err}") from None


def _check_levels(name: str, items: Sequence[torch.Tensor], expected: int) -> None:
    if len(items) != expected:
        raise ConfigError(f"{name} has {len(items)} levels; the weights expect {expected}")
