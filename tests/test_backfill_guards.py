"""Backfill guards: archives as years of files leave them (a sensor offline for a file, a
column added or retired), and re-runs into the same --out."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from stream_ae.backfill import run_backfill
from stream_ae.errors import ConfigError
from test_backfill import DAYS, archive, artifact, files_under, full, read_scores, write_archive  # noqa: F401


def test_a_channel_without_values_for_a_whole_file_is_a_gap_not_an_error(artifact, full, tmp_path):
    """The archiver writes a sensor offline for a file's span as an all-null column; the
    backfill (and training) refused such a file, stopping a run over years of archive."""
    def offline(day, part, frame):
        if day == DAYS[1] and part == 1:
            frame["temp"] = np.nan
        return frame

    archive = write_archive(tmp_path / "archive", edit=offline)
    report = run_backfill(str(archive), str(artifact), str(tmp_path / "out"), device="cpu", progress=False)
    assert 0 < report.windows_scored < full[1].windows_scored
    scores = read_scores(tmp_path / "out")
    # no window that day beyond the readings the gap rule fills forward (max_fill, 5 by default)
    assert ((scores.entity == "pump-c") & (scores.date == DAYS[1])).sum() <= 5
    assert ((scores.entity == "pump-c") & (scores.date == DAYS[2])).any()       # and it goes on after


def test_a_column_only_some_files_have_is_not_asked_of_the_others(artifact, full, tmp_path):
    """The channels read were the first file's numeric columns: a column only older files had
    was then demanded of every newer file."""
    def retired(day, part, frame):
        if day == DAYS[0]:
            frame["spare"] = 1.0
        return frame

    archive = write_archive(tmp_path / "archive", edit=retired)
    report = run_backfill(str(archive), str(artifact), str(tmp_path / "out"), device="cpu", progress=False)
    assert report.windows_scored == full[1].windows_scored


def test_another_shard_count_into_the_same_out_is_refused_unless_restarted(archive, artifact, full, tmp_path):
    """Shards 0/2 and 1/2, then 0/1 into the same --out, wrote every window twice."""
    out = tmp_path / "out"
    for i in range(2):
        run_backfill(str(archive), str(artifact), str(out), shard=(i, 2), device="cpu", progress=False)
    with pytest.raises(ConfigError, match=r"split into another number of shards \(shard-0-of-2.json, "
                                          r"shard-1-of-2.json\).*--restart"):
        run_backfill(str(archive), str(artifact), str(out), device="cpu", progress=False)
    run_backfill(str(archive), str(artifact), str(out), device="cpu", progress=False, restart=True)
    scores = read_scores(out)
    assert len(scores) == full[1].windows_scored == len(scores.drop_duplicates(["entity", "window_end"]))
    assert [f for f in files_under(out) if f.startswith("_checkpoints/")] == ["_checkpoints/shard-0-of-1.json"]


def test_a_restart_leaves_none_of_the_earlier_runs_parts(archive, artifact, tmp_path):
    """--restart forgot the checkpoint only: a restart from a later --start kept the first run's
    scores of the days it no longer covers, beside its own."""
    out = tmp_path / "out"
    run_backfill(str(archive), str(artifact), str(out), device="cpu", progress=False)
    run_backfill(str(archive), str(artifact), str(out), device="cpu", progress=False, restart=True,
                 start=DAYS[2])
    assert sorted(read_scores(out).date.unique()) == [DAYS[2]]


@pytest.mark.parametrize("first, later, values, times", [
    ({"a": pa.array([1, 2], pa.int32())}, {"a": pa.array([0.5, 2.25])},
     [1.0, 2.0, 0.5, 2.25], [0, 1, 10_000_000_000, 10_000_000_001]),
    ({"timestamp": pa.array([0, 1], pa.timestamp("ms", tz="UTC"))},
     {"timestamp": pa.array([2_000_000_001, 2_000_000_002], pa.timestamp("ns", tz="UTC"))},
     [1.0, 2.0, 1.0, 2.0], [0, 1_000_000, 2_000_000_001, 2_000_000_002]),
])
def test_files_whose_types_drift_over_the_years_are_read_without_loss(tmp_path, first, later, values, times):
    """Every file was read with the first file's schema: floats after an int32 first file, or
    sub-millisecond times after a millisecond first file, stopped the run."""
    import pyarrow.parquet as pq

    from stream_ae.data.history import History

    for i, cols in enumerate((first, later)):
        base = {"entity": pa.array(["u", "u"]),
                "timestamp": pa.array([i * 10_000_000_000, i * 10_000_000_000 + 1], pa.timestamp("ns", tz="UTC")),
                "a": pa.array([1.0, 2.0])}
        pq.write_table(pa.table({**base, **cols}), tmp_path / f"part-{i}.parquet")
    rows = list(History.open(str(tmp_path)).iter_rows())
    assert np.concatenate([r.values[:, 0] for r in rows]).tolist() == values
    assert np.concatenate([r.ts for r in rows]).tolist() == times
