"""The error hierarchy: one root, a few kinds, messages that say what to do."""


class GenreflowError(Exception):
    """Root of every error genreflow raises on purpose."""


class ConfigError(GenreflowError):
    """A config file, override or argument is unknown, mistyped or out of range."""


class CatalogError(GenreflowError):
    """A catalog (FMA metadata, manifest or folder tree) cannot be read as a table."""


class AudioError(GenreflowError):
    """One audio file cannot be used; becomes an error row, never a crashed job.

    ``kind`` is a short stable tag (``missing``, ``empty``, ``undecodable``,
    ``truncated``, ``too_short``, ``silent``, ``bad_uri``) that summaries count by.
    """

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class SpecMismatchError(GenreflowError):
    """Two token specs that must agree (dataset vs checkpoint, run vs output) differ."""


class StorageError(GenreflowError):
    """A path or bucket cannot be reached, read or written."""


class ShapeError(GenreflowError):
    """A tensor has the wrong shape, dtype or values for a model (names the expected shape)."""
