"""How a stage runs from a command line: the ``genreflow`` CLI and every ``jobs/<stage>.py``.

Exit codes mean the same everywhere:

- ``0``: done;
- ``1``: the stage ran and failed: a threshold was crossed (too many bad tracks, a
  model that did not train), or an error stopped it after its work had begun;
- ``2``: nothing ran: a bad config, input or cluster, found before any work.

A stage says where its work begins with :func:`mark_started`; an error raised before
that point exits 2, after it 1. A failure prints its cause first, in one line; the
traceback follows only with ``--verbose``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextvars import ContextVar

from genreflow import errors
from genreflow.errors import GenreflowError
from genreflow.ray_compat import task_error_text

log = logging.getLogger("genreflow")

EXIT_OK, EXIT_FAILED, EXIT_NOTHING_RAN = 0, 1, 2

_started: ContextVar[bool] = ContextVar("genreflow_stage_started", default=False)

# Loggers that speak to the console about others' internals at INFO (which SIMD build of
# FAISS loaded); Ray's console is quieted when Ray starts (runtime.quiet_ray_console).
CHATTY_LOGGERS = ("faiss.loader",)


def mark_started() -> None:
    """The calling stage has begun its work: from now on a failure exits 1, not 2."""
    _started.set(True)


def setup_logging(verbose: bool) -> None:
    """genreflow's log lines at INFO (DEBUG with ``verbose``)."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    if not verbose:
        for name in CHATTY_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)


def first_line(text: str) -> str:
    """The first non-empty line of ``text`` (a message's cause, not its traceback)."""
    return next((line.strip() for line in text.splitlines() if line.strip()), text)


def run_stage(command: Callable[[], int], *, verbose: bool = False) -> int:
    """Run ``command`` (which prints its own results and returns 0 or 1) and turn what
    it raises into an exit code and a one-line message on stderr."""
    token = _started.set(False)
    try:
        return command()
    except GenreflowError as exc:
        code = EXIT_FAILED if _started.get() else EXIT_NOTHING_RAN
        _report(exc, verbose=verbose, expected=True)
        return code
    except Exception as exc:  # a failure genreflow did not foresee: still one line first
        known = genreflow_cause(exc)  # or one genreflow foresaw, raised in a Ray task
        if known is not None:
            _report(known, verbose=verbose, expected=True)
            return EXIT_FAILED if _started.get() else EXIT_NOTHING_RAN
        _report(exc, verbose=verbose, expected=False)
        return EXIT_FAILED
    finally:
        _started.reset(token)


def genreflow_cause(exc: BaseException) -> GenreflowError | None:
    """The genreflow error under ``exc``: a Ray task or actor's exception arrives wrapped
    (``RayTaskError``, Ray Data's ``UserCodeException``), its own error as a cause."""
    seen: set[int] = set()
    pending: list[BaseException] = [exc]
    while pending:
        current = pending.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, GenreflowError):
            return current
        for cause in (getattr(current, "cause", None), current.__cause__, current.__context__):
            if isinstance(cause, BaseException):
                pending.append(cause)
    text = task_error_text(exc)  # Ray Data keeps only the text of a task's own error
    if text is None:
        return None
    kind = getattr(errors, text[0], None)
    try:
        if isinstance(kind, type) and issubclass(kind, GenreflowError):
            return kind(text[1])
    except TypeError:  # an error with more fields than its message
        pass
    return GenreflowError(text[1])


def _report(exc: BaseException, *, verbose: bool, expected: bool) -> None:
    text = str(exc)
    cause = first_line(text) if expected else f"{type(exc).__name__}: {first_line(text)}"
    if verbose:
        log.error("%s", cause, exc_info=exc)
    elif not expected or cause != text.strip():
        log.error("%s (run with --verbose for the details)", cause)
    else:
        log.error("%s", cause)
