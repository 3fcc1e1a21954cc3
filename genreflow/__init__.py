"""genreflow: music genre labelling, attention signatures and recommendations on Ray."""

from genreflow.errors import (
    AudioError,
    CatalogError,
    ConfigError,
    GenreflowError,
    ShapeError,
    SpecMismatchError,
    StorageError,
)

__version__ = "0.1.0"

__all__ = [
    "AudioError",
    "CatalogError",
    "ConfigError",
    "GenreflowError",
    "ShapeError",
    "SpecMismatchError",
    "StorageError",
    "__version__",
]
