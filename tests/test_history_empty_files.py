"""A file with no rows never makes an archive unreadable, whatever types its columns took.

An empty DataFrame written as is has null-typed columns (`pd.DataFrame(columns=[...])`) or
float ones (`pd.DataFrame({c: []})`). Either was refused as a wrong timestamp type wherever it
sorted, with advice to convert a column that held nothing.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from stream_ae.data.history import History

COLUMNS = ["entity", "timestamp", "a", "b"]


def rows(day: str, n: int = 50) -> pd.DataFrame:
    ts = pd.Timestamp(day, tz="UTC") + pd.to_timedelta(np.arange(n) * 60, unit="s")
    values = np.random.default_rng(0).normal(size=(n, 2)).astype(np.float32)
    return pd.DataFrame({"entity": "p1", "timestamp": ts, "a": values[:, 0], "b": values[:, 1]})


@pytest.mark.parametrize("empty", [pd.DataFrame(columns=COLUMNS), pd.DataFrame({c: [] for c in COLUMNS})],
                         ids=["null-typed", "float-typed"])
@pytest.mark.parametrize("day", ["2026-02-01", "2026-02-09"], ids=["first", "last"])
def test_an_empty_file_anywhere_in_the_archive_is_read_as_no_rows(tmp_path, empty, day):
    for d in ("2026-02-03", "2026-02-04"):
        (tmp_path / f"date={d}").mkdir()
        pq.write_table(pa.Table.from_pandas(rows(d), preserve_index=False), tmp_path / f"date={d}/p.parquet")
    (tmp_path / f"date={day}").mkdir()
    pq.write_table(pa.Table.from_pandas(empty, preserve_index=False), tmp_path / f"date={day}/p.parquet")
    history = History.open(str(tmp_path))
    assert history.channels == ("a", "b")
    assert sum(len(r) for r in history.iter_rows()) == 100
