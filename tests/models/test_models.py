from __future__ import annotations

import copy
import io

import numpy as np
import pytest
import torch

from genreflow.errors import ConfigError, ShapeError
from genreflow.models import MODELS, build_model, count_parameters
from genreflow.models.base import fuse_for_inference
from genreflow.models.lyrics import LyricsVocab
from genreflow.tokens import TokenSpec

SPEC = TokenSpec(clip_s=8.0, n_tokens=4, token_s=2.0, n_mels=64)  # tokens [4, 64, 86]
N_GENRES, VOCAB = 5, 40


def tokens(batch: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn((batch, *SPEC.token_shape), generator=g) * 15 - 40


def lyrics(batch: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, VOCAB, (batch, 6, 5), generator=g)
    ids[:, 4:, :] = 0
    return ids


def make(name: str, preset: str = "tiny", seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(name, SPEC, n_genres=N_GENRES, preset=preset, vocab_size=VOCAB)


@pytest.mark.parametrize("preset", ["tiny", "paper"])
@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("batch", [1, 3])
def test_output_shapes(name: str, preset: str, batch: int) -> None:
    model = make(name, preset).eval()
    out = model(tokens(batch), lyrics=lyrics(batch))
    assert out.genre_logits.shape == (batch, N_GENRES)
    assert out.embedding.dim() == 2 and out.embedding.shape[0] == batch
    if MODELS[name].has_mood:
        assert out.mood_logits is not None and out.mood_logits.shape == (batch, 3)
    else:
        assert out.mood_logits is None
    if out.token_weights is not None:
        assert out.token_weights.shape == (batch, SPEC.n_tokens)
        assert torch.all(out.token_weights >= 0)
        torch.testing.assert_close(out.token_weights.sum(1), torch.ones(batch))
    assert torch.isfinite(out.genre_logits).all()


@pytest.mark.parametrize("name", sorted(MODELS))
def test_padded_tokens_get_zero_weight_and_do_not_change_the_output(name: str) -> None:
    model = make(name).eval()
    x = tokens(2)
    mask = torch.tensor([[True, True, False, False], [True, True, True, True]])
    out = model(x, token_mask=mask, lyrics=lyrics(2))
    if out.token_weights is not None:
        assert torch.all(out.token_weights[0, 2:] == 0)
        torch.testing.assert_close(out.token_weights.sum(1), torch.ones(2))
    changed = x.clone()
    changed[0, 2:] = 30.0  # whatever the padding holds
    again = model(changed, token_mask=mask, lyrics=lyrics(2))
    torch.testing.assert_close(again.genre_logits, out.genre_logits)


def test_signature_model_takes_fewer_tokens_than_its_spec() -> None:
    model = make("signature_attention").eval()
    out = model(tokens(2)[:, :2])
    assert out.token_weights is not None and out.token_weights.shape == (2, 2)
    with pytest.raises(ShapeError, match="at most 4 tokens"):
        model(torch.cat([tokens(1), tokens(1)], dim=1))


def test_missing_lyrics_get_zero_weight_and_a_label() -> None:
    model = make("multimodal_han").eval()
    ids = lyrics(2)
    ids[1] = 0  # the second track has no lyrics
    document, has = model.encode_lyrics(ids)
    assert has.tolist() == [True, False]
    assert torch.all(document[1] == 0) and torch.any(document[0] != 0)
    out = model(tokens(2), lyrics=ids)
    assert torch.isfinite(out.genre_logits).all()
    no_lyrics = model(tokens(2), lyrics=None)  # no lyrics at all equals all-padding lyrics
    torch.testing.assert_close(no_lyrics.genre_logits[1], out.genre_logits[1])


@pytest.mark.parametrize("name", sorted(MODELS))
def test_a_batch_equals_its_items_stacked(name: str) -> None:
    model = make(name).eval()
    x, ids = tokens(3), lyrics(3)
    batch = model(x, lyrics=ids)
    for i in range(3):
        one = model(x[i : i + 1], lyrics=ids[i : i + 1])
        torch.testing.assert_close(one.genre_logits[0], batch.genre_logits[i], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(one.embedding[0], batch.embedding[i], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_overfits_a_fixed_batch_through_every_branch(name: str) -> None:
    model = make(name, seed=1).train()
    x, ids = tokens(10, seed=3), lyrics(10, seed=4)
    genre = torch.arange(10) % N_GENRES
    mood = torch.arange(10) % 3
    if name == "multimodal_han":
        # the lyrics alone tell two look-alike tracks apart: the lyrics branch must learn
        x[5] = x[0]
        ids[5, 0, 0] = 3
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(120):
        out = model(x, lyrics=ids)
        loss = torch.nn.functional.cross_entropy(out.genre_logits, genre)
        if out.mood_logits is not None:
            loss = loss + torch.nn.functional.cross_entropy(out.mood_logits, mood)
        optimizer.zero_grad()
        loss.backward()
        if not losses:
            silent = [
                n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum()
            ]
            assert not silent, f"no gradient reaches {silent}"
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0] / 10, (losses[0], losses[-1])


@pytest.mark.parametrize("name", sorted(MODELS))
def test_determinism_and_state_dict_round_trip(name: str) -> None:
    a, b = make(name, seed=7).eval(), make(name, seed=7).eval()
    x, ids = tokens(2), lyrics(2)
    torch.testing.assert_close(
        a(x, lyrics=ids).genre_logits, b(x, lyrics=ids).genre_logits, rtol=0, atol=0
    )
    buffer = io.BytesIO()
    torch.save(a.state_dict(), buffer)
    buffer.seek(0)
    c = make(name, seed=99).eval()
    c.load_state_dict(torch.load(buffer, weights_only=True))
    torch.testing.assert_close(
        c(x, lyrics=ids).embedding, a(x, lyrics=ids).embedding, rtol=0, atol=0
    )


@pytest.mark.parametrize("name", sorted(MODELS))
def test_bad_input_names_the_expected_shape(name: str) -> None:
    model = make(name).eval()
    with pytest.raises(ShapeError, match=r"\[batch, n_tokens, 64, 86\]"):
        model(torch.zeros(2, 4, 128, 86))
    with pytest.raises(ShapeError, match=r"\[batch, n_tokens, 64, 86\]"):
        model(torch.zeros(4, 64, 86))
    bad = tokens(1)
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ShapeError, match="NaN"):
        model(bad)
    bad[0, 0, 0, 0] = float("inf")
    with pytest.raises(ShapeError, match="NaN or infinite"):
        model(bad)
    huge = torch.full((1, *SPEC.token_shape), 3e38)  # finite, though their sum is not
    model.check_tokens(huge)  # type: ignore[operator]


@pytest.mark.parametrize("preset", ["tiny", "paper"])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_inference_fusion_keeps_the_outputs(name: str, preset: str) -> None:
    model = make(name, preset)
    g = torch.Generator().manual_seed(1)
    for m in model.modules():  # batch statistics far from the identity
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g))
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.randn(m.num_features, generator=g))
            m.bias.data.copy_(torch.randn(m.num_features, generator=g))
    model.eval()
    x, words = tokens(3), lyrics(3)
    with torch.no_grad():
        before = model(x, lyrics=words)
        fused = fuse_for_inference(copy.deepcopy(model)).to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        after = fused(x, lyrics=words)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    for a, b in zip(before, after, strict=True):
        if a is not None:
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="eval mode"):
        fuse_for_inference(make(name, preset).train())


