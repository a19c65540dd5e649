"""The archiver writes a file only after the dead letters of what it holds are acknowledged, and
only while it still owns the partition.

A file moves the archive's marker, which is where a restart resumes, past the records it
covers. The worker used to write a file the moment one was full, before the main process had
even produced the dead letters of that poll's bad records: a crash or a failed send in between
resumed past them, and their letters were never sent. Polls handed to the worker before a stall
that cost the partition could also still complete a file after the group had given the
partition to another member, which could then write those rows again.
"""

from __future__ import annotations

from collections import namedtuple
from types import SimpleNamespace

import pytest
from kafka import TopicPartition

from stream_ae.archiver import worker
from stream_ae.archiver.core import ArchiveCore
from stream_ae.archiver.job import Archiver
from stream_ae.errors import StreamAEError
from stream_ae.stream.settings import load_settings
from test_archiver import T0_MS, _reading

Record = namedtuple("Record", "offset value topic partition key timestamp")


def _record(i: int, value: bytes) -> Record:
    return Record(i, value, "t", 0, b"pump-1", T0_MS)


class _Sent:
    def __init__(self, error):
        self.error = error

    def add_errback(self, fn):
        if self.error is not None:
            fn(self.error)
        return self


class _Producer:
    def __init__(self, error=None):
        self.error, self.sent, self.events = error, 0, []

    def send(self, topic, key=None, value=None, headers=None):
        self.sent += 1
        self.events.append("send")
        return _Sent(self.error)

    def flush(self):
        self.events.append("flush")


class _Consumer:
    """Polls: the batch (dropped by the recovery of the newly assigned partition), the batch again, then nothing."""

    def __init__(self, batch):
        self.polls = [batch, batch]

    def poll(self, timeout_ms=0, max_records=None):
        return {TopicPartition("t", 0): self.polls.pop(0)} if self.polls else {}

    def committed(self, tp):
        return None

    def seek(self, tp, offset):
        pass


def _archiver(tmp_path, producer, batch) -> Archiver:
    settings = load_settings(env={}, overrides=[f"archive.root={tmp_path}", "kafka.readings_topic=t",
                                                "archive.file_rows=3"])
    archiver = Archiver(settings, worker_process=False)
    archiver._pool = worker.start(archiver._core_kwargs(), in_process=True)
    archiver._producer, archiver._consumer = producer, _Consumer(batch)
    archiver.membership = SimpleNamespace(confirm=lambda: True, fresh=lambda: True, assigned=lambda *a: None,
                                          commit=lambda *a, **k: None, forget=lambda p: None)
    archiver.on_assigned([TopicPartition("t", 0)])
    return archiver


BATCH = [_record(0, _reading("pump-1", T0_MS, {"temp": 1.0})), _record(1, b"{not json"),
         _record(2, _reading("pump-1", T0_MS + 1000, {"temp": 1.0})),
         _record(3, _reading("pump-1", T0_MS + 2000, {"temp": 1.0}))]   # a full file (3 rows) and a letter


def test_a_dead_letter_that_fails_to_send_leaves_no_file_past_its_record(tmp_path):
    archiver = _archiver(tmp_path, _Producer(error=RuntimeError("dead-letter topic unavailable")), BATCH)
    archiver.step()
    with pytest.raises(StreamAEError, match="could not be produced"):
        archiver.step()
    assert archiver._producer.sent == 1
    assert ArchiveCore("t", str(tmp_path)).recover(0) == -1   # a restart reads the bad record again
    assert not list(tmp_path.rglob("*.parquet"))


def test_a_full_file_is_written_after_its_dead_letters_are_acknowledged(tmp_path):
    archiver = _archiver(tmp_path, _Producer(), BATCH)
    archiver.step()
    archiver.step()
    assert archiver._producer.events[:2] == ["send", "flush"]
    assert ArchiveCore("t", str(tmp_path)).recover(0) == 3 and len(list(tmp_path.rglob("*.parquet"))) == 1
    assert archiver.report.files == 1 and archiver.report.dead_letters == {"malformed": 1}


def test_polls_handed_over_before_a_stall_that_cost_the_partition_write_no_file(tmp_path):
    archiver = _archiver(tmp_path, _Producer(), [])
    archiver.step()   # the partition is recovered and owned
    for k in range(4):   # 4 polls of 300 readings queued; file_rows = 1000 is crossed in the 4th
        batch = [_record(k * 300 + i, _reading("pump-b", T0_MS + (k * 300 + i) * 1000, {"x": 1.0}))
                 for i in range(300)]
        archiver._pool.core.file_rows = 1000
        archiver._in_flight.append((archiver._pool.submit(worker.call, "ingest", 0, *worker.pack(batch)), batch))
    archiver.on_lost([TopicPartition("t", 0)])
    assert not list(tmp_path.rglob("*.parquet"))
    assert ArchiveCore("t", str(tmp_path)).recover(0) == -1   # the next owner archives them, once
