"""Years of archive change shape: a sensor is added or retired, old files rot. A time range
reads only the files it reaches, and a file without a channel's column reads it as null.

Before, every file's footer was checked for every channel, whatever the range: an archive
whose files before a sensor's rollout lack its column could not be backfilled or retrained
from after the rollout, default channels were the first file's, and one unreadable old file
stopped a read of last week.
"""
from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from stream_ae.backfill import run_backfill
from stream_ae.data.history import History
from stream_ae.data.layout import Layout
from stream_ae.errors import DataError
from test_backfill import CHANNELS, DAYS, archive, artifact, read_scores, write_archive  # noqa: F401 - fixtures


def frame(day: str, channels=("a", "b"), n=60, step_s=60) -> pd.DataFrame:
    ts = pd.Timestamp(day, tz="UTC") + pd.to_timedelta(np.arange(n) * step_s, unit="s")
    out = pd.DataFrame({"entity": "p1", "timestamp": ts})
    for i, name in enumerate(channels):
        out[name] = np.sin(np.arange(n) / 5 + i).astype(np.float32)
    return out


def put(path, df, **kwargs):
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False), path, **kwargs)


def test_a_sensor_added_and_one_retired(tmp_path):
    root = tmp_path / "arch"
    put(root / "date=2025-06-01/p.parquet", frame("2025-06-01", ("a", "c")))        # c retired since
    put(root / "date=2026-02-01/p.parquet", frame("2026-02-01", ("a",)))            # b not fitted yet
    put(root / "date=2026-02-02/p.parquet", frame("2026-02-02", ("a", "b")))
    whole = History.open(str(root))
    assert whole.channels == ("a", "c", "b")          # every file's numeric columns, first seen first
    after = History.open(str(root), start="2026-02-02")
    assert after.channels == ("a", "b")
    assert [f.partition["date"] for f in after.fragments()] == ["2026-02-02"]
    assert not np.isnan(np.concatenate([r.values for r in after.iter_rows()])).any()
    # the rollout's span, the model's channels given: the day before b is read as null there
    span = History.open(str(root), Layout(channels=("a", "b")), start="2026-02-01")
    rows = {r.source.split("/")[-2]: r.values for r in span.iter_rows()}
    assert np.isnan(rows["date=2026-02-01"][:, 1]).all() and not np.isnan(rows["date=2026-02-02"]).any()
    with pytest.raises(DataError, match=r"channel column 'c' not found in any of the 2 file.*'a', 'b'"):
        History.open(str(root), Layout(channels=("a", "c")), start="2026-01-01")
    put(root / "date=2026-02-03/p.parquet", frame("2026-02-03", ("a", "c")).assign(c=None))   # a null column
    with pytest.raises(DataError, match=r"channel column 'c' has no value in the 3 file"):
        History.open(str(root), Layout(channels=("a", "c")), start="2026-01-01")
    rows = {r.source.split("/")[-2]: r.values for r in History.open(str(root), Layout(channels=("a", "c"))).iter_rows()}
    assert not np.isnan(rows["date=2025-06-01"]).any() and np.isnan(rows["date=2026-02-03"][:, 1]).all()


def test_an_unreadable_file_outside_the_range_is_never_opened(tmp_path):
    root = tmp_path / "arch"
    put(root / "date=2026-02-01/p.parquet", frame("2026-02-01"))
    (root / "date=2025-01-01").mkdir()
    (root / "date=2025-01-01/p.parquet").write_bytes(b"half-copied, not Parquet")
    assert History.open(str(root), start="2026-01-01").count_rows() == 60
    with pytest.raises(DataError, match=r"date=2025-01-01/p\.parquet: cannot be read as Parquet"):
        History.open(str(root))


def test_files_past_the_range_by_their_statistics_are_not_read(tmp_path):
    """A flat folder (no date=): the footers' timestamp statistics bound each file; a file
    written without statistics is read, and the scan bounds its rows."""
    root = tmp_path / "flat"
    for day in ("2026-02-01", "2026-02-02", "2026-02-03"):
        put(root / f"{day}.parquet", frame(day))
    put(root / "nostats.parquet", frame("2026-01-01"), write_statistics=False)
    history = History.open(str(root), start="2026-02-02T00:30", end="2026-02-02T23:00")
    assert [f.path.rsplit("/", 1)[-1] for f in history.fragments()] == ["2026-02-02.parquet", "nostats.parquet"]
    assert history.count_rows() == 30 and sum(len(r) for r in history.iter_rows()) == 30


def test_backfill_after_a_sensor_was_added(artifact, tmp_path):
    """The archive's first day has no 'temp' column (fitted on day 2): backfill from day 2 runs,
    and a backfill of the whole archive scores day 1 as a gap in that channel."""
    root = write_archive(tmp_path / "archive",
                         edit=lambda day, part, f: f.drop(columns=["temp"]) if day == DAYS[0] else f)
    later = run_backfill(str(root), str(artifact), str(tmp_path / "later"), device="cpu", progress=False,
                         start=DAYS[1])
    assert later.complete and later.windows_scored > 0
    whole = run_backfill(str(root), str(artifact), str(tmp_path / "whole"), device="cpu", progress=False)
    scores = read_scores(tmp_path / "whole")
    # day 1 is read, and gives no window: 'temp' is null there
    assert whole.complete and whole.rows_read > later.rows_read
    assert whole.windows_scored == len(scores) == later.windows_scored
    assert scores.window_end.min() >= pd.Timestamp(DAYS[1], tz="UTC")


def test_backfill_of_a_span_where_a_channel_is_null_stops_before_writing(artifact, tmp_path):
    """Before, it exited 0 with 'complete: 0 windows'."""
    root = write_archive(tmp_path / "archive", edit=lambda day, part, f: f.assign(temp=np.float32("nan")))
    out = tmp_path / "scores"
    with pytest.raises(DataError, match=r"channel column 'temp' has no value in the 6 file"):
        run_backfill(str(root), str(artifact), str(out), device="cpu", progress=False)
    assert not out.exists() or not any(out.rglob("*.parquet"))


def test_a_backfill_with_an_end_resumes_while_the_archiver_writes_past_it(archive, artifact, tmp_path):
    """A file flushed into the day of --end after the kill, holding only later rows, is not in
    the checkpoint's file list: the run resumes. Before, it was refused (the file list changed)."""
    root = tmp_path / "live"
    shutil.copytree(archive, root)
    out, end = tmp_path / "scores", f"{DAYS[2]}T12:00"
    first = run_backfill(str(root), str(artifact), str(out), device="cpu", progress=False, end=end, max_fragments=2)
    late = pd.DataFrame({"entity": ["pump-c"], "timestamp": [pd.Timestamp(f"{DAYS[2]}T23:59", tz="UTC")],
                         **{c: np.float32([0.1]) for c in CHANNELS}})
    put(root / f"date={DAYS[2]}" / "part-2.parquet", late)
    resumed = run_backfill(str(root), str(artifact), str(out), device="cpu", progress=False, end=end)
    assert not first.complete and resumed.complete and resumed.fragments_resumed == 2
    assert (read_scores(out).window_end < pd.Timestamp(end, tz="UTC")).all()
