"""Compare job: train several models under one protocol and write one table of their results.

    ray job submit --working-dir . -- python jobs/compare.py --config configs/compare.yaml [key=value ...]

Every model trains with Ray Train on the same splits, budget and seed and is evaluated on
the same test split; comparison.md and comparison.csv hold accuracy, macro-F1, log-loss,
mood accuracy, training time and parameters. Exits 0 when every model trained, 1 when one
failed (its row says why), 2 on a bad config or dataset.
"""

from __future__ import annotations

import sys

from genreflow.jobscript import run_job

if __name__ == "__main__":
    sys.exit(run_job("compare", __doc__.split("\n")[0]))
