"""Index job: label embeddings -> a tuned FAISS index (GPU when there is one) and a neighbours table.

    ray job submit --working-dir . -- python jobs/build_index.py --config configs/index.yaml [key=value ...]

Scheduled weekly it rebuilds the index from the latest labels and publishes it
atomically: readers see the previous index until the new one is complete. Exits 0 on
success, 2 on a bad config, missing labels or an unreachable cluster.
"""

from __future__ import annotations

import sys

from genreflow.jobscript import run_job

if __name__ == "__main__":
    sys.exit(run_job("index", __doc__.split("\n")[0]))
