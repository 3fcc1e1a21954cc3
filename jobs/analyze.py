"""Analyze job: labels -> genre embeddings, nearest genres, analogies, PCA and heat-map pictures, one HTML report.

    ray job submit --working-dir . -- python jobs/analyze.py --config configs/analyze.yaml [key=value ...]

One streaming pass over the labels on the driver (no Ray tasks). Exits 0 on success, 2
on a bad config or labels that hold fewer than two genres.
"""

from __future__ import annotations

import sys

from genreflow.jobscript import run_job

if __name__ == "__main__":
    sys.exit(run_job("analyze", __doc__.split("\n")[0]))
