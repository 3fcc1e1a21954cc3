"""What every script in ``jobs/`` does: parse ``--config FILE [key=value ...]``, run one
stage, print its one-paragraph summary, and exit 0 (done), 1 (the stage ran and failed)
or 2 (bad config, input or cluster: nothing ran); see :mod:`genreflow.entry`."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from genreflow.config import load_config
from genreflow.entry import run_stage, setup_logging

C = TypeVar("C")


def run_job(
    description: str,
    config_cls: type[C],
    run: Callable[[C], Any],
    argv: Sequence[str] | None = None,
) -> int:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", required=True, help="YAML config (see configs/)")
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="debug logging, Ray's logs, tracebacks"
    )
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_args(argv)
    setup_logging(args.verbose)

    def command() -> int:
        result = run(load_config(config_cls, args.config, args.overrides))
        print(result.summary(), flush=True)
        return 1 if getattr(result, "failed", False) else 0

    return run_stage(command, verbose=args.verbose)
