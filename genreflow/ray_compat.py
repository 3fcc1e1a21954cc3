"""What genreflow reads from Ray beyond its public API, in one place.

Each entry names the Ray version it was written against and why the public API does
not serve; when Ray offers a stock way, the entry says what to switch to. Callers
degrade to the stock behaviour when an internal is missing.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


def max_cluster_resources() -> dict[str, float] | None:
    """The most of each resource the cluster can ever have: the sum, over the node types
    its autoscaler may start, of a node's resources times the type's ``max_workers``
    (``maxReplicas`` on KubeRay). None when no autoscaler has published its node types
    (a local Ray, a fixed cluster) or this Ray does not expose them.

    Ray 2.60: the autoscaler publishes its node types to the GCS, and Ray Train reads
    them through ``ray._private.state.state.get_max_resources_from_cluster_config``
    before it waits for a placement group; no public API returns them. An autoscaling
    cluster whose GPU group stands at zero has no GPU in ``ray.cluster_resources()``
    but a positive count here.
    """
    try:
        from ray._private.state import state

        found = state.get_max_resources_from_cluster_config()
    except Exception as exc:  # an older or newer Ray: behave as on a fixed cluster
        log.debug("the cluster's node types are not readable: %s", exc)
        return None
    if not found:
        return None
    return {str(k): float(v) for k, v in found.items()}
