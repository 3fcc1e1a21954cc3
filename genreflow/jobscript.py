"""What every script in ``jobs/`` does: parse ``--config FILE [key=value ...]``, run its
stage from the registry (:mod:`genreflow.stages`), print the stage's report, and exit 0
(done), 1 (the stage ran and failed) or 2 (bad config, input or cluster: nothing ran);
see :mod:`genreflow.entry`."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from genreflow.entry import run_stage, setup_logging
from genreflow.stages import STAGES


def run_job(stage: str, description: str, argv: Sequence[str] | None = None) -> int:
    """Run registered stage ``stage`` with ``--config FILE [key=value ...]``."""
    registered = STAGES[stage]
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", required=True, help="YAML config (see configs/)")
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="debug logging, Ray's logs, tracebacks"
    )
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    return run_stage(
        lambda: registered.execute(
            args.config, args.overrides, out=lambda text: print(text, flush=True)
        ),
        verbose=args.verbose,
    )
