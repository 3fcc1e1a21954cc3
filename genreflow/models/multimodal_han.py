"""Paper 002: lyrics hierarchical attention network fused with an audio CNN.

Audio: the token CNN of paper 000 with attention pooling over tokens. Lyrics: word
embeddings (trainable, optionally initialised from word2vec) -> word-level BiGRU ->
word attention ``u = tanh(W h + b)``, ``a = softmax(u^T u_w)`` -> sentence vectors ->
sentence-level BiGRU -> sentence attention -> a document vector. The two are
concatenated (with a has-lyrics flag) and classified. A track without lyrics has an
all-padding id matrix: its masks are empty, its document vector is zero, and the
audio decides alone.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from genreflow.errors import ShapeError
from genreflow.models.base import (
    AttentionPool,
    GenreModel,
    ModelOutput,
    mask_or_ones,
    per_token,
    token_encoder,
)
from genreflow.models.lyrics import PAD
from genreflow.tokens import TokenSpec


class MultimodalHAN(GenreModel):
    name = "multimodal_han"
    uses_lyrics = True
    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "tiny": {
            "input_pool": 2,
            "channels": [8, 16, 32],
            "audio_dim": 32,
            "embed_dim": 32,
            "word_hidden": 16,
            "sentence_hidden": 16,
            "attn_hidden": 32,
            "max_sentences": 50,
            "max_words": 20,
            "dropout": 0.2,
        },
        "paper": {
            "input_pool": 1,
            "channels": [32, 64, 128, 128],
            "audio_dim": 128,
            "embed_dim": 100,
            "word_hidden": 50,
            "sentence_hidden": 50,
            "attn_hidden": 100,
            "max_sentences": 50,
            "max_words": 20,
            "dropout": 0.5,
        },
    }

    def __init__(
        self,
        spec: TokenSpec,
        *,
        n_genres: int,
        n_moods: int = 3,
        preset: str = "tiny",
        vocab_size: int = 2,
        word_vectors: np.ndarray | None = None,
        **overrides: Any,
    ) -> None:
        super().__init__(
            spec, n_genres=n_genres, n_moods=n_moods, preset=preset, overrides=overrides
        )
        p = self.hp
        if vocab_size < 2:
            raise ShapeError(
                f"{self.name}: vocab_size must count <pad> and <unk>, got {vocab_size}"
            )
        self.max_sentences, self.max_words = int(p["max_sentences"]), int(p["max_words"])
        channels = [1, *p["channels"]]
        a = int(p["audio_dim"])
        self.token_cnn = token_encoder(channels, a)
        self.audio_pool = AttentionPool(a, int(p["attn_hidden"]))
        e, hw, hs = int(p["embed_dim"]), int(p["word_hidden"]), int(p["sentence_hidden"])
        self.embedding = nn.Embedding(vocab_size, e, padding_idx=PAD)
        if word_vectors is not None:
            if word_vectors.shape != (vocab_size, e):
                raise ShapeError(
                    f"{self.name}: word vectors {word_vectors.shape}, expected ({vocab_size}, {e})"
                )
            self.embedding.weight.data.copy_(torch.from_numpy(word_vectors))
        self.word_gru = nn.GRU(e, hw, batch_first=True, bidirectional=True)
        self.word_pool = AttentionPool(2 * hw, int(p["attn_hidden"]))
        self.sentence_gru = nn.GRU(2 * hw, hs, batch_first=True, bidirectional=True)
        self.sentence_pool = AttentionPool(2 * hs, int(p["attn_hidden"]))
        self.dropout = nn.Dropout(p["dropout"])
        self.classifier = nn.Linear(a + 2 * hs + 1, n_genres)

    def encode_lyrics(self, lyrics: Tensor) -> tuple[Tensor, Tensor]:
        """``[b, sentences, words]`` ids -> (document vectors ``[b, 2*hs]``, has-lyrics ``[b]``)."""
        b, s, w = lyrics.shape
        word_mask = lyrics != PAD  # [b, s, w]
        sentence_mask = word_mask.any(dim=2)  # [b, s]
        has_lyrics = sentence_mask.any(dim=1)  # [b]
        sentence_vectors = lyrics.new_zeros(
            (b * s, self.word_gru.hidden_size * 2), dtype=torch.float
        )
        rows = sentence_mask.reshape(-1).nonzero().squeeze(1)  # only sentences that hold words
        if rows.numel():
            ids = lyrics.reshape(b * s, w)[rows]  # [n, w]
            h, _ = self.word_gru(self.embedding(ids))  # [n, w, 2*hw]
            _, vectors = self.word_pool(h, word_mask.reshape(b * s, w)[rows])
            sentence_vectors = sentence_vectors.index_copy(
                0, rows, vectors.to(sentence_vectors.dtype)
            )
        h, _ = self.sentence_gru(sentence_vectors.reshape(b, s, -1))  # [b, s, 2*hs]
        _, document = self.sentence_pool(h, sentence_mask)  # [b, 2*hs], zero without lyrics
        return document * has_lyrics[:, None], has_lyrics

    def forward(
        self, tokens: Tensor, token_mask: Tensor | None = None, lyrics: Tensor | None = None
    ) -> ModelOutput:
        x = self.check_tokens(tokens, token_mask)  # [b, t, mels, frames]
        b, t = x.shape[:2]
        if lyrics is None:
            lyrics = torch.zeros((b, 1, 1), dtype=torch.long, device=x.device)
        if lyrics.dim() != 3 or lyrics.shape[0] != b:
            raise ShapeError(
                f"{self.name} expects lyrics ids [batch={b}, sentences, words], "
                f"got {list(lyrics.shape)}"
            )
        if lyrics.numel() and (
            int(lyrics.min()) < 0 or int(lyrics.max()) >= self.embedding.num_embeddings
        ):
            raise ShapeError(
                f"{self.name}: lyrics ids must lie in [0, {self.embedding.num_embeddings}), "
                f"got [{int(lyrics.min())}, {int(lyrics.max())}]"
            )
        mask = mask_or_ones(token_mask, x)
        e = self.token_cnn(per_token(x, self.input_pool)).reshape(b, t, -1)  # [b, t, a]
        token_weights, audio = self.audio_pool(e, mask)  # [b, t], [b, a]
        document, has_lyrics = self.encode_lyrics(lyrics.long())  # [b, 2*hs], [b]
        fused = torch.cat([audio, document, has_lyrics.float()[:, None]], dim=1)
        return ModelOutput(self.classifier(self.dropout(fused)), None, token_weights, fused[:, :-1])
