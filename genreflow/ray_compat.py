"""Where genreflow works around Ray or reads it beyond its public API, in one place.

Each entry names the Ray version it was written against, why, and what it changes;
callers degrade to stock behaviour when an internal is missing. ``GENREFLOW_RAY_STOCK=1``
in the environment turns every workaround off (Ray's own defaults, loggers and
environment untouched): the way to check whether a newer Ray still needs one, and a
way out if one misbehaves. Reading the autoscaler's node types
(:func:`max_cluster_resources`) is not a workaround and stays on.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Iterator

log = logging.getLogger(__name__)

STOCK_ENV = "GENREFLOW_RAY_STOCK"


def stock() -> bool:
    """Whether the workarounds are off (``GENREFLOW_RAY_STOCK=1``)."""
    return os.environ.get(STOCK_ENV, "").strip().lower() in ("1", "true", "yes")


# Ray 2.60, Ray Train V2: each run starts a detached actor that asks Ray's state API,
# once a second, whether the run's controller still lives, to free its placement group
# if not. The state API is served by the dashboard, which the local Ray goes without:
# every question fails, and each failure logged a warning that reached the console once
# a second for the whole run. On a local Ray the controller and that placement group
# end with the process anyway. Stock: the warnings stay.
STATE_API_PROBES = ("ray.train.v2._internal.execution.controller.placement_group_cleaner",)

# Ray 2.60 warns at every local start that token authentication is on; a local Ray is
# the user's own process, and the notice concerns clusters (docs/cluster.md). Ray Data's
# issue detector advises on memory declarations: advice for genreflow's developers.
# Stock: both print.
LOCAL_NOTICES = (
    "ray._private.authentication.authentication_token_setup",
    "ray.data._internal.issue_detection.issue_detector_manager",
)


def quiet_local_notices() -> None:
    """A local run's console without :data:`LOCAL_NOTICES` (they stay in Ray's logs)."""
    if stock():
        return
    for name in LOCAL_NOTICES:
        logging.getLogger(name).setLevel(logging.ERROR)


def quiet_state_api_probes() -> None:
    """Worker setup of the local Ray, which has no dashboard: the loggers of
    :data:`STATE_API_PROBES` keep their errors and drop the warnings that the state API
    cannot be reached."""
    if stock():
        return
    for name in STATE_API_PROBES:
        logging.getLogger(name).setLevel(logging.ERROR)


@contextlib.contextmanager
def task_based_parquet_reader() -> Iterator[None]:
    """Ray Data reads Parquet with its task-based reader inside.

    Ray 2.60's default reader (``DataContext.use_datasource_v2``) lists files by
    starting a pool of 32 footer-reader actors for every read: about 10 s before the
    first block on a small node, paid by every training, label and index run. The
    task-based reader reads footers where it reads the data and has its first block in
    0.5 s (bench/RESULTS.md). Stock: the default reader.
    """
    with _data_context(use_datasource_v2=False):
        yield


@contextlib.contextmanager
def single_operator_resources() -> Iterator[None]:
    """Ray Data without its per-operator resource reservation inside: for a dataset of
    one operator (ingest's decode tasks), Ray 2.60's reservation holds back about half
    of a small cluster's CPUs for operators that do not exist. Stock: reserved."""
    with _data_context(op_resource_reservation_enabled=False):
        yield


@contextlib.contextmanager
def _data_context(**settings: object) -> Iterator[None]:
    """Ray Data's context with ``settings`` inside (unless :func:`stock`), restored after."""
    import ray.data

    context = ray.data.DataContext.get_current()
    before = {name: getattr(context, name) for name in settings}
    if not stock():
        for name, value in settings.items():
            setattr(context, name, value)
    try:
        yield
    finally:
        for name, value in before.items():
            setattr(context, name, value)


HEALTH_CHECK_ENV = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"


@contextlib.contextmanager
def health_check_interval(seconds: float) -> Iterator[None]:
    """Ray Train's controller polls its workers every ``seconds`` during a fit.

    Ray 2.60's default, 2 s, adds seconds to every start, end and failure of a run, and
    Ray Train V2 reads the interval only from its controller's environment, which Ray
    passes on from the driver's; so the driver's environment holds it while a fit runs.
    A value set by the user wins. Stock: Ray's own interval.
    """
    if HEALTH_CHECK_ENV in os.environ or stock():
        yield
        return
    os.environ[HEALTH_CHECK_ENV] = f"{seconds:g}"
    try:
        yield
    finally:
        os.environ.pop(HEALTH_CHECK_ENV, None)


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


# Ray 2.60, Ray Data: an exception raised in a map function reaches the driver as
# RayTaskError(UserCodeException) whose cause is Ray Data's UserCodeException alone; the
# function's own exception (a StorageError naming the path that could not be written)
# survives only as text in the error's traceback. genreflow reports its own errors as
# one line and an exit code, so it reads the innermost one back from that text. Not
# switched off by GENREFLOW_RAY_STOCK: without it the message is Ray's wrapper line.
TASK_ERROR_LINE = re.compile(r"^genreflow\.errors\.(\w+): (.+)$", re.M)


def task_error_text(exc: BaseException) -> tuple[str, str] | None:
    """The class name and message of the genreflow error a Ray task raised under
    ``exc``, read from Ray's traceback text; None if there is none."""
    found = TASK_ERROR_LINE.findall(str(exc))
    return found[0] if found else None
