"""Train job: Parquet token shards -> a trained model, with Ray Train on every worker.

    ray job submit --working-dir . -- python jobs/train.py --config configs/train.yaml [key=value ...]

Writes the run folder (metrics.json, per-epoch metrics, confusion matrix, checkpoints).
Exits 0 on success, 2 on a bad config or dataset (before any worker starts).
"""

from __future__ import annotations

import sys

from genreflow.jobscript import run_job

if __name__ == "__main__":
    sys.exit(run_job("train", __doc__.split("\n")[0]))
