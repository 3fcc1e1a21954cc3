"""The work list a stage's tasks read their rows from: each group comes back as it was
written, whatever the number of groups, and a rerun replaces the last run's list."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from genreflow.worklist import GROUPS_PER_FILE, read_group, write_worklist


def _groups(count: int, size: int) -> list[pd.DataFrame]:
    groups = []
    for g in range(count):
        ids = [str(g * size + i) for i in range(size)]
        groups.append(
            pd.DataFrame(
                {
                    "track_id": pd.array(ids, dtype=pd.StringDtype("pyarrow")),
                    "uri": [f"audio/{t}.mp3" for t in ids],
                    # all-null in the first groups, lists later: one schema fits them all
                    "genres": [["Rock", "Punk"] if g > 2 else None for _ in ids],
                    "valence": [float(i) / size for i in range(size)],
                }
            )
        )
    return groups


def test_every_group_reads_back_as_written(tmp_path: Path) -> None:
    groups = _groups(2 * GROUPS_PER_FILE + 5, 3)
    folder = str(tmp_path / "_worklist")
    assert write_worklist(groups, folder) == len(groups)
    assert len(list((tmp_path / "_worklist").glob("*.parquet"))) == 3  # bounded footers
    for g in (0, 1, GROUPS_PER_FILE - 1, GROUPS_PER_FILE, len(groups) - 1):
        back = read_group(folder, g)
        assert back["track_id"].tolist() == groups[g]["track_id"].tolist()
        assert back["uri"].tolist() == groups[g]["uri"].tolist()
        assert back["valence"].tolist() == groups[g]["valence"].tolist()
        genres = [None if v is None else list(v) for v in back["genres"]]
        assert genres == groups[g]["genres"].tolist()


def test_a_rerun_replaces_the_list_and_an_empty_one_writes_nothing(tmp_path: Path) -> None:
    folder = str(tmp_path / "_worklist")
    write_worklist(_groups(GROUPS_PER_FILE + 1, 2), folder)
    assert write_worklist(_groups(1, 4), folder) == 1
    assert len(list((tmp_path / "_worklist").glob("*.parquet"))) == 1
    assert read_group(folder, 0)["track_id"].tolist() == ["0", "1", "2", "3"]
    assert write_worklist([], folder) == 0 and not (tmp_path / "_worklist").exists()
