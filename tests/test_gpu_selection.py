"""Run-time GPU selection, checked on the CPU: what training, labelling and the index
choose on a cluster with GPUs, with a GPU group at zero behind an autoscaler, and with
none; and the step's precision on each kind of device."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from genreflow.errors import ConfigError
from genreflow.ray_compat import max_cluster_resources
from genreflow.runtime import cluster_gpus, wait_for_resources, wants_gpus
from genreflow.tokens import TokenSpec
from genreflow.train import TrainConfig, TrainingRecipe, choose_precision

CUDA, CPU = torch.device("cuda"), torch.device("cpu")


@pytest.mark.parametrize(
    "setting,device,bf16,expected",
    [
        ("auto", CUDA, True, ("bf16", torch.bfloat16, False)),
        (True, CUDA, True, ("bf16", torch.bfloat16, False)),
        ("auto", CUDA, False, ("fp16", torch.float16, True)),  # pre-Ampere: fp16 + scaler
        ("auto", CPU, True, ("fp32", None, False)),
        (False, CUDA, True, ("fp32", None, False)),
        ("fp16", CUDA, True, ("fp16", torch.float16, True)),
        ("bf16", CPU, False, ("bf16", torch.bfloat16, False)),
    ],
)
def test_precision_follows_the_device(
    setting: bool | str, device: torch.device, bf16: bool, expected: tuple[object, ...]
) -> None:
    chosen = choose_precision(setting, device, bf16_supported=bf16)
    assert (chosen.name, chosen.dtype, chosen.scaled) == expected


def test_an_unknown_precision_is_refused() -> None:
    with pytest.raises(ConfigError, match="mixed_precision must be auto, bf16, fp16 or false"):
        choose_precision("fp8", CPU)


@pytest.mark.parametrize("setting", ["fp16", "bf16"])
def test_a_mixed_precision_step_trains(setting: str) -> None:
    spec = TokenSpec(clip_s=4.0, n_tokens=2, token_s=2.0, n_mels=32)
    config = TrainConfig(model="baseline_cnn", mixed_precision=setting)  # type: ignore[arg-type]
    recipe = TrainingRecipe(config, spec, genres=["a", "b"], moods=["sad", "neutral", "happy"])
    recipe.prepare()
    assert recipe.scaler.is_enabled() == (setting == "fp16")
    g = torch.Generator().manual_seed(0)
    batch = {
        "tokens": torch.randn((4, *spec.token_shape), generator=g) * 10 - 30,
        "genre_idx": torch.tensor([0, 1, 0, 1]),
        "mood_idx": torch.tensor([0, 1, 2, -1]),
    }
    before = [p.detach().clone() for p in recipe.model.parameters()]
    losses = [recipe.step(batch) for _ in range(3)]
    assert all(torch.isfinite(torch.tensor(losses)))
    after = recipe.model.parameters()
    assert any(not torch.equal(p, q) for p, q in zip(after, before, strict=True))


@pytest.mark.parametrize(
    "setting,present,possible,expected",
    [
        ("auto", 2.0, None, True),  # GPUs up now
        ("auto", 0.0, 8.0, True),  # a GPU group at zero the autoscaler can start
        ("auto", 0.0, 0.0, False),  # an autoscaler without GPU node types
        ("auto", 0.0, None, False),  # a fixed CPU cluster or a local Ray
        (True, 0.0, None, True),  # as asked: the resource wait refuses it
        (False, 4.0, 4.0, False),
    ],
)
def test_gpu_auto_follows_the_cluster(
    setting: bool | str, present: float, possible: float | None, expected: bool
) -> None:
    assert wants_gpus(setting, present=present, possible=possible, what="x") is expected


@pytest.fixture
def gpu_group_at_zero(ray_session: None) -> Iterator[None]:
    """The node types an autoscaler publishes for a cluster like cluster/aws.yaml: a CPU
    head and a GPU group of up to four one-GPU nodes, none running (written where Ray's
    autoscaler writes them, in the GCS)."""
    from ray._raylet import GCS_AUTOSCALER_CLUSTER_CONFIG_KEY, GCS_AUTOSCALER_STATE_NAMESPACE
    from ray.core.generated import autoscaler_pb2
    from ray.experimental import internal_kv

    config = autoscaler_pb2.ClusterConfig(
        node_group_configs=[
            autoscaler_pb2.NodeGroupConfig(name="head", resources={"CPU": 2}, max_count=1),
            autoscaler_pb2.NodeGroupConfig(
                name="gpu", resources={"CPU": 8, "GPU": 1}, min_count=0, max_count=4
            ),
        ]
    )
    key, namespace = GCS_AUTOSCALER_CLUSTER_CONFIG_KEY, GCS_AUTOSCALER_STATE_NAMESPACE
    internal_kv._internal_kv_put(key, config.SerializeToString(), namespace=namespace)
    try:
        yield
    finally:
        internal_kv._internal_kv_del(key, namespace=namespace)


def test_a_gpu_group_at_zero_counts_as_gpus_to_come(gpu_group_at_zero: None) -> None:
    assert max_cluster_resources() == {"CPU": 34.0, "GPU": 4.0}
    present, possible = cluster_gpus()
    assert (present, possible) == (0.0, 4.0)
    assert wants_gpus("auto", present=present, possible=possible, what="training")


def test_a_request_no_node_type_mix_can_hold_is_refused_at_once(gpu_group_at_zero: None) -> None:
    with pytest.raises(ConfigError, match=r"node types offer at most 34 CPU, 4 GPU"):
        wait_for_resources(
            [{"CPU": 1.0, "GPU": 1.0}] * 5,
            what="training (5 worker(s))",
            timeout_s=600,
            local=False,
        )


def test_without_an_autoscaler_nothing_is_to_come(ray_session: None) -> None:
    assert max_cluster_resources() is None
    assert cluster_gpus() == (0.0, None)
