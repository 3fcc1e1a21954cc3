"""The training recipe's pieces against direct computations: the learning-rate
schedule, each input augmentation, mixup and label smoothing in a real step."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from genreflow.errors import ConfigError
from genreflow.features import FLOOR_DB
from genreflow.tokens import TokenSpec
from genreflow.train import TrainConfig, TrainingRecipe, augment_tokens, lr_factor, mixup

SPEC = TokenSpec(clip_s=4.0, n_tokens=2, token_s=1.0, n_mels=16, n_fft=256, hop_length=128)


def test_lr_schedule_warms_up_then_follows_a_cosine_to_zero() -> None:
    config = TrainConfig(epochs=10, lr_schedule="cosine", warmup_epochs=2)
    factors = [lr_factor(config, e) for e in range(10)]
    assert factors[:2] == pytest.approx([1 / 3, 2 / 3])
    assert factors[2] == pytest.approx(1.0)
    assert factors[6] == pytest.approx(0.5 * (1 + math.cos(math.pi * 4 / 8)))
    assert all(a > b for a, b in itertools.pairwise(factors[2:]))
    assert [lr_factor(TrainConfig(), e) for e in range(3)] == [1.0, 1.0, 1.0]  # the default


def test_gain_jitter_is_a_gain_in_either_scale() -> None:
    torch.manual_seed(0)
    db = torch.full((3, 2, 16, 8), -30.0)
    db[0, 0, 0, 0] = FLOOR_DB
    out = augment_tokens(db, TrainConfig(gain_jitter_db=6.0), SPEC)
    shift = out[:, :, 1:, :] - db[:, :, 1:, :]
    per_track = shift.amax(dim=(1, 2, 3))
    assert torch.allclose(shift, per_track.view(3, 1, 1, 1).expand_as(shift))
    assert per_track.abs().max() <= 6.0 and per_track.std() > 0  # tracks differ
    assert out[0, 0, 0, 0] == FLOOR_DB  # the floor stays the floor
    # log1p: log10(1 + 10000 * g * mel) of the same mel power
    log1p_spec = TokenSpec(**{**SPEC.to_dict(), "scale": "log1p"})
    mel = torch.rand(3, 2, 16, 8) * 1e-2
    x = torch.log10(1 + 10000 * mel)
    torch.manual_seed(1)
    out = augment_tokens(x, TrainConfig(gain_jitter_db=6.0), log1p_spec)
    torch.manual_seed(1)
    gain_db = (torch.rand(3, 1, 1, 1) * 2 - 1) * 6.0
    expected = torch.log10(1 + 10000 * mel * 10 ** (gain_db / 10))
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)


def test_offset_jitter_shifts_every_token_alike_and_masks_stay_in_bounds() -> None:
    torch.manual_seed(3)
    x = torch.arange(3 * 2 * 16 * 8, dtype=torch.float32).reshape(3, 2, 16, 8)
    out = augment_tokens(x, TrainConfig(offset_jitter=0.5), SPEC)
    shifts = [s for s in range(-4, 5) if torch.equal(out, torch.roll(x, s, dims=3))]
    assert len(shifts) == 1
    masked = augment_tokens(x, TrainConfig(spec_augment=2), SPEC)
    changed = masked != x
    floor = x.amin(dim=(2, 3), keepdim=True).expand_as(x)
    assert torch.equal(masked[changed], floor[changed])  # masks hold the token's minimum
    # at most 2 bands of <= 16/8 mels and 2 of <= 8/8 frames per token
    assert int(changed.all(dim=3).sum(dim=2).max()) <= 4
    assert torch.equal(augment_tokens(x, TrainConfig(), SPEC), x)  # nothing set: unchanged


def test_mixup_mixes_tokens_and_the_step_mixes_the_labels() -> None:
    torch.manual_seed(0)
    batch = {
        "tokens": torch.randn(4, *SPEC.token_shape),
        "genre_idx": torch.tensor([0, 1, 0, 1]),
        "mood_idx": torch.tensor([-1, -1, -1, -1]),
    }
    mixed, order, lam = mixup(batch, 0.4)
    assert 0 <= lam <= 1 and sorted(order.tolist()) == [0, 1, 2, 3]
    expected = lam * batch["tokens"] + (1 - lam) * batch["tokens"][order]
    torch.testing.assert_close(mixed["tokens"], expected)
    config = TrainConfig(mixup_alpha=0.4, label_smoothing=0.1, spec_augment=1, batch_size=4)
    recipe = TrainingRecipe(config, SPEC, genres=["a", "b"], moods=["x", "y"])
    recipe.prepare()
    losses = [recipe.step(batch) for _ in range(3)]
    assert all(math.isfinite(v) for v in losses)


@pytest.mark.parametrize(
    "override",
    [
        {"label_smoothing": 1.0},
        {"mixup_alpha": -0.1},
        {"offset_jitter": 1.5},
        {"spec_augment": -1},
        {"frontend_lr_scale": 0.0},
    ],
)
def test_recipe_settings_out_of_range_are_refused(override: dict[str, float]) -> None:
    with pytest.raises(ConfigError, match=next(iter(override))):
        TrainConfig(**override)  # type: ignore[arg-type]


def test_augmentation_draws_follow_the_seed() -> None:
    x = torch.from_numpy(np.random.default_rng(0).normal(size=(2, 2, 16, 8)).astype(np.float32))
    config = TrainConfig(spec_augment=2, gain_jitter_db=3.0, offset_jitter=0.25)
    torch.manual_seed(7)
    a = augment_tokens(x, config, SPEC)
    torch.manual_seed(7)
    assert torch.equal(a, augment_tokens(x, config, SPEC))
