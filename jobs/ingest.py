"""Ingest job: a catalog -> Parquet token shards, on the Ray cluster the job runs on.

    ray job submit --working-dir . -- python jobs/ingest.py --config configs/ingest.yaml [key=value ...]

Without a cluster (no RAY_ADDRESS) it starts a local Ray. Exits 0 on success, 1 when
the error rate exceeds ``max_error_rate`` (after writing what succeeded), 2 on a bad
config or catalog.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the working dir's package

from genreflow.config import load_config
from genreflow.errors import GenreflowError
from genreflow.ingest import IngestConfig
from genreflow.pipelines.ingest import run_ingest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True, help="YAML config (configs/ingest.yaml)")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        result = run_ingest(load_config(IngestConfig, args.config, args.overrides))
    except GenreflowError as exc:
        logging.getLogger("genreflow").error("%s", exc)
        return 2
    print(result.summary())
    return 1 if result.failed else 0


if __name__ == "__main__":
    sys.exit(main())
