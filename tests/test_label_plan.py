"""How the label job sizes its model actor pool (no Ray needed)."""

from __future__ import annotations

import pytest
import torch

from genreflow.errors import ConfigError
from genreflow.label import (
    DECODE_S_PER_TRACK,
    LabelConfig,
    LabelPlan,
    LabelResources,
    model_seconds_per_track,
    plan_label,
    plan_reads,
    resolve_gpus,
)
from genreflow.models import build_model
from genreflow.tokens import TokenSpec


def plan(
    cpus: float,
    gpus: float = 0.0,
    *,
    shards: bool = True,
    model_s: float | None = None,
    tracks: int | None = None,
    **settings: object,
) -> tuple:
    config = LabelConfig(resources=LabelResources(**settings))  # type: ignore[arg-type]
    planned = plan_label(
        config,
        source="shards" if shards else "audio",
        tracks=10**9 if tracks is None else tracks,
        cluster_cpus=cpus,
        present_gpus=gpus,
        possible_gpus=None,
        model_s_per_track=model_s,
    )
    return planned.actors, planned.cpus_per_actor


def gpu_config(share: float) -> LabelConfig:
    return LabelConfig(resources=LabelResources(gpus_per_actor=share))


def test_cpu_actors_are_single_threaded_halves_leaving_a_cpu_to_the_reads() -> None:
    assert plan(2) == (2, 0.5)  # 1 CPU for the actors, 1 for the reads beside them
    assert plan(8) == (8, 0.5)  # one per core, never more
    assert plan(1) == (1, 0.5)
    for cpus in (2, 3, 8, 64):
        actors, each = plan(cpus)
        assert actors * each <= cpus - 1 or actors == 1


def test_raw_audio_shares_the_cpus_between_decoding_and_the_model_by_their_cost() -> None:
    assert plan(2, shards=False) == (1, 0.5)  # unmeasured: one actor per ten CPUs
    assert plan(40, shards=False) == (4, 0.5)
    tiny, musicnn = DECODE_S_PER_TRACK / 9, DECODE_S_PER_TRACK * 12  # a tenth, 12/13
    assert plan(40, shards=False, model_s=tiny) == (4, 0.5)
    assert plan(40, shards=False, model_s=musicnn) == (37, 0.5)
    assert plan(2, shards=False, model_s=musicnn) == (2, 0.5)
    assert plan(2, shards=False, model_s=1e-6) == (1, 0.5)  # never none
    assert plan(40, shards=False, model_s=musicnn, actors=3) == (3, 0.5)  # settings win


def test_the_model_cost_is_measured_on_one_thread() -> None:
    spec = TokenSpec(clip_s=8.0, n_tokens=4, token_s=2.0, n_mels=32)
    threads = torch.get_num_threads()
    model = build_model("signature_attention", spec, n_genres=3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    seconds = model_seconds_per_track(model, spec)
    assert 0 < seconds < 5
    assert torch.get_num_threads() == threads
    # the measured copy is folded for inference; the caller's model is left as it was
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert model.state_dict().keys() == before.keys()


def test_a_planned_pool_never_outnumbers_the_batches() -> None:
    assert plan(16, tracks=40) == (2, 0.5)  # two calls of 32 tracks
    assert plan(16, tracks=1000) == (16, 0.5)
    assert plan(16, tracks=0) == (1, 0.5)
    assert plan(16, 4, gpus_per_actor=1.0, tracks=20) == (1, 1.0)
    assert plan(16, tracks=40, actors=6) == (6, 0.5)  # a setting is kept as it is


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
    assert plan_reads(LabelConfig(), actors=4, gpus_per_actor=1.0) == 8  # GPUs eat faster
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
    assert resolve_gpus(LabelConfig(), present=present, possible=possible) == expected
    assert resolve_gpus(gpu_config(0.5), present=0.0, possible=None) == 0.5
    assert resolve_gpus(gpu_config(0), present=4.0, possible=4.0) == 0.0


def test_an_unresolved_auto_plans_cpu_actors() -> None:
    assert LabelConfig().resources.gpus_per_actor == "auto"
    assert plan(8) == (8, 0.5) and plan_reads(LabelConfig(), actors=2) == 1


def test_planning_leaves_the_config_as_written_and_reads_as_one_line() -> None:
    config = LabelConfig(resources=LabelResources(batch_size=16))
    before = repr(config)
    on_gpus = plan_label(
        config,
        source="shards",
        tracks=5000,
        cluster_cpus=32,
        present_gpus=4,
        possible_gpus=4,
    )
    assert repr(config) == before and config.resources.gpus_per_actor == "auto"
    assert on_gpus == LabelPlan(
        source="shards",
        tracks=5000,
        actors=4,
        cpus_per_actor=1.0,
        gpus_per_actor=1.0,
        device="cuda",
        torch_threads=1,
        read_tasks=8,
        batch_size=16,
        model_batch=None,
    )
    on_cpus = plan_label(
        config,
        source="audio",
        tracks=5000,
        cluster_cpus=8,
        present_gpus=0,
        possible_gpus=None,
        model_s_per_track=0.02,
    )
    assert (on_cpus.device, on_cpus.read_tasks, on_cpus.gpus_per_actor) == ("auto", 0, 0.0)
    for planned in (on_gpus, on_cpus):
        line = planned.line()
        assert "\n" not in line and f"{planned.actors} model actor(s)" in line
    assert "4 model actor(s) x (1 CPU + 1 GPU, cuda" in on_gpus.line()
