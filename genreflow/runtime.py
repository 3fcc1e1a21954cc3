"""Starting or joining Ray: the one place jobs and the CLI call ``ray.init``.

No address and no ``RAY_ADDRESS``: an embedded local Ray (``local_ray_options``). Under
``ray job submit`` the job's environment carries ``RAY_ADDRESS`` and the job joins
that cluster.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
from collections.abc import Collection, Iterator, Sequence
from typing import Any
from urllib.parse import urlparse

from genreflow.errors import ConfigError, GenreflowError, StorageError
from genreflow.ray_compat import (
    quiet_local_notices,
    quiet_state_api_probes,
    task_based_parquet_reader,
)

log = logging.getLogger(__name__)


# run in every worker process of the local Ray as it starts (a module path: Ray imports it)
SETUP_HOOK = f"{quiet_state_api_probes.__module__}.{quiet_state_api_probes.__name__}"


def local_ray_options(num_cpus: int | None = None) -> dict[str, Any]:
    """``ray.init`` arguments of the embedded local Ray, which jobs and the CLI start
    without an address (the benches and tests start the same one).

    - No dashboard: it costs about 200 MiB and seconds of start on a small machine.
    - No metrics collection: with no dashboard nothing reads Ray's metrics, and their
      collection grew Ray Data's stats actor by 20–35 MiB over 28,800 labelled tracks
      and took a share of the CPU in every process (bench/RESULTS.md).
    - ``address="local"``: a stale cluster file left by ``ray stop`` is never joined.

    A run that wants Ray's dashboard and metrics starts a cluster (``ray start --head``)
    and sets ``RAY_ADDRESS``.
    """
    return {
        "address": "local",
        "num_cpus": num_cpus,
        "include_dashboard": False,
        # a module path: Ray imports it in every worker process of the job
        "runtime_env": {"worker_process_setup_hook": SETUP_HOOK},
        "_system_config": {"enable_metrics_collection": False},
    }


def init_ray(address: str | None = None, *, num_cpus: int | None = None) -> None:
    """Start or join Ray once per process.

    Args:
        address: a cluster address (``ray://host:10001``, ``host:6379`` or ``auto``);
            ``None`` joins ``RAY_ADDRESS`` when set, else starts a local Ray.
        num_cpus: CPUs of a local Ray; ignored when joining a cluster.

    Raises:
        GenreflowError: the cluster cannot be reached.
    """
    import ray
    import ray.data  # sets up Ray Data's loggers, which quiet_ray_console adjusts

    if ray.is_initialized():
        return
    target = address or os.environ.get("RAY_ADDRESS")
    quiet = not logging.getLogger("genreflow").isEnabledFor(logging.DEBUG)  # no --verbose
    # A local run shows genreflow's own progress; the workers' logs (Ray Train's
    # controller, Ray Data's progress bars in split coordinators) stay in Ray's session
    # folder. On a cluster they reach the job's log as Ray users expect.
    kwargs: dict[str, Any] = {"log_to_driver": bool(target) or not quiet}
    if quiet:
        quiet_ray_console(local=not target)
    check_cluster_reachable(address)
    try:
        if target:
            ray.init(address=target, **kwargs)
        else:
            ray.init(**local_ray_options(num_cpus), **kwargs)
    except (ConnectionError, TimeoutError, RuntimeError, ValueError) as exc:
        raise GenreflowError(
            f"cannot reach the Ray cluster at {target!r}: {exc}. Check the address "
            "(`ray status --address ...`) or leave it unset to run on a local Ray."
        ) from exc
    resources = ray.cluster_resources()
    log.info(
        "Ray %s: %s CPUs, %s GPUs, %d nodes",
        "cluster " + str(target) if target else "local",
        resources.get("CPU", 0),
        resources.get("GPU", 0),
        len(ray.nodes()),
    )


RAY_CONSOLE_LOGGERS = ("ray", "ray.data", "ray.train")


def check_cluster_reachable(address: str | None) -> None:
    """When a cluster address is given (or ``RAY_ADDRESS`` set), fail fast and clearly
    if it does not answer: a stage checks this before it changes any output.

    Raises:
        GenreflowError: the address does not answer.
    """
    target = address or os.environ.get("RAY_ADDRESS")
    if target:
        _check_reachable(target)


def quiet_ray_console(*, local: bool) -> None:
    """Ray's console output at WARNING and above (no INFO lines such as Ray Data's
    per-operator progress when stdout is not a terminal); Ray's log files in its
    session folder keep everything. ``--verbose`` leaves the console as Ray sets it."""
    for name in RAY_CONSOLE_LOGGERS:
        for handler in logging.getLogger(name).handlers:
            if isinstance(handler, logging.StreamHandler) and not isinstance(
                handler, logging.FileHandler
            ):
                handler.setLevel(max(handler.level, logging.WARNING))
    if local:
        quiet_local_notices()


def _check_reachable(address: str, *, timeout_s: float = 5.0) -> None:
    """Fail fast when a ``host:port`` (or ``ray://host:port``) address does not answer:
    ``ray.init`` would otherwise retry for minutes before giving up."""
    parsed = urlparse(address if "://" in address else f"tcp://{address}")
    if address == "auto" or parsed.hostname is None or parsed.port is None:
        return
    try:
        socket.create_connection((parsed.hostname, parsed.port), timeout=timeout_s).close()
    except OSError as exc:
        raise GenreflowError(
            f"cannot reach the Ray cluster at {address!r}: {exc.strerror or exc}. Check the "
            "address (`ray status --address ...`) or leave it unset to run on a local Ray."
        ) from exc


def ray_resources() -> dict[str, float]:
    """The resources of the Ray cluster this process is connected to (``CPU``, ``GPU``...)."""
    import ray

    return {k: float(v) for k, v in ray.cluster_resources().items()}


def cluster_gpus() -> tuple[float, float | None]:
    """``(GPUs the cluster has now, GPUs it can have at most)``; the second is None when
    no autoscaler says (a local Ray or a fixed cluster: what is there is all there is)."""
    from genreflow.ray_compat import max_cluster_resources

    most = max_cluster_resources()
    return ray_resources().get("GPU", 0.0), None if most is None else most.get("GPU", 0.0)


def wants_gpus(setting: bool | str, *, present: float, possible: float | None, what: str) -> bool:
    """Whether work set to ``setting`` (``auto``, true or false) runs on GPUs: ``auto``
    where the cluster has a GPU or its autoscaler can start one. An explicit true stays
    true; the wait for resources refuses it where no GPU can come."""
    if setting != "auto":
        return bool(setting)
    can = present > 0 or bool(possible)
    log.info(
        "%s: %s", what,
        ("on GPUs" + ("" if present else " (the autoscaler can start GPU nodes)"))
        if can else "on CPUs (the cluster has no GPU and can start none)",
    )  # fmt: skip
    return can


def _fits(need: dict[str, float], have: dict[str, float]) -> bool:
    return all(have.get(k, 0.0) >= v for k, v in need.items() if v > 0)


def _text(resources: dict[str, float], keys: Collection[str]) -> str:
    return ", ".join(f"{resources.get(k, 0.0):g} {k}" for k in keys)


def wait_for_resources(
    bundles: Sequence[dict[str, float]],
    *,
    what: str,
    timeout_s: float,
    local: bool,
    poll_s: float = 2.0,
    report_s: float = 30.0,
) -> bool:
    """Ask the cluster for ``bundles`` (one per worker) and wait until its resources
    hold them all; whether the autoscaler was asked (then the caller withdraws the
    request with :func:`withdraw_resource_request` when its work ends, or the cluster
    keeps those nodes).

    A local Ray cannot grow: there a shortfall is refused at once. A cluster's
    autoscaler is asked for the bundles (``ray.autoscaler.sdk.request_resources``)
    and the wait logs a line every ``report_s`` until they are there or ``timeout_s``
    has passed. Only totals are compared; Ray places each bundle itself.

    Raises:
        ConfigError: a local Ray has too little, or no node type mix the cluster's
            autoscaler may start adds up to the need.
        GenreflowError: the cluster did not provide them within ``timeout_s``.
    """
    import ray

    need: dict[str, float] = {}
    for bundle in bundles:
        for key, value in bundle.items():
            need[key] = need.get(key, 0.0) + value
    keys = [k for k, v in need.items() if v > 0]
    have = ray_resources()
    if _fits(need, have):
        return False
    if local:
        raise ConfigError(
            f"{what} needs {_text(need, keys)}, and this local Ray has {_text(have, keys)}; "
            "ask for less, or run on a cluster (RAY_ADDRESS)"
        )
    from genreflow.ray_compat import max_cluster_resources

    most = max_cluster_resources()
    ceiling = {k: max(v, have.get(k, 0.0)) for k, v in (most or {}).items()}
    if most is not None and not _fits(need, {**have, **ceiling}):
        raise ConfigError(
            f"{what} needs {_text(need, keys)}, and this cluster's node types offer at most "
            f"{_text(most, keys)}; ask for less, or add node types (cluster/, deploy/)"
        )
    _request_resources([dict(b) for b in bundles])
    start = time.monotonic()
    last_report = -report_s
    while not _fits(need, have):
        waited = time.monotonic() - start
        if waited > timeout_s:
            raise GenreflowError(
                f"{what}: waited {waited:.0f} s for {_text(need, keys)}, and the cluster has "
                f"{_text(have, keys)}. Check that its node types offer these resources "
                "(cluster/, deploy/), or raise resource_wait_s"
            )
        if waited - last_report >= report_s:
            log.info(
                "%s: waiting for %s: %s available, cluster scaling (%.0f s of %.0f s)",
                what, _text(need, keys), _text(have, keys), waited, timeout_s,
            )  # fmt: skip
            last_report = waited
        time.sleep(poll_s)
        have = {k: float(v) for k, v in ray.cluster_resources().items()}
    log.info("%s: the cluster has %s", what, _text(have, keys))
    return True


def withdraw_resource_request() -> None:
    """Withdraw what :func:`wait_for_resources` asked the autoscaler for: a request
    stays in force until replaced, and would keep its nodes up after the job."""
    _request_resources([])


def _request_resources(bundles: list[dict[str, float]]) -> None:
    try:
        from ray.autoscaler.sdk import request_resources

        request_resources(bundles=bundles)
        log.info("asked the autoscaler for %s", bundles or "nothing (request withdrawn)")
    except Exception as exc:  # waiting for nodes still works; the scale-up may be slower
        log.warning("could not ask the autoscaler for %s: %s", bundles or "nothing", exc)


def check_actor_fit(
    actors: int,
    cpus_per_actor: float,
    *,
    what: str,
    address: str | None = None,
    feed_cpus: float = 1.0,
    gpus_per_actor: float = 0.0,
) -> None:
    """Refuse an actor pool that leaves no CPU for the stages feeding it.

    Ray Data's read and decode tasks need CPUs beside the actors (``feed_cpus`` for one
    such task); a pool holding them all waits forever. Checked against the CPUs the
    cluster has now (an autoscaling cluster may grow: there it is a warning).

    Raises:
        ConfigError: on a fixed-size (local) Ray, the pool takes every CPU.
    """
    resources = ray_resources()
    gpus, gpus_wanted = resources.get("GPU", 0.0), actors * gpus_per_actor
    if gpus_wanted > gpus:
        message = (
            f"{what}: {actors} actor(s) x {gpus_per_actor:g} GPUs = {gpus_wanted:g} GPUs, and "
            f"the cluster has {gpus:g}; set resources.gpus_per_actor=0 to run the model on CPUs"
        )
        if address or os.environ.get("RAY_ADDRESS"):
            log.warning("%s (unless the cluster scales up)", message)
        else:
            raise ConfigError(message)
    total = resources.get("CPU", 0.0)
    wanted = actors * cpus_per_actor
    if total and wanted > total - feed_cpus:
        message = (
            f"{what}: {actors} actor(s) x {cpus_per_actor:g} CPUs = {wanted:g} of the cluster's "
            f"{total:g} CPUs, leaving less than the {feed_cpus:g} CPU a task reading the data "
            "that feeds them needs; lower actors or cpus_per_actor"
        )
        if address or os.environ.get("RAY_ADDRESS"):
            log.warning("%s (unless the cluster scales up)", message)
        else:
            raise ConfigError(message)


def read_parquet(
    paths: str | list[str],
    *,
    filesystem: Any,
    columns: list[str],
    num_cpus: float = 1.0,
    concurrency: int | None = None,
) -> Any:
    """``ray.data.read_parquet`` through Ray Data's task-based Parquet reader.

    Ray Data's task-based Parquet reader (:func:`genreflow.ray_compat.task_based_parquet_reader`)
    pushes column selection and row filters into the read. ``concurrency`` caps the read
    tasks running at once (None: Ray Data's choice).
    """
    import ray.data

    with task_based_parquet_reader():
        return ray.data.read_parquet(
            paths,
            filesystem=filesystem,
            columns=columns,
            num_cpus=num_cpus,
            concurrency=concurrency,
        )


def read_parquet_files(
    files: Sequence[tuple[str, int]],
    *,
    columns: list[str],
    num_cpus: float = 1.0,
    concurrency: int | None = None,
    task_bytes: int | None = None,
    drop_ids: Collection[str] = (),
    actors_from: int = 32,
) -> Any:
    """A Ray dataset of the named columns of Parquet files, given as ``(uri, bytes)``.

    Unlike ``ray.data.read_parquet`` nothing is read in the driver before the job
    starts: the Parquet reader samples files in tasks of their own to plan the read,
    and on a small node their worker processes start while the job waits (2–5 s a
    label run, bench/RESULTS.md). Here the first read is the first work. A read takes
    consecutive files up to ``task_bytes`` (default: Ray Data's target block size; one
    file when it is larger): a read per small file would pay a task's start for
    kilobytes, and a whole worker process where Ray keeps few idle ones (1-CPU nodes).
    Larger groups cost memory: a running read's blocks cannot be held back, and at
    64 MiB a read the label job's peak grew 14 % from 2,880 to 28,800 tracks instead of
    7 % (bench/RESULTS.md). Each read streams its files in batches of about Ray Data's
    target block size and hands unused Arrow memory back to the system after each file.

    With ``concurrency`` and at least ``actors_from`` reads, the reads run in
    ``concurrency`` long-lived reader actors. As tasks, a read whose worker process Ray
    had let go while the job waited for the stages after it started a new process
    (imports, a second or two of CPU), and the old one's heap lingered beside the new
    one's: the label job labelled 28,800 tracks in 234 s instead of 315 s with one
    reader actor (bench/RESULTS.md). A reader actor's own start costs 2–3 s
    that a few reads do not earn back, so fewer reads stay tasks, at most
    ``concurrency`` at once (as many as CPUs allow without it). Rows whose ``track_id``
    is in ``drop_ids`` are left out as they are read.
    """
    import ray.data

    block_bytes = int(ray.data.DataContext.get_current().target_max_block_size or 128 * 2**20)
    groups = group_files(files, task_bytes=task_bytes or block_bytes)
    items = ray.data.from_items(
        [{"uris": g} for g in groups], override_num_blocks=max(1, len(groups))
    )
    reader = {"columns": columns, "block_bytes": block_bytes, "drop_ids": frozenset(drop_ids)}
    if concurrency is None or len(groups) < actors_from:
        return items.map_batches(
            _read_files,  # type: ignore[arg-type]
            batch_size=1,
            batch_format="pyarrow",
            num_cpus=num_cpus,
            compute=ray.data.TaskPoolStrategy(size=concurrency),
            fn_kwargs=reader,
        )
    return items.map_batches(
        ParquetReader,
        batch_size=1,
        batch_format="pyarrow",
        num_cpus=num_cpus,
        compute=ray.data.ActorPoolStrategy(size=concurrency),
        fn_constructor_kwargs=reader,
    )


class ParquetReader:
    """Reads the files named in a batch's ``uris`` column, block by block."""

    def __init__(self, *, columns: list[str], block_bytes: int, drop_ids: frozenset[str]) -> None:
        import pyarrow as pa

        self.columns, self.block_bytes = columns, block_bytes
        self.drop = pa.array(sorted(drop_ids), pa.string()) if drop_ids else None

    def __call__(self, files: Any) -> Iterator[Any]:
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        from genreflow import storage

        for uri in (u for group in files.column("uris").to_pylist() for u in group):
            fs, path = storage.resolve(uri)
            try:
                with fs.open_input_file(path) as handle:
                    reader = pq.ParquetFile(handle)
                    meta = reader.metadata
                    if meta.num_rows == 0:
                        continue
                    row_bytes = max(
                        1,
                        sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
                        // meta.num_rows,
                    )
                    rows = max(1, self.block_bytes // row_bytes)
                    for batch in reader.iter_batches(batch_size=rows, columns=self.columns):
                        table = pa.Table.from_batches([batch])
                        if self.drop is not None:
                            keep = pc.invert(pc.is_in(table["track_id"], value_set=self.drop))
                            table = table.filter(keep)
                        if table.num_rows:
                            yield table
            except (OSError, pa.ArrowException) as exc:  # unreadable, or not Parquet at all
                raise StorageError(f"cannot read Parquet {uri!r}: {exc}") from exc
            finally:
                pa.default_memory_pool().release_unused()


def _read_files(
    files: Any, *, columns: list[str], block_bytes: int, drop_ids: frozenset[str]
) -> Iterator[Any]:
    """A read as a task: a reader for one batch of file groups."""
    yield from ParquetReader(columns=columns, block_bytes=block_bytes, drop_ids=drop_ids)(files)


def group_files(files: Sequence[tuple[str, int]], *, task_bytes: int) -> list[list[str]]:
    """Consecutive ``(uri, bytes)`` grouped up to ``task_bytes`` a group, in order; a file
    larger than that is a group of its own."""
    groups: list[list[str]] = []
    size = 0
    for uri, nbytes in files:
        if not groups or size + nbytes > task_bytes:
            groups.append([])
            size = 0
        groups[-1].append(uri)
        size += nbytes
    return groups


@contextlib.contextmanager
def data_memory_limit(gigabytes: float | None, *, block_mb: float | None = None) -> Iterator[None]:
    """Cap the object-store memory Ray Data executions started inside may hold, and
    optionally the size of the blocks they make.

    Without a cap Ray Data lets blocks queue in front of a slow stage (a model actor)
    up to a share of the whole object store, so a job's memory grows with the catalog
    until that share is reached; with one, the streaming executor stops launching
    upstream tasks once the in-flight blocks reach it. Smaller blocks (``block_mb``;
    Ray Data's default is 128 MiB) reach the next stage sooner, so a model starts on
    the first tracks read instead of the first 128 MiB. The driver's previous settings
    are restored on exit.
    """
    import ray.data

    context = ray.data.DataContext.get_current()
    before = context.execution_options.resource_limits
    block_before = context.target_max_block_size
    if gigabytes is not None:
        context.execution_options.resource_limits = before.copy(
            object_store_memory=int(gigabytes * 2**30)
        )
    if block_mb is not None:
        context.target_max_block_size = int(block_mb * 2**20)
    try:
        yield
    finally:
        context.execution_options.resource_limits = before
        context.target_max_block_size = block_before


def group_dataset(count: int) -> Any:
    """A Ray dataset of the numbers ``0 .. count-1`` (column ``id``), one block each: a
    ``map_batches(fn, batch_size=None)`` after it runs one task per number, such as one
    per group of a work list (:mod:`genreflow.worklist`)."""
    import ray.data

    return ray.data.range(count, override_num_blocks=max(1, count))
