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
