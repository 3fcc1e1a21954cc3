"""Ingest job: a catalog -> Parquet token shards, on the Ray cluster the job runs on.

    ray job submit --working-dir . -- python jobs/ingest.py --config configs/ingest.yaml [key=value ...]

Without a cluster (no RAY_ADDRESS) it starts a local Ray. Exits 0 on success, 1 when
the error rate exceeds ``max_error_rate`` (after writing what succeeded), 2 on a bad
config or catalog.
"""

from __future__ import annotations

import sys

from genreflow.jobscript import run_job

if __name__ == "__main__":
    sys.exit(run_job("ingest", __doc__.split("\n")[0]))
