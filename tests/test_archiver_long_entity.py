"""With ``partition_by = date,entity`` each entity id is a folder name, limited to 255 bytes.

The codec accepts ids of up to 256 characters. Percent-encoded, 28 CJK characters or ~250
ASCII ones with a ``/`` are over the limit: the write raised ``OSError`` (file name too long),
the job exited, and its restart met the same path in the marker and the same record again.
Such a reading is now a dead letter that says what to change, and a marker an older release
left with such a path no longer stops the restart.
"""

from __future__ import annotations

from collections import namedtuple

import pytest

from stream_ae.archiver.core import ArchiveCore
from stream_ae.archiver.worker import pack
from stream_ae.archiver.writer import ArchiveWriter, PartitionState, file_name
from stream_ae.data.history import History
from test_archiver import T0_MS, _reading

_Record = namedtuple("record", "offset value")


@pytest.mark.parametrize("long_id", ["泵站三号机组冷却水循环泵出口压力变送器温度传感器一号机组温度", "line-7/" + "x" * 240])
def test_an_entity_id_too_long_for_a_folder_is_a_dead_letter_and_the_rest_is_archived(tmp_path, long_id):
    core = ArchiveCore("readings", str(tmp_path), partition_by=("date", "entity"), file_rows=4)
    core.recover(0)
    values = [_reading("pump-1", T0_MS + i * 1000, {"p": float(i)}) for i in range(4)]
    values.insert(1, _reading(long_id, T0_MS + 500, {"p": 9.0}))
    out = core.ingest(0, *pack([_Record(i, v) for i, v in enumerate(values)]))
    out.flushed.update(core.flush().flushed)
    assert [(i, reason) for i, reason, _, _ in out.dead_letters] == [(1, "malformed")]
    assert "shorten the id or partition by date only" in out.dead_letters[0][2]
    assert out.dead_letters[0][3] == long_id
    assert History.open(str(tmp_path)).count_rows() == 4
    assert ArchiveCore("readings", str(tmp_path), partition_by=("date", "entity")).recover(0) == 4


def test_the_same_id_is_archived_when_partitioned_by_date_only(tmp_path):
    core = ArchiveCore("readings", str(tmp_path), file_rows=2)
    core.recover(0)
    long_id = "line-7/" + "x" * 240
    out = core.ingest(0, *pack([_Record(i, _reading(long_id, T0_MS + i, {"p": 1.0})) for i in range(2)]))
    core.flush()
    assert out.dead_letters == [] and History.open(str(tmp_path)).count_rows() == 2


def test_a_marker_pending_a_path_too_long_to_exist_does_not_stop_the_restart(tmp_path):
    writer = ArchiveWriter(str(tmp_path), ("date", "entity"))
    too_long = f"date=2026-01-01/entity={'%E6%B3%B5' * 30}/{file_name('readings', 0, 5, 9)}"
    writer._put(writer._marker("readings", 0), PartitionState(through=4, pending=(too_long,)).to_json())
    (tmp_path / "date=2026-01-01").mkdir()   # the day's folder exists: the kernel then reaches the long name
    state = ArchiveWriter(str(tmp_path), ("date", "entity")).recover("readings", 0)
    assert state.through == 4 and state.pending == ()
