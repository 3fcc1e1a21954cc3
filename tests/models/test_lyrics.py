from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from genreflow.models.lyrics import PAD, UNK, LyricsVocab, load_word2vec_text, sentences


def test_sentences_split_on_lines_and_punctuation() -> None:
    assert sentences("Hello there! It's me.\nAgain") == [
        ["hello", "there"],
        ["it's", "me"],
        ["again"],
    ]
    assert sentences("...\n\n!!") == []
    assert sentences("Café über naïve") == [["café", "über", "naïve"]]


def test_vocab_from_training_texts_with_pad_and_unknown() -> None:
    vocab = LyricsVocab.build(["rain rain sun", "rain sun moon", None, ""], min_count=2)
    assert vocab.words[:2] == ("<pad>", "<unk>")
    assert vocab.words[2:] == ("rain", "sun")  # most frequent first; moon seen once
    ids = vocab.encode("Rain moon.\nSun", max_sentences=3, max_words=4)
    assert ids.shape == (3, 4) and ids.dtype == np.int64
    assert ids[0, :3].tolist() == [2, UNK, PAD]
    assert ids[1, 0] == 3 and not ids[2].any()


def test_encoding_is_bounded_whatever_the_input() -> None:
    vocab = LyricsVocab.build(["a b c"], min_count=1)
    huge = ("a b c " * 1000 + ".") * 500
    assert vocab.encode(huge).shape == (50, 20)
    assert not vocab.encode(None).any() and not vocab.encode("").any()
    batch = vocab.encode_batch(["a", None, "\x00\x01 b"])
    assert batch.shape == (3, 50, 20) and batch[2, 0, 0] == vocab.index()["b"]


def test_word2vec_text_file(tmp_path: Path) -> None:
    vocab = LyricsVocab.build(["rain sun"], min_count=1)
    path = tmp_path / "vectors.txt"
    path.write_text("3 4\nrain 1 2 3 4\nunknownword 9 9 9 9\nsun 0.5 0.5 0.5 0.5\n")
    table, found = load_word2vec_text(str(path), vocab, dim=4)
    assert found == 2
    assert table[vocab.index()["rain"]].tolist() == [1, 2, 3, 4]
    assert not table[PAD].any()
    with pytest.raises(ValueError, match="4 dimensions"):
        load_word2vec_text(str(path), vocab, dim=8)


def test_one_vocabulary_rule_from_texts_or_counts() -> None:
    """Ties are broken by the word before the cut, so the vocabulary is the same however
    the counts were made (in memory, or summed over a Ray pass)."""
    texts = ["b a c", "c b a", "d d", "e"]
    built = LyricsVocab.build(texts, min_count=1, max_size=5)
    counts = {"a": 2, "b": 2, "c": 2, "d": 2, "e": 1}
    assert built == LyricsVocab.from_counts(counts, min_count=1, max_size=5)
    assert built.words == ("<pad>", "<unk>", "a", "b", "c")  # four words tie: a, b, c kept


def test_word_vectors_reach_the_model_through_the_training_recipe(tmp_path: Path) -> None:
    from genreflow.pipelines.train import word_vectors
    from genreflow.tokens import TokenSpec
    from genreflow.train import TrainConfig, TrainingRecipe

    spec = TokenSpec(clip_s=4.0, n_tokens=2, token_s=2.0, n_mels=32)
    vocab = LyricsVocab(("<pad>", "<unk>", "rain", "sun"))
    config = TrainConfig(model="multimodal_han", lyrics_vectors=str(tmp_path / "v.txt"))
    dim = TrainingRecipe(
        config, spec, genres=["a", "b"], moods=["s", "n", "h"], words=list(vocab.words)
    ).model.hp["embed_dim"]
    (tmp_path / "v.txt").write_text(f"2 {dim}\nrain " + " ".join(["0.5"] * dim) + "\n")
    manifest = {"token_spec": spec.to_dict(), "labels": {"genre": ["a", "b"]}}
    table = word_vectors(config, manifest, vocab)
    assert table is not None and table.shape == (4, dim)
    recipe = TrainingRecipe(
        config, spec, genres=["a", "b"], moods=["s", "n", "h"], words=list(vocab.words),
        word_vectors=table,
    )  # fmt: skip
    weights = recipe.model.embedding.weight.detach().numpy()
    np.testing.assert_array_equal(weights[2], np.full(dim, 0.5, np.float32))  # from the file
    assert not weights[0].any()  # the pad row stays zero
