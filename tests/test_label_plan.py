"""How the label job sizes its model actor pool (no Ray needed)."""

from __future__ import annotations

import pytest

from genreflow.errors import ConfigError
from genreflow.label import LabelConfig, LabelResources, plan_actors, plan_reads, resolve_gpus


def plan(cpus: float, gpus: float = 0.0, *, shards: bool = True, **settings: object) -> tuple:
    config = LabelConfig(resources=LabelResources(**settings))  # type: ignore[arg-type]
    return plan_actors(config, cluster_cpus=cpus, cluster_gpus=gpus, from_shards=shards)


def gpu_config(share: float) -> LabelConfig:
    return LabelConfig(resources=LabelResources(gpus_per_actor=share))


def test_cpu_actors_are_single_threaded_halves_leaving_a_cpu_to_the_reads() -> None:
    assert plan(2) == (2, 0.5)  # 1 CPU for the actors, 1 for the reads beside them
    assert plan(8) == (8, 0.5)  # one per core, never more
    assert plan(1) == (1, 0.5)
    for cpus in (2, 3, 8, 64):
        actors, each = plan(cpus)
        assert actors * each <= cpus - 1 or actors == 1


def test_raw_audio_leaves_most_cpus_to_decoding() -> None:
    assert plan(2, shards=False) == (1, 0.5)
    assert plan(40, shards=False) == (4, 0.5)


def test_gpu_actors_follow_the_gpus() -> None:
    assert plan(16, 4, gpus_per_actor=1.0) == (4, 1.0)
    assert plan(16, 2, gpus_per_actor=0.5) == (4, 1.0)
    assert plan(16, 0, gpus_per_actor=1.0) == (1, 1.0)  # Ray then says no GPU fits


def test_settings_win_over_the_plan() -> None:
    assert plan(8, actors=3) == (3, 0.5)
    assert plan(8, actors=2, cpus_per_actor=2.0) == (2, 2.0)
    assert plan(8, 2, gpus_per_actor=1.0, actors=1, cpus_per_actor=4.0) == (1, 4.0)


def test_reads_follow_the_actors_they_feed() -> None:
    assert plan_reads(LabelConfig(), actors=2) == 1  # a read outpaces two CPU actors
    assert plan_reads(LabelConfig(), actors=1) == 1
    assert plan_reads(LabelConfig(), actors=15) == 7
    assert (
        plan_reads(LabelConfig(resources=LabelResources(gpus_per_actor=1.0)), actors=4) == 8
    )  # GPUs eat faster
    assert plan_reads(LabelConfig(resources=LabelResources(read_tasks=3)), actors=2) == 3


@pytest.mark.parametrize(
    "settings",
    [
        {"actors": 0},
        {"cpus_per_actor": 0},
        {"read_cpus": -1},
        {"gpus_per_actor": -0.5},
        {"read_tasks": 0},
    ],
)
def test_bad_pool_settings_are_refused(settings: dict[str, float]) -> None:
    with pytest.raises(ConfigError, match=next(iter(settings))):
        LabelResources(**settings)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "present,possible,expected",
    [(4.0, None, 1.0), (0.0, 8.0, 1.0), (0.0, None, 0.0), (0.0, 0.0, 0.0)],
)
def test_auto_gives_each_actor_a_gpu_where_the_cluster_has_or_can_start_one(
    present: float, possible: float | None, expected: float
) -> None:
    resolved = resolve_gpus(LabelConfig(), present=present, possible=possible)
    assert resolved.resources.gpus_per_actor == expected
    assert resolve_gpus(gpu_config(0.5), present=0.0, possible=None).resources.gpu_share == 0.5
    assert resolve_gpus(gpu_config(0), present=4.0, possible=4.0).resources.gpu_share == 0.0


def test_an_unresolved_auto_plans_cpu_actors() -> None:
    assert LabelConfig().resources.gpus_per_actor == "auto"
    assert plan(8) == (8, 0.5) and plan_reads(LabelConfig(), actors=2) == 1
