"""Data sources by spec string: ``ctich:/path``, ``phantom:N[:SEED]``, ``rsna:/path``, ``bhsd:/path``.

``open_source(spec)`` returns a ``DataSource``: the series, whether their pixels are pre-windowed (CT-ICH JPEGs)
or HU (windowed here with the configured window), and the patients a paper-style comparison holds out by default.
Bad specs and bad folders raise typed errors naming the problem before anything is trained.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ichdemo.data.series import Series
from ichdemo.errors import ConfigError, UnsupportedInputError

KINDS: tuple[str, ...] = ("ctich", "phantom", "rsna", "bhsd")


@dataclass
class DataSource:
    """The series of one data spec.

    Attributes:
        spec: the spec string as given.
        kind: "ctich", "phantom", "rsna" or "bhsd".
        series: one ``Series`` per scan.
        prewindowed: True when the pixels carry a baked-in display window (CT-ICH JPEGs).
        window: the HU window applied to HU sources (preset name); for pre-windowed ones the window baked into
            the pixels, which HU input must get at inference (None when unknown).
        masked_patients: patients that have pixel masks (evaluation only).
        notes: facts worth a line in a report (skipped files, assumptions).
    """

    spec: str
    kind: str
    series: list[Series]
    prewindowed: bool
    window: str | None
    masked_patients: tuple[str, ...] = ()
    notes: list[str] = field(default_factory=list)

    @property
    def patients(self) -> list[str]:
        """Distinct patients, in series order."""
        return list(dict.fromkeys(s.patient for s in self.series))

    def select(self, patients: list[str]) -> list[Series]:
        """The series of ``patients`` (in source order)."""
        wanted = set(patients)
        return [s for s in self.series if s.patient in wanted]


def parse_spec(spec: str) -> tuple[str, str]:
    """``"kind:arg"`` -> (kind, arg); a bare existing folder with a CT-ICH CSV counts as ``ctich``."""
    kind, sep, arg = str(spec).partition(":")
    if not sep and Path(spec).is_dir():
        return "ctich", str(spec)
    if kind not in KINDS or not arg:
        raise ConfigError(f"bad data spec {spec!r}; use one of ctich:/path, phantom:N, rsna:/path, bhsd:/path")
    return kind, arg


def _folder(kind: str, arg: str) -> Path:
    path = Path(arg).expanduser()
    if not path.is_dir():
        raise UnsupportedInputError(f"{kind} data folder {path} does not exist (or is not a folder)")
    return path


def open_source(
    spec: str,
    *,
    window: str = "paper",
    phantom_shape: str = "16x128x128",
    phantom_subtypes: str = "mixed",
    phantom_paired: bool = False,
    seed: int = 0,
) -> DataSource:
    """Open a data spec.

    Args:
        spec: ``ctich:/path``, ``phantom:N``, ``rsna:/path`` or ``bhsd:/path``.
        window: HU window preset for HU sources (phantom, RSNA, BHSD).
        phantom_shape: SxHxW of each phantom.
        phantom_subtypes: "mixed" or a comma list (see ``ichdemo.data.phantoms.choose_subtypes``).
        phantom_paired: add a lesion-free twin of every phantom head (see ``ichdemo.data.phantoms``).
        seed: phantom base seed (``phantom:N:SEED`` overrides it: held-out phantoms use another seed).

    Raises:
        ConfigError: malformed spec.
        UnsupportedInputError: a folder that is missing, has no CSV where one is needed, or holds no images.
    """
    kind, arg = parse_spec(spec)
    if kind == "phantom":
        from ichdemo.data.phantoms import phantom_series

        try:
            n, _, seed_text = arg.partition(":")
            n, seed = int(n), int(seed_text) if seed_text else seed
        except ValueError as err:
            raise ConfigError(f"phantom:N[:SEED] needs a number of series (and a seed), got {arg!r}") from err
        series = phantom_series(n, seed=seed, shape=phantom_shape, subtypes=phantom_subtypes, window=window,
                                paired=phantom_paired)
        return DataSource(spec, kind, list(series), False, window, tuple(dict.fromkeys(s.patient for s in series)))
    folder = _folder(kind, arg)
    if kind == "ctich":
        from ichdemo.data.ctich import MASKED_PATIENTS, ctich_series

        series = ctich_series(folder)
        return DataSource(spec, kind, list(series), True, "ctich", MASKED_PATIENTS)
    if kind == "rsna":
        from ichdemo.data.rsna import rsna_series

        series, notes = rsna_series(folder, window=window)
        return DataSource(spec, kind, list(series), False, window, (), notes)
    from ichdemo.data.bhsd import bhsd_series

    series, notes = bhsd_series(folder, window=window)
    return DataSource(spec, kind, list(series), False, window, tuple(s.patient for s in series), notes)
