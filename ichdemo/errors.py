"""Typed errors with messages a person can act on (STYLE.md point 8).

Every error the library raises on bad input derives from ``IchdemoError``; the CLI prints ``str(err)`` as one line
and exits non-zero, and the app shows it in the UI.
"""


class IchdemoError(Exception):
    """Base class of every error this library raises on purpose.

    Its message is always one line: whitespace runs (newlines included, as untrusted header values can carry) become
    one space, so the CLI's one-line error and the UI's message hold whatever the input put into them.
    """

    def __init__(self, *args: object) -> None:
        super().__init__(*(" ".join(a.split()) if isinstance(a, str) else a for a in args))


class UnsupportedInputError(IchdemoError, ValueError):
    """The input is readable but not something the tool can use (wrong modality, 4-D, too few slices...)."""


class CorruptInputError(IchdemoError, ValueError):
    """The input cannot be decoded (truncated file, not the format its name says, missing pixel data...)."""


class UnsafeInputError(IchdemoError, ValueError):
    """The input tries something dangerous (path escape in an archive, decompression bomb, size over a limit)."""


class ModelError(IchdemoError, ValueError):
    """A model reference or checkpoint cannot be resolved or built."""


class ConfigError(IchdemoError, ValueError):
    """A user-given option is out of range or inconsistent (thresholds, window, spacing...)."""


def brief(err: BaseException, limit: int = 200) -> str:
    """A third-party exception as one short line, for embedding in the messages above (the CLI prints one line)."""
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
