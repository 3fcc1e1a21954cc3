"""Lyrics -> word ids for the hierarchical attention model: a pure tokenizer.

Text is split into sentences (line breaks and . ! ?), sentences into lower-case words;
the vocabulary is built from the training split only. Id 0 pads, id 1 is the unknown
word. Lyrics are untrusted: any text is accepted, and the output size is bounded by
``max_sentences x max_words`` whatever the input length.
"""

from __future__ import annotations

import io
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from genreflow import storage

PAD, UNK = 0, 1
_SENTENCE = re.compile(r"[\n.!?;]+")
_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)?", re.UNICODE)


def sentences(text: str) -> list[list[str]]:
    """``"Hi there.\\nBye"`` -> ``[["hi", "there"], ["bye"]]``; empty sentences dropped."""
    out = []
    for part in _SENTENCE.split(text):
        words = [w.lower() for w in _WORD.findall(part)]
        if words:
            out.append(words)
    return out


@dataclass(frozen=True)
class LyricsVocab:
    """Words in id order; ``words[0]`` and ``words[1]`` are the pad and unknown tokens."""

    words: tuple[str, ...]

    @classmethod
    def build(
        cls, texts: Iterable[str | None], *, min_count: int = 2, max_size: int = 20_000
    ) -> LyricsVocab:
        """The vocabulary of ``texts`` (the training split's lyrics), in memory."""
        counts: Counter[str] = Counter()
        for text in texts:
            if isinstance(text, str) and text:
                for sentence in sentences(text):
                    counts.update(sentence)
        return cls.from_counts(counts, min_count=min_count, max_size=max_size)

    @classmethod
    def from_counts(
        cls, counts: Mapping[str, int], *, min_count: int = 2, max_size: int = 20_000
    ) -> LyricsVocab:
        """Words seen at least ``min_count`` times, most frequent first (ties by word),
        cut to ``max_size`` with the pad and unknown tokens: the one rule, whether the
        counts come from a list in memory or a Ray pass over the shards."""
        kept = sorted(
            (w for w, n in counts.items() if n >= min_count), key=lambda w: (-counts[w], w)
        )
        return cls(words=("<pad>", "<unk>", *kept[: max(0, max_size - 2)]))

    def __len__(self) -> int:
        return len(self.words)

    def index(self) -> dict[str, int]:
        return {w: i for i, w in enumerate(self.words)}

    def encode(
        self,
        text: str | None,
        *,
        max_sentences: int = 50,
        max_words: int = 20,
        index: dict[str, int] | None = None,
    ) -> np.ndarray:
        """``[max_sentences, max_words]`` int64 ids, zero-padded; all zeros for no lyrics."""
        ids = np.zeros((max_sentences, max_words), dtype=np.int64)
        if not text:
            return ids
        lookup = index if index is not None else self.index()
        for s, words in enumerate(sentences(text)[:max_sentences]):
            for w, word in enumerate(words[:max_words]):
                ids[s, w] = lookup.get(word, UNK)
        return ids

    def encode_batch(
        self, texts: Iterable[str | None], *, max_sentences: int = 50, max_words: int = 20
    ) -> np.ndarray:
        """``[batch, max_sentences, max_words]`` int64."""
        lookup = self.index()
        rows = [
            self.encode(t, max_sentences=max_sentences, max_words=max_words, index=lookup)
            for t in texts
        ]
        if not rows:
            return np.zeros((0, max_sentences, max_words), dtype=np.int64)
        return np.stack(rows)


def load_word2vec_text(path: str, vocab: LyricsVocab, *, dim: int) -> tuple[np.ndarray, int]:
    """Initial embeddings from a word2vec text file (``N D`` header, then ``word v1 .. vD``),
    local or in object storage, streamed line by line.

    Returns ``([len(vocab), dim] float32, words found)``; words not in the file keep a
    small random vector, the pad row stays zero.

    Raises:
        ValueError: the file's dimension is not ``dim``.
    """
    rng = np.random.default_rng(0)
    table = rng.normal(0, 0.1, (len(vocab), dim)).astype(np.float32)
    table[PAD] = 0
    lookup = vocab.index()
    found = 0
    fs, where = storage.resolve(path)
    with (
        fs.open_input_stream(where) as stream,
        io.TextIOWrapper(stream, encoding="utf-8", errors="replace") as f,
    ):
        header = f.readline().split()
        if len(header) == 2 and header[1].isdigit() and int(header[1]) != dim:
            raise ValueError(f"{path}: vectors have {header[1]} dimensions, the model uses {dim}")
        for line in f:
            parts = line.rstrip().split(" ")
            if len(parts) != dim + 1:
                continue
            i = lookup.get(parts[0])
            if i is not None and i != PAD:
                table[i] = np.asarray(parts[1:], dtype=np.float32)
                found += 1
    return table, found
