"""The musicnn port: TensorFlow's outputs matched without TensorFlow, the bundle reader
on hostile files, the conversion cache, the front end inside a genreflow model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from genreflow.errors import ConfigError
from genreflow.features import log_mel_for_spec
from genreflow.models import build_model
from genreflow.models.musicnn import PATCH_FRAMES, Musicnn, MusicnnFrontend
from genreflow.pretrained import load_pretrained as load_pretrained_parts
from genreflow.pretrained import musicnn as pretrained
from genreflow.pretrained.tf_bundle import BundleError, read_bundle, read_index
from genreflow.tokens import TokenSpec, preset
from genreflow.train import TrainConfig, TrainingRecipe, lr_factor
from tests.fixtures.musicnn_reference import OUT as REFERENCE
from tests.fixtures.musicnn_reference import clips

# float32 rounding through ~20 layers: the largest difference seen is 2.3e-6 of the
# output's largest magnitude (max pool), 4e-7 absolute on the taggram
RELATIVE_TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(autouse=True)
def _cache_env(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(pretrained.CACHE_ENV, str(cache))


@pytest.mark.parametrize("model", pretrained.MODELS)
def test_port_matches_tensorflow_reference(model: str) -> None:
    """Generated clips -> genreflow's musicnn front end -> the converted weights equal
    musicnn 0.1.0's TensorFlow taggram and features (tests/fixtures/musicnn_reference.py)."""
    reference = np.load(REFERENCE)
    spec = preset("musicnn")
    patches = np.stack([log_mel_for_spec(c, spec).T[:PATCH_FRAMES] for c in clips()])
    np.testing.assert_allclose(
        patches.sum(axis=(1, 2)), reference["input_patch_sum"], rtol=1e-5
    )  # the same input as TensorFlow's (librosa's mel, float32)
    net = pretrained.load_pretrained(model)
    with torch.no_grad():
        out = net(torch.from_numpy(patches))
    ours = {
        "taggram": torch.sigmoid(out.logits),
        "penultimate": out.penultimate,
        "mean_pool": out.mean_pool,
        "max_pool": out.max_pool,
    }
    for key, value in ours.items():
        expected = reference[f"{model}/{key}"]
        scale = float(np.abs(expected).max())
        np.testing.assert_allclose(
            value.numpy(), expected, rtol=0, atol=RELATIVE_TOLERANCE * scale, err_msg=key
        )
    # the tags differ between clips: the test is not passed by a constant output
    assert np.abs(reference[f"{model}/taggram"][0] - reference[f"{model}/taggram"][2]).max() > 0.05


def test_conversion_is_cached_with_provenance_and_a_bad_cache_is_rebuilt(cache: Path) -> None:
    first = pretrained.pretrained_state("MSD_musicnn")
    files = sorted((cache / "musicnn").glob("MSD_musicnn-*.pt"))
    assert len(files) == 1
    info = json.loads(files[0].with_suffix(".json").read_text())
    assert "ISC" in info["licence"] and "musicnn 0.1.0" in info["source"]
    # the cache loads with weights_only=True
    loaded = torch.load(files[0], weights_only=True)
    assert all(torch.equal(loaded[k], v) for k, v in first.items())
    files[0].write_bytes(b"not a torch file")
    again = pretrained.pretrained_state("MSD_musicnn")
    assert all(torch.equal(again[k], v) for k, v in first.items())
    assert torch.load(files[0], weights_only=True).keys() == first.keys()


def test_missing_weights_say_how_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(pretrained.WEIGHTS_DIR_ENV, str(tmp_path))
    with pytest.raises(ConfigError, match="no musicnn checkpoint"):
        pretrained.weights_dir("MSD_musicnn")
    with pytest.raises(ConfigError, match="unknown musicnn model"):
        pretrained.weights_dir("MSD_vggish")


def test_bundle_reader_refuses_damaged_files(tmp_path: Path) -> None:
    source = pretrained.weights_dir("MSD_musicnn")
    tensors = read_bundle(str(source) + "/")
    assert tensors["conv2d/kernel"].shape == (7, 38, 1, 204)
    index = (source / ".index").read_bytes()
    data = next(source.glob(".data-*"))

    def bundle(index_bytes: bytes, data_bytes: bytes | None = None) -> str:
        folder = tmp_path / f"b{len(list(tmp_path.iterdir()))}"
        folder.mkdir()
        (folder / ".index").write_bytes(index_bytes)
        target = folder / data.name
        if data_bytes is None:
            shutil.copy(data, target)
        else:
            target.write_bytes(data_bytes)
        return str(folder) + "/"

    with pytest.raises(BundleError, match="too short"):
        read_bundle(bundle(b"\x00" * 10))
    with pytest.raises(BundleError, match="bad magic"):
        read_bundle(bundle(index[:-8] + b"\x00" * 8))
    with pytest.raises(BundleError):  # the index block handle points past the file
        read_bundle(bundle(index[:-48] + b"\xff\xff\xff\x7f" * 10 + index[-8:]))
    with pytest.raises(BundleError, match="outside its data file"):
        read_bundle(bundle(index, data.read_bytes()[:1000]))
    entries = read_index(source / ".index")
    assert entries["dense/kernel"].shape == (1506, 200)


