"""Synthetic phantom series for tests and smoke runs: ``phantom:N`` is N seeded heads, generated on the fly.

Each series is one "patient" (``phantom-<seed>``) carrying 0, 1 or 2 subtypes (``subtypes="mixed"``, drawn with
``ichdemo.phantom.DATASET_WEIGHTS`` and at least ``min_share`` of the series carrying each subtype) or a fixed
subtype list. Slices are windowed with the paper's window like real HU data, and every slice has its label map
(ground truth for evaluation; training uses the slice labels only).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ichdemo.constants import CLASSES
from ichdemo.data.series import ArraySeries
from ichdemo.errors import ConfigError
from ichdemo.phantom import DATASET_WEIGHTS, generate_phantom
from ichdemo.transforms import to_unit


def parse_shape(text: str | Sequence[int]) -> tuple[int, int, int]:
    """"16x128x128" (or a sequence) -> (slices, rows, cols)."""
    parts = text.lower().split("x") if isinstance(text, str) else list(text)
    try:
        shape = tuple(int(v) for v in parts)
    except ValueError as err:
        raise ConfigError(f"phantom shape must be SxHxW, got {text!r}") from err
    if len(shape) != 3 or min(shape) < 1:
        raise ConfigError(f"phantom shape must be SxHxW with positive sizes, got {text!r}")
    return shape  # type: ignore[return-value]


def choose_subtypes(n: int, seed: int, subtypes: str = "mixed") -> list[tuple[str, ...]]:
    """The subtypes of each of ``n`` series.

    Args:
        n: number of series.
        seed: base seed.
        subtypes: "mixed" (about 1 in 8 series normal, the rest 1 or 2 subtypes, cycling through the subtypes so
            each appears in about a fifth of the series at least, the second one drawn by ``DATASET_WEIGHTS``), or a
            comma-separated list of subtypes every series carries.
    """
    if subtypes != "mixed":
        chosen = tuple(s.strip().upper() for s in subtypes.split(",") if s.strip())
        unknown = [s for s in chosen if s not in CLASSES]
        if unknown:
            raise ConfigError(f"unknown phantom subtype(s) {unknown}; choose from {', '.join(CLASSES)} or 'mixed'")
        return [chosen] * n
    rng = np.random.default_rng([seed, 7])
    p = np.array([DATASET_WEIGHTS[c] for c in CLASSES], dtype=np.float64)
    out: list[tuple[str, ...]] = []
    for i in range(n):
        if i % 8 == 7:
            out.append(())
            continue
        first = CLASSES[(i - i // 8) % len(CLASSES)]
        picked = {first}
        if rng.random() < 0.4:
            picked.add(CLASSES[int(rng.choice(len(CLASSES), p=p))])
        out.append(tuple(c for c in CLASSES if c in picked))
    return out


def phantom_series(
    n: int,
    seed: int = 0,
    shape: str | Sequence[int] = (16, 128, 128),
    subtypes: str = "mixed",
    window: str = "paper",
    noise_hu: float = 5.0,
    paired: bool = False,
) -> list[ArraySeries]:
    """``n`` phantom series with seeds ``seed * 100003 + i`` (distinct ``seed`` values give disjoint heads).

    Args:
        n: number of phantom heads (patients).
        seed: base seed.
        shape: SxHxW grid of each phantom.
        subtypes: see ``choose_subtypes``.
        window: HU window preset used to bring the phantom to [0, 1].
        noise_hu: image noise of the phantom generator.
        paired: also give every head with lesions a second series of the same head without them (same patient;
            the generator keeps the anatomy of a seed). Slice position and anatomy then say nothing about the
            labels; only the lesions do.
    """
    if n < 1:
        raise ConfigError(f"phantom:N needs N >= 1, got {n}")
    shape = parse_shape(shape)
    series = []
    for i, kinds in enumerate(choose_subtypes(n, seed, subtypes)):
        s = seed * 100003 + i
        series.append(_series(s, kinds, shape, window, noise_hu, f"phantom-{s}"))
        if paired and kinds:
            series.append(_series(s, (), shape, window, noise_hu, f"phantom-{s}-normal"))
    return series


def _series(s: int, kinds: tuple[str, ...], shape, window: str, noise_hu: float, name: str) -> ArraySeries:
    ph = generate_phantom(seed=s, subtypes=kinds, shape=shape, noise_hu=noise_hu)
    return ArraySeries(
        patient=f"phantom-{s}",
        name=name,
        labels=ph.slice_labels.astype(np.float32),
        spacing=tuple(ph.spacing),
        mask_slices=tuple(range(ph.shape[0])),
        unit=to_unit(ph.hu, prewindowed=False, window_=window),
        masks=ph.labels.astype(np.int16),
    )
