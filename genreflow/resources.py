"""What each job asks of the cluster and how the Ray wiring runs it: the ``resources:``
section of every job's config. None of these changes a result (a shard, a weight, a
label row, an index); the wiring in :mod:`genreflow.pipelines` reads them, and so does
labelling's plan (:func:`genreflow.label.plan_label`). Each stage's knobs default to
following the cluster, so a config's top level says only what to do.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from genreflow.errors import ConfigError


@dataclass(frozen=True)
class RayResources:
    """Where a job runs: the ``resources:`` section every Ray job's config has. A stage
    adds its own knobs (workers, actors, GPUs) to it; each defaults to following the
    cluster, so a config's top level says only what to do."""

    address: str | None = None  # Ray address; None: RAY_ADDRESS or a local Ray
    num_cpus: int | None = None  # CPUs of a local Ray; None: every core

    def __post_init__(self) -> None:
        if self.num_cpus is not None and self.num_cpus < 1:
            raise ConfigError(f"resources.num_cpus must be >= 1 or null, got {self.num_cpus}")


@dataclass(frozen=True)
class TrainResources(RayResources):
    """Where and on what a run trains (``resources:`` in ``configs/train.yaml``)."""

    num_workers: int = 1  # Ray Train workers (DDP over gloo on CPUs, NCCL on GPUs)
    use_gpu: bool | Literal["auto"] = "auto"  # auto: one GPU per worker where the cluster
    # has GPUs or its autoscaler can start them, else CPUs
    cpus_per_worker: float = 1.0  # CPUs reserved per worker; torch threads = max(1, floor)
    resource_wait_s: float = 900.0  # on a cluster: how long to wait for the workers'
    # CPUs/GPUs while the autoscaler adds nodes; a local Ray refuses a shortfall at once
    max_failures: int = 1  # worker crashes Ray Train recovers from (from the last checkpoint)
    prefetch_batches: int | None = None  # batches prepared ahead in a background thread;
    # None: 1 on GPUs (the CPU is idle meanwhile), 0 on CPUs, where a background thread
    # would take cores from the step's torch threads
    cache: Literal["auto", "always", "never"] = "auto"  # hold prepared splits in the object
    # store between epochs; auto: when they take under a quarter of it, else stream each epoch
    worker_niceness: int | None = 0  # added to the training workers' nice value. Ray adds
    # 15 to its workers', which puts them below its own services and any ordinary process;
    # a training worker does the run's work, so by default it keeps an ordinary share.
    # None: Ray's 15
    health_check_s: float = 0.5  # how often Ray Train's controller polls its workers; each
    # start, end and failure waits for a poll (Ray's own default, 2 s, adds seconds a run)
    score_local_s: float = 20.0  # the test split is scored in the job's own process when
    # the best model does it in under this many seconds (measured speed x tracks), else by
    # an actor pool shaped like the workers, whose start alone costs seconds; 0: always a pool

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_workers < 1:
            raise ConfigError(f"resources.num_workers must be >= 1, got {self.num_workers}")
        if self.score_local_s < 0:
            raise ConfigError(f"resources.score_local_s must be >= 0, got {self.score_local_s}")
        if self.health_check_s <= 0:
            raise ConfigError(f"resources.health_check_s must be > 0, got {self.health_check_s}")
        if self.cpus_per_worker <= 0:
            raise ConfigError(f"resources.cpus_per_worker must be > 0, got {self.cpus_per_worker}")
        if self.prefetch_batches is not None and self.prefetch_batches < 0:
            raise ConfigError(
                f"resources.prefetch_batches must be >= 0, got {self.prefetch_batches}"
            )
        if self.worker_niceness is not None and not 0 <= self.worker_niceness <= 19:
            raise ConfigError(
                f"resources.worker_niceness must be 0-19 or null, got {self.worker_niceness}"
            )


@dataclass(frozen=True)
class LabelResources(RayResources):
    """Where and how wide a run labels (``resources:`` in ``configs/label.yaml``); none of
    these changes a label row."""

    device: Literal["auto", "cpu", "cuda"] = "auto"  # actors without GPUs use the CPU
    actors: int | None = None  # model actors (one model copy each); None: see plan_actors
    gpus_per_actor: float | Literal["auto"] = "auto"  # auto: 1 where the cluster has GPUs
    # or its autoscaler can start them, else 0 (CPU actors); a fraction shares a GPU
    cpus_per_actor: float | None = None  # None: 0.5 for CPU actors, 1 beside a GPU
    torch_threads: int | None = None  # per CPU actor; None: its CPUs, rounded up
    batch_size: int = 32  # tracks per call of a model actor (one output block each)
    model_batch: int | None = None  # tracks per forward pass within a call; None: 8 on
    # CPU, where a few tracks' activations stay in cache and the actor's heap stays
    # small, the whole call's batch on a GPU
    read_cpus: float = 0.25  # CPUs reserved per shard reader
    read_tasks: int | None = None  # shard readers (actors); None: see plan_reads
    write_cpus: float = 0.25  # CPUs reserved per label-file write task (beside the actors)
    shard_size: int = 32  # raw audio: tracks per decode task
    inflight_gb: float | None = 0.5  # object-store memory the job's in-flight blocks may
    # hold: bounds its memory whatever the catalog size; None: Ray Data's default share
    block_mb: float = 16.0  # target size of the blocks streaming to the model actors

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("batch_size", "model_batch", "actors", "shard_size", "read_tasks"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"resources.{name} must be >= 1, got {value}")
        if self.gpus_per_actor != "auto" and self.gpus_per_actor < 0:
            raise ConfigError(
                f"resources.gpus_per_actor must be >= 0 or auto, got {self.gpus_per_actor}"
            )
        for name in ("cpus_per_actor", "read_cpus", "write_cpus"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ConfigError(f"resources.{name} must be > 0, got {value}")
        if self.torch_threads is not None and self.torch_threads < 1:
            raise ConfigError(
                f"resources.torch_threads must be >= 1 (or null), got {self.torch_threads}"
            )
        if self.block_mb <= 0:
            raise ConfigError(f"resources.block_mb must be > 0, got {self.block_mb}")
        if self.inflight_gb is not None and self.inflight_gb <= 0:
            raise ConfigError(
                f"resources.inflight_gb must be > 0 (or null), got {self.inflight_gb}"
            )


@dataclass(frozen=True)
class IndexResources(RayResources):
    """Where the index is built and searched (``resources:`` in ``configs/index.yaml``);
    none of these changes the index or its neighbours."""

    device: Literal["auto", "gpu", "cpu"] = "auto"  # auto: GPUs where there are (on a
    # cluster: where it has or can start them), else the CPU; gpu: fail without one
    gpus: int = 1  # on a cluster: GPUs the build task takes (each fills a range of the rows)
    batch_size: int = 8_192  # vectors per add / search block
    neighbours_local_below: int = 20_000  # smaller catalogs: the table is computed in the
    # job's own process (no Ray to start, no actor pool); larger ones by a Ray Data actor pool
    neighbours_local_s: float = 30.0  # ... and so is a larger one whose table takes under
    # this many seconds at the speed tuning measured (tracks / queries per second); 0: off
    actors: int = 1  # neighbour-search actors, one index copy each
    cpus_per_actor: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("batch_size", "actors", "gpus"):
            if getattr(self, name) < 1:
                raise ConfigError(f"resources.{name} must be >= 1, got {getattr(self, name)}")
        if self.cpus_per_actor <= 0:
            raise ConfigError(f"resources.cpus_per_actor must be > 0, got {self.cpus_per_actor}")
