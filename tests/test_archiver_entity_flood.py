"""A flood of new entity ids keeps the archiver's ordering check bounded by ``input.max_entities``
per partition, and every entity's readings stay in time order in the files.

Before: the map of each entity's newest timestamp only grew, in memory and in the marker file
rewritten at every flush (a million bogus ids: tens of MB a flush)."""

from __future__ import annotations

import json
from collections import namedtuple

from stream_ae.archiver.core import ArchiveCore
from stream_ae.archiver.worker import pack
from stream_ae.data.history import History
from test_archiver import T0_MS, _reading

_Record = namedtuple("record", "offset value")


def ingest(core, first, values):
    return core.ingest(0, *pack([_Record(first + i, v) for i, v in enumerate(values)]))


def test_the_order_map_is_capped_and_a_let_go_entity_cannot_go_back_in_time(tmp_path):
    core = ArchiveCore("readings", str(tmp_path), max_entities=10, file_rows=1000)
    core.recover(0)
    flood = [_reading(f"bogus-{i}", T0_MS + i * 1000, {"p": 1.0}) for i in range(40)]
    assert ingest(core, 0, flood).dead_letters == []
    buf = core._buffers[0]
    assert len(buf.last_ts) <= 10 and buf.floor is not None
    late = [_reading("bogus-0", T0_MS, {"p": 2.0}),                  # its own newest again: let go, refused
            _reading("bogus-35", T0_MS + 35 * 1000, {"p": 2.0}),     # still tracked: a duplicate
            _reading("new", T0_MS + 1000, {"p": 2.0}),               # older than the newest let go: refused
            _reading("bogus-0", T0_MS + 100 * 1000, {"p": 2.0})]     # newer than all: archived
    out = ingest(core, 40, late)
    assert [(i, reason) for i, reason, _, _ in out.dead_letters] == [(0, "out_of_order"), (1, "duplicate"),
                                                                     (2, "out_of_order")]
    core.flush()
    marker = json.loads((tmp_path / "_archiver" / "readings" / "00000.json").read_text())
    assert len(marker["last_ts"]) <= 10 and marker["floor"] == buf.floor
    again = ArchiveCore("readings", str(tmp_path), max_entities=10)
    assert again.recover(0) == 43
    assert again._buffers[0].floor == buf.floor and len(again._buffers[0].last_ts) <= 10
    rows = list(History.open(str(tmp_path)).iter_rows())          # reads: every entity in time order
    assert sum(len(r) for r in rows) == 41
