"""Ray workarounds in one place, each with a switch back to stock Ray
(``GENREFLOW_RAY_STOCK=1``): with it, none of them changes Ray's settings, loggers or
environment."""

from __future__ import annotations

import logging
import os

import pytest
import ray.data

from genreflow import ray_compat
from genreflow.entry import EXIT_FAILED, genreflow_cause, mark_started, run_stage
from genreflow.errors import ConfigError, GenreflowError, StorageError


def test_workarounds_change_ray_inside_and_restore_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ray_compat.STOCK_ENV, raising=False)
    monkeypatch.delenv(ray_compat.HEALTH_CHECK_ENV, raising=False)
    context = ray.data.DataContext.get_current()
    v2, reservation = context.use_datasource_v2, context.op_resource_reservation_enabled
    with ray_compat.task_based_parquet_reader(), ray_compat.single_operator_resources():
        assert context.use_datasource_v2 is False
        assert context.op_resource_reservation_enabled is False
    assert (context.use_datasource_v2, context.op_resource_reservation_enabled) == (
        v2, reservation,
    )  # fmt: skip


def test_the_stock_switch_turns_every_workaround_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ray_compat.STOCK_ENV, "1")
    monkeypatch.delenv(ray_compat.HEALTH_CHECK_ENV, raising=False)
    context = ray.data.DataContext.get_current()
    monkeypatch.setattr(context, "use_datasource_v2", True)
    monkeypatch.setattr(context, "op_resource_reservation_enabled", True)
    loggers = [*ray_compat.LOCAL_NOTICES, *ray_compat.STATE_API_PROBES]
    levels = {name: logging.getLogger(name).level for name in loggers}
    with (
        ray_compat.task_based_parquet_reader(),
        ray_compat.single_operator_resources(),
        ray_compat.health_check_interval(0.5),
    ):
        assert context.use_datasource_v2 is True
        assert context.op_resource_reservation_enabled is True
        assert ray_compat.HEALTH_CHECK_ENV not in os.environ
    ray_compat.quiet_local_notices()
    ray_compat.quiet_state_api_probes()
    assert {name: logging.getLogger(name).level for name in loggers} == levels


def test_the_controller_poll_is_set_for_the_fit_unless_the_environment_sets_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(ray_compat.STOCK_ENV, raising=False)
    env = ray_compat.HEALTH_CHECK_ENV
    monkeypatch.delenv(env, raising=False)
    with ray_compat.health_check_interval(0.5):
        assert os.environ[env] == "0.5"  # Ray passes it on to the controller
    assert env not in os.environ
    monkeypatch.setenv(env, "3")
    with ray_compat.health_check_interval(0.5):
        assert os.environ[env] == "3"
    assert os.environ[env] == "3"


def test_a_task_error_is_reported_as_the_genreflow_error_inside_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Ray Data delivers a map function's exception as text inside its own wrapper; the
    stage still fails with genreflow's one line (and its exit code), not Ray's."""
    ray_text = (
        "ray::MapBatches(ingest_shard)() (pid=1, ip=10.0.0.1)\n"
        '  File "genreflow/storage.py", line 180, in write_bytes_atomic\n'
        "genreflow.errors.StorageError: cannot write 's3://b/x/shards/a.parquet': AWS Error "
        "NETWORK_CONNECTION (the storage endpoint did not answer after 3 attempts)\n\n"
        "The above exception was the direct cause of the following exception:\n\n"
        "ray.exceptions.UserCodeException: UDF failed to process a data block.\n"
    )
    cause = genreflow_cause(RuntimeError(ray_text))
    assert isinstance(cause, StorageError) and str(cause).startswith("cannot write 's3://b/x/")
    audio = genreflow_cause(RuntimeError("genreflow.errors.AudioError: file is empty"))
    assert type(audio) is GenreflowError and str(audio) == "file is empty"
    assert genreflow_cause(RuntimeError("ValueError: not ours")) is None
    wrapped = RuntimeError("outer")
    wrapped.__cause__ = ConfigError("inner")
    assert genreflow_cause(wrapped) is wrapped.__cause__

    def fails() -> int:
        mark_started()
        raise RuntimeError(ray_text)

    with caplog.at_level(logging.ERROR):
        assert run_stage(fails) == EXIT_FAILED
    assert "cannot write 's3://b/x/shards/a.parquet'" in caplog.text
    assert "UserCodeException" not in caplog.text
