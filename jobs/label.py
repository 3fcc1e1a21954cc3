"""Label job: a catalog or shard folder + a checkpoint -> genre, mood and signature labels.

    ray job submit --working-dir . -- python jobs/label.py --config configs/label.yaml [key=value ...]

Scheduled nightly with incremental=true it labels only the tracks this model version has
not labelled yet. Exits 0 on success, 1 when the error rate exceeds max_error_rate (after
writing what succeeded), 2 on a bad config, checkpoint or catalog.
"""

from __future__ import annotations

import sys

from genreflow.jobscript import run_job

if __name__ == "__main__":
    sys.exit(run_job("label", __doc__.split("\n")[0]))