def test_bad_model_configs() -> None:
    with pytest.raises(ConfigError, match="unknown model 'resnet'"):
        build_model("resnet", SPEC, n_genres=3)
    with pytest.raises(ConfigError, match="no preset 'huge'"):
        build_model("baseline_cnn", SPEC, n_genres=3, preset="huge")
    with pytest.raises(ConfigError, match="no hyperparameter 'depth'"):
        build_model("baseline_cnn", SPEC, n_genres=3, overrides={"depth": 3})
    with pytest.raises(ConfigError, match="at least 2 genres"):
        build_model("baseline_cnn", SPEC, n_genres=1)


def test_presets_follow_the_token_spec_and_paper_sizes_are_larger() -> None:
    for name in MODELS:
        tiny = count_parameters(make(name, "tiny"))
        paper = count_parameters(make(name, "paper"))
        assert tiny < paper / 5, name
    other = TokenSpec(n_mels=96)
    model = build_model("signature_attention", other, n_genres=3)
    assert model(torch.zeros(1, 10, 96, 172) - 40).genre_logits.shape == (1, 3)


def test_word_vectors_initialise_the_embedding(tmp_path: object) -> None:
    vocab = LyricsVocab.build(["love love rain rain"], min_count=1)
    table = np.zeros((len(vocab), 32), np.float32)
    table[2] = 0.5
    model = build_model(
        "multimodal_han", SPEC, n_genres=3, vocab_size=len(vocab), word_vectors=table
    )
    assert torch.all(model.embedding.weight[2] == 0.5)  # type: ignore[index]