def test_musicnn_preset_and_scale() -> None:
    spec = preset("musicnn")
    assert (spec.sample_rate, spec.n_fft, spec.hop_length, spec.n_mels) == (16000, 512, 256, 96)
    assert spec.token_frames == PATCH_FRAMES and spec.scale == "log1p"
    loud = np.clip(3 * np.sin(np.arange(spec.clip_samples) * 0.05), -1, 1).astype(np.float32)
    mel = log_mel_for_spec(loud, spec)
    assert np.isfinite(mel).all() and mel.min() >= 0 and mel.max() < 8  # no float16 overflow
    # specs that existed before `scale` and `clip_from` keep their hash (they took the
    # clip from the start); the middle of a long track is other data, and hashes apart
    old = TokenSpec(clip_from="start")
    assert old.spec_hash() == "c135e5f3f198db78"
    assert TokenSpec.from_dict({k: v for k, v in old.to_dict().items()}) == old
    assert TokenSpec().spec_hash() != old.spec_hash()
    with pytest.raises(ConfigError, match="scale"):
        TokenSpec(scale="linear")


def test_signature_model_on_the_frozen_front_end() -> None:
    spec = preset("musicnn")
    model = build_model("signature_attention", spec, n_genres=3, preset="musicnn")
    load_pretrained_parts(model)
    frontend = model.frontend
    assert isinstance(frontend, MusicnnFrontend)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and not any(n.startswith("frontend.") for n in trainable)
    tokens = torch.from_numpy(
        np.stack(
            [log_mel_for_spec(c, spec) for c in np.tile(clips(), (1, 8))[:, : spec.clip_samples]]
        )
    )  # [3, 96, n_frames]
    x = torch.stack([tokens[:, :, s : s + spec.token_frames] for s in spec.token_starts()], 1)
    model.train()
    assert not frontend.net.training  # frozen: its batch norm keeps musicnn's statistics
    out = model(x)
    out.genre_logits.sum().backward()
    assert all(p.grad is None for p in frontend.parameters())
    assert out.embedding.shape == (3, frontend.out_dim) == (3, 1506)
    # the signature is the attention-weighted mean of musicnn's own token features
    model.eval()
    with torch.no_grad():
        out = model(x)
        direct = Musicnn().eval()
        direct.load_state_dict(frontend.net.state_dict())
        e = direct(x[0].transpose(1, 2)).pooled  # [tokens, 1506]
    torch.testing.assert_close(out.embedding[0], out.token_weights[0] @ e, rtol=1e-4, atol=1e-4)
    # the cached features equal recomputed ones
    again = frontend(x[0])
    torch.testing.assert_close(again, e, rtol=1e-5, atol=1e-5)


def test_wrong_spec_for_the_front_end_is_refused() -> None:
    with pytest.raises(ConfigError, match="ingest with spec=musicnn"):
        build_model("signature_attention", TokenSpec(), n_genres=3, preset="musicnn")


def test_the_front_end_offers_pooled_and_penultimate_features() -> None:
    spec = preset("musicnn")
    for features, dim in (("penultimate", 200), ("pooled", 1506)):
        model = build_model(
            "signature_attention", spec, n_genres=3, preset="musicnn",
            overrides={"features": features},
        )  # fmt: skip
        assert getattr(model, "frontend").out_dim == dim  # noqa: B009
    with pytest.raises(ConfigError, match="unknown musicnn features 'taggram'"):
        build_model(
            "signature_attention", spec, n_genres=3, preset="musicnn",
            overrides={"features": "taggram"},
        )  # fmt: skip


def test_fine_tuning_trains_the_front_end_at_its_own_rate() -> None:
    spec = preset("musicnn")
    config = TrainConfig(
        model="signature_attention", preset="musicnn", model_overrides={"finetune": True},
        lr=1e-3, frontend_lr_scale=0.25, epochs=4, lr_schedule="cosine", channels_last=False,
    )  # fmt: skip
    recipe = TrainingRecipe(config, spec, genres=["a", "b", "c"], moods=["x", "y"])
    recipe.prepare()
    frontend = getattr(recipe.model, "frontend")  # noqa: B009
    own, pretrained = recipe.optimizer.param_groups
    assert {id(p) for p in pretrained["params"]} == {id(p) for p in frontend.parameters()}
    assert not {id(p) for p in own["params"]} & {id(p) for p in pretrained["params"]}
    assert (own["lr"], pretrained["lr"]) == pytest.approx((1e-3, 2.5e-4))
    before = {n: p.detach().clone() for n, p in frontend.named_parameters()}
    tokens = torch.from_numpy(
        np.stack(
            [log_mel_for_spec(c, spec) for c in np.tile(clips(), (1, 8))[:2, : spec.clip_samples]]
        )
    )
    x = torch.stack([tokens[:, :, s : s + spec.token_frames] for s in spec.token_starts()], 1)
    batch = {"tokens": x, "genre_idx": torch.tensor([0, 2]), "mood_idx": torch.tensor([-1, -1])}
    trained = recipe.train_epoch([batch], epoch=2)
    factor = lr_factor(config, 2)
    assert trained["lr"] == pytest.approx(1e-3 * factor)
    assert (own["lr"], pretrained["lr"]) == pytest.approx((1e-3 * factor, 2.5e-4 * factor))
    assert frontend.net.training  # fine-tuned: its batch norms train too
    moved = [n for n, p in frontend.named_parameters() if not torch.equal(p, before[n])]
    assert moved  # a gradient reached musicnn and the optimizer stepped it
    # frozen (the preset's default): one group, nothing of musicnn in it
    frozen = TrainingRecipe(
        TrainConfig(model="signature_attention", preset="musicnn"),
        spec, genres=["a", "b", "c"], moods=["x", "y"],
    )  # fmt: skip
    (group,) = frozen.optimizer.param_groups
    assert not {id(p) for p in group["params"]} & {
        id(p)
        for p in getattr(frozen.model, "frontend").parameters()  # noqa: B009
    }
