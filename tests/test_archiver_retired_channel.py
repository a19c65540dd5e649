"""A channel that stops reporting is no column of the archive's later files.

The archiver used to keep the union of every channel it had seen in its marker and add each as
an all-null column to every later file, for good. Once a retired sensor's last value (or one
reading with a mistyped channel) fell out of ``retrain.train_span``, the history's default
channels still named it, no file in the span had a value, and every retrain failed.
"""

from __future__ import annotations

from collections import namedtuple

import pyarrow.parquet as pq

from stream_ae.archiver.core import ArchiveCore
from stream_ae.archiver.worker import pack
from stream_ae.data.history import History
from test_archiver import T0_MS, _reading

_Record = namedtuple("record", "offset value")
DAY_MS = 86_400_000


def test_a_channel_seen_once_is_not_carried_into_later_files_even_across_a_restart(tmp_path):
    core = ArchiveCore("readings", str(tmp_path), file_rows=10)
    core.recover(0)
    first = [_reading("pump-1", T0_MS + i * 60_000, {"temp": 1.0 + i, **({"tmep": 5.0} if i == 3 else {})})
             for i in range(10)]
    core.ingest(0, *pack([_Record(i, v) for i, v in enumerate(first)]))   # one file: a typo'd channel once
    core.ingest(0, *pack([_Record(10 + i, _reading("pump-1", T0_MS + 3 * DAY_MS + i * 60_000, {"temp": 2.0}))
                          for i in range(10)]))
    core.flush(due_only=True)   # the two full files (the job asks once their dead letters are acknowledged)
    core = ArchiveCore("readings", str(tmp_path), file_rows=10)   # a restart reads the marker
    core.recover(0)
    core.ingest(0, *pack([_Record(20 + i, _reading("pump-1", T0_MS + 4 * DAY_MS + i * 60_000, {"temp": 3.0}))
                          for i in range(10)]))
    core.flush(due_only=True)
    files = sorted(tmp_path.rglob("*.parquet"))
    assert [pq.read_schema(f).names for f in files] == [
        ["entity", "timestamp", "temp", "tmep"], ["entity", "timestamp", "temp"], ["entity", "timestamp", "temp"]]
    later = History.open(str(tmp_path), start="2026-01-02T00:00:00Z")   # what a retrain past the typo reads
    assert later.channels == ("temp",) and later.count_rows() == 20
    whole = History.open(str(tmp_path))   # and the whole archive still has it
    assert whole.channels == ("temp", "tmep") and whole.count_rows() == 30


def test_a_channel_only_a_rejected_reading_carried_is_no_column_of_the_file(tmp_path):
    core = ArchiveCore("t", str(tmp_path), file_rows=100)
    core.recover(0)
    core.ingest(0, *pack([_Record(0, _reading("a", T0_MS, {"x": 1.0}))]))
    core.flush()
    out = core.ingest(0, *pack([_Record(1, _reading("a", T0_MS, {"old": 5.0})),   # a late duplicate, retired channel
                                _Record(2, _reading("a", T0_MS + 1000, {"x": 2.0}))]))
    core.flush()
    assert [reason for _, reason, _, _ in out.dead_letters] == ["duplicate"]
    assert [pq.read_schema(f).names for f in sorted(tmp_path.rglob("*.parquet"))] == \
        [["entity", "timestamp", "x"], ["entity", "timestamp", "x"]]
