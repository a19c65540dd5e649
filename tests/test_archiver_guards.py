"""Archiver guards without a broker: readings that would corrupt the history are dead letters."""

from __future__ import annotations

from collections import namedtuple

import pytest

from stream_ae.data.history import History
from test_archiver import T0_MS, _reading

_Record = namedtuple("record", "offset value")


@pytest.mark.parametrize("name", ["entity", "timestamp", "date"])
def test_a_channel_named_like_a_history_column_is_a_dead_letter(tmp_path, name):
    """A channel "entity" replaced the entity column of its file, and every later file of the
    partition carried a second "entity" column (the marker remembered the channel): the whole
    history became unreadable. "timestamp" raised out of the archiver; "date" broke the hive key."""
    from stream_ae.archiver.core import ArchiveCore
    from stream_ae.archiver.worker import pack

    values = [_reading("a", T0_MS + i * 1000, {"flow": float(i)}) for i in range(4)]
    values.insert(2, _reading("a", T0_MS + 1500, {"flow": 1.0, name: 7.0}))
    core = ArchiveCore("t", str(tmp_path))
    core.recover(0)
    out = core.ingest(0, *pack([_Record(i, v) for i, v in enumerate(values)]))
    core.flush()
    assert [(i, reason) for i, reason, _, _ in out.dead_letters] == [(2, "unknown_channel")]
    assert f"channel {name!r} is a column of the history" in out.dead_letters[0][2]
    core = ArchiveCore("t", str(tmp_path))   # a restart: the marker's channels
    core.recover(0)
    core.ingest(0, *pack([_Record(5 + i, _reading("b", T0_MS + i, {"flow": 1.0})) for i in range(3)]))
    core.flush()
    history = History.open(str(tmp_path))
    assert history.count_rows() == 7
