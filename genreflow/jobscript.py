"""What every script in ``jobs/`` does: parse ``--config FILE [key=value ...]``, run one
stage, print its one-paragraph summary, and exit 0 (done), 1 (finished but failed its
threshold) or 2 (bad config, input or cluster: nothing ran)."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar

from genreflow.config import load_config
from genreflow.errors import GenreflowError

C = TypeVar("C")


class StageResult(Protocol):
    def summary(self) -> str: ...


def run_job(
    description: str,
    config_cls: type[C],
    run: Callable[[C], Any],
    argv: Sequence[str] | None = None,
) -> int:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", required=True, help="YAML config (see configs/)")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        result = run(load_config(config_cls, args.config, args.overrides))
    except GenreflowError as exc:
        logging.getLogger("genreflow").error("%s", exc)
        return 2
    print(result.summary(), flush=True)
    return 1 if getattr(result, "failed", False) else 0
