"""Paths as users type them, made absolute once, where a config is loaded.

Every path a user gives (a CLI flag, a ``key=value`` override, a YAML value) passes
through :func:`resolve_path` in :func:`genreflow.config.from_dict`, so no stage has to
rediscover what a relative path meant:

- a URI with a scheme (``s3://``, ``gs://``, ...) is left as it is;
- ``file://`` URIs become local paths (percent-escapes decoded);
- ``~`` expands; a relative path becomes absolute against the working directory.

Under ``ray job submit`` the driver's working directory is Ray's temporary copy of
``--working-dir`` on the head node, not the submitter's folder. A relative input there
works only for a file uploaded with the working directory; a relative output would be
written into that copy and deleted with it, so it is refused.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Literal
from urllib.parse import unquote, urlparse

from genreflow.errors import ConfigError

PathRole = Literal["input", "output"]

# Ray's job supervisor sets this in the environment of every submitted driver.
RAY_JOB_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"


def has_scheme(uri: str) -> bool:
    """A URI of a remote filesystem (``s3://``, ``gs://``...): not ``file://``, not a
    Windows drive letter."""
    scheme = urlparse(uri).scheme
    return len(scheme) > 1 and scheme != "file"


def local_path(uri: str) -> str:
    """The local path of ``uri``: ``file://`` stripped and percent-decoded, ``~``
    expanded. Not made absolute.

    Raises:
        ConfigError: a ``file://`` URI names a host other than this machine.
    """
    if uri.startswith("file:"):
        parsed = urlparse(uri)
        if parsed.netloc not in ("", "localhost"):
            raise ConfigError(
                f"{uri!r} names host {parsed.netloc!r}; a file:// URI must be local "
                "(file:///path or file://localhost/path)"
            )
        uri = unquote(parsed.path)
    return os.path.expanduser(uri)


def under_submitted_job(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether this process is a driver started by ``ray job submit`` (or a RayJob)."""
    return RAY_JOB_ENV in environ


def resolve_path(
    value: str,
    *,
    role: PathRole,
    key: str,
    cwd: str | None = None,
    environ: Mapping[str, str] = os.environ,
) -> str:
    """``value`` as an absolute local path, or unchanged when it is a remote URI.

    Args:
        value: what the user typed; ``""`` (not set) is returned as it is.
        role: ``input`` (read) or ``output`` (written).
        key: the config key, for messages.
        cwd: the directory relative paths are taken against (default: the process's).

    Raises:
        ConfigError: a relative output path, or a relative input that is not in the
            job's working directory, under ``ray job submit``.
    """
    if not value or has_scheme(value):
        return value
    path = local_path(value)
    base = cwd or os.getcwd()
    if not os.path.isabs(path) and under_submitted_job(environ):
        where = os.path.normpath(os.path.join(base, path))
        if role == "output":
            raise ConfigError(
                f"{key}={value!r} is a relative path, and under `ray job submit` the job's "
                "working directory is Ray's temporary copy of --working-dir: the output "
                "would be deleted with it. Give an s3:// URI (or an absolute path on storage "
                f"every node mounts), e.g. {key}=s3://bucket/prefix"
            )
        if not os.path.exists(where):
            raise ConfigError(
                f"{key}={value!r} is a relative path, and under `ray job submit` relative "
                "paths are read from the job's copy of --working-dir, which has no such "
                "file. Give an s3:// URI or an absolute path every node can read"
            )
    return os.path.normpath(os.path.join(base, path))
