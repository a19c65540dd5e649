"""A reader of the archive leaves out the files of a flush the archiver has not finished.

A crash mid-flush leaves the files written so far visible until the archiver's recovery deletes
them and archives their records again, cut at other offsets, under other names. Before session
38 a reader took them meanwhile: training, a backfill of the live archive or the retrain job
read those rows twice once the archiver had recovered (``test_archiver``'s cut-short flush:
11 rows seen of 10). The marker lists them as ``pending`` before they are written, so
``History`` leaves them out (``stream_ae/data/archive_markers.py``).
"""
from __future__ import annotations

import pyarrow.fs as pafs

from stream_ae.archiver.writer import MARKER_DIR, ArchiveWriter, PartitionState
from stream_ae.data.archive_markers import pending_files
from stream_ae.data.history import History
from test_archiver import CHANNELS, _table

DAY = 86_400 * 10**9 * 20_000


def _archive_with_a_cut_short_flush(root):
    w = ArchiveWriter(str(root))
    w.recover("r", 0)
    w.write("r", 0, 0, 9, _table(["a"] * 10, [DAY + i for i in range(10)]), PartitionState(channels=CHANNELS))
    pending = ("date=2024-10-04/part-r-00000-00000000000000000010-00000000000000000019.parquet",)
    w._put(w._marker("r", 0), PartitionState(9, CHANNELS, {}, pending).to_json())
    w._write_parquet(str(root / pending[0]), _table(["a"] * 5, [DAY + 10 + i for i in range(5)]))
    return pending


def test_the_files_a_marker_lists_as_pending_are_not_read(tmp_path):
    root = tmp_path / "arch"
    pending = _archive_with_a_cut_short_flush(root)
    assert (root / pending[0]).exists()
    assert pending_files(pafs.LocalFileSystem(), str(root)) == {f"{root}/{pending[0]}"}
    history = History.open(str(root))
    assert history.count_rows() == 10
    ArchiveWriter(str(root)).recover("r", 0)          # the archiver's recovery: deleted, the marker emptied
    assert History.open(str(root)).count_rows() == 10 and not (root / pending[0]).exists()


def test_a_marker_being_replaced_or_unreadable_hides_nothing(tmp_path):
    root = tmp_path / "arch"
    _archive_with_a_cut_short_flush(root)
    markers = root / MARKER_DIR / "r"
    (markers / "00000.json").write_text("{half a marker")          # unreadable: the archiver says so itself
    (markers / "_tmp-00000.json").write_text('{"pending": ["date=2024-10-04/x.parquet"]}')   # not yet a marker
    assert pending_files(pafs.LocalFileSystem(), str(root)) == set()
    assert History.open(str(root)).count_rows() == 15
