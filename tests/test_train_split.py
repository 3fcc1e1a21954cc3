"""Training's one splitting rule (``genreflow.train.Part``) on plain columns."""

from __future__ import annotations

import numpy as np

from genreflow.train import RUN_PARTS, Part, fold_of, fold_parts


def test_run_parts_are_the_splits_and_leave_duplicates_out() -> None:
    split = ["train", "val", "test", "duplicate", "train"]
    assert RUN_PARTS["train"].mask(split).tolist() == [True, False, False, False, True]
    assert RUN_PARTS["val"].mask(split).tolist() == [False, True, False, False, False]
    assert RUN_PARTS["test"].mask(split).tolist() == [False, False, True, False, False]


def test_folds_are_artist_disjoint_and_cover_the_training_split_once() -> None:
    rng = np.random.default_rng(0)
    n = 400
    split = rng.choice(["train", "val", "test"], size=n, p=[0.8, 0.1, 0.1]).tolist()
    track = [f"t{i}" for i in range(n)]
    artist: list[object] = [f"a{rng.integers(40)}" for _ in range(n)]
    artist[:10] = [None] * 5 + [float("nan")] * 5  # no artist: the track is its own group
    folds = 4
    held = np.zeros(n, dtype=int)
    for k in range(folds):
        parts = fold_parts(k, folds)
        val = parts["val"].mask(split, track, artist)
        train = parts["train"].mask(split, track, artist)
        assert not (val & train).any()
        assert ((val | train) == (np.array(split) == "train")).all()
        val_artists = {a for a, v in zip(artist[10:], val[10:], strict=True) if v}
        train_artists = {a for a, t in zip(artist[10:], train[10:], strict=True) if t}
        assert not val_artists & train_artists
        held += val
    assert (held == (np.array(split) == "train")).all()  # every training row held out once
    for i in range(10):  # a track without an artist falls in its own track id's fold
        if split[i] == "train":
            k = fold_of(track[i], folds)
            assert fold_parts(k, folds)["val"].mask(split, track, artist)[i]


def test_a_part_reads_only_the_columns_its_rule_needs() -> None:
    assert Part("val").columns == ["split"]
    assert fold_parts(0, 3)["val"].columns == ["split", "track_id", "artist_id"]


def test_a_small_splits_table_is_shared_equally_and_shuffled_by_seed() -> None:
    """Each worker of a small split's table gets every world-th row, the same number as
    every other (as Ray Data's equal split), and a seed orders its batches repeatably."""
    import numpy as np
    import pyarrow as pa

    from genreflow.pipelines.train_data import TableShard

    tokens = np.arange(11 * 2 * 3, dtype=np.float32).reshape(11, 2, 3)
    table = pa.table(
        {
            "tokens": pa.FixedShapeTensorArray.from_numpy_ndarray(tokens),
            "genre_idx": pa.array(np.arange(11)),
        }
    )
    shards = [TableShard(table, rank, 3) for rank in range(3)]
    seen = [np.concatenate([b["genre_idx"] for b in s.batches(2, seed=None)]) for s in shards]
    assert [len(rows) for rows in seen] == [3, 3, 3]
    assert sorted(np.concatenate(seen).tolist()) == list(range(9))
    one = TableShard(table, 0, 1)
    batches = list(one.batches(4, seed=None))
    assert [len(b["genre_idx"]) for b in batches] == [4, 4, 3]
    np.testing.assert_array_equal(np.concatenate([b["tokens"] for b in batches]), tokens)
    first = np.concatenate([b["genre_idx"] for b in one.batches(4, seed=7)])
    again = np.concatenate([b["genre_idx"] for b in one.batches(4, seed=7)])
    other = np.concatenate([b["genre_idx"] for b in one.batches(4, seed=8)])
    assert first.tolist() == again.tolist() != other.tolist()
    assert sorted(first.tolist()) == list(range(11))
