"""An archiver whose group membership stays unconfirmed after a stall fetches no more once a file waits.

After a stall the archiver writes no file until a probing commit confirms it still owns its
partitions (``membership.py``). While the coordinator does not answer that probe, polls went on:
each ``file_rows`` readings sealed one more file the archiver could not write, so memory grew
with the topic for as long as the coordinator stayed away. Now a full file waiting pauses the
owned partitions until the membership is confirmed.
"""

from __future__ import annotations

from types import SimpleNamespace

from kafka import TopicPartition

from stream_ae.archiver import worker
from stream_ae.archiver.core import ArchiveCore
from stream_ae.archiver.job import Archiver
from stream_ae.stream.settings import load_settings
from test_archiver import T0_MS, _reading
from test_archiver_letters_before_files import _Producer, _record

TP = TopicPartition("t", 0)
POLL = 300


class _Consumer:
    """An endless topic of one entity's readings, ``POLL`` a poll; a paused partition returns none
    (and its position stays), as kafka-python's consumer does."""

    def __init__(self):
        self.position, self._paused = 0, set()

    def poll(self, timeout_ms=0, max_records=None):
        if TP in self._paused:
            return {}
        start, self.position = self.position, self.position + POLL
        return {TP: [_record(i, _reading("pump-1", T0_MS + i * 1000, {"temp": 1.0}))
                     for i in range(start, start + POLL)]}

    def pause(self, *tps):
        self._paused |= set(tps)

    def resume(self, *tps):
        self._paused -= set(tps)

    def paused(self):
        return set(self._paused)

    def assignment(self):
        return {TP}

    def committed(self, tp):
        return None

    def seek(self, tp, offset):
        self.position = offset


def _archiver(tmp_path, membership) -> Archiver:
    settings = load_settings(env={}, overrides=[f"archive.root={tmp_path}", "kafka.readings_topic=t",
                                                "archive.file_rows=1000"])
    archiver = Archiver(settings, worker_process=False)
    archiver._pool = worker.start(archiver._core_kwargs(), in_process=True)
    archiver._producer, archiver._consumer, archiver.membership = _Producer(), _Consumer(), membership
    archiver.on_assigned([TP])
    return archiver


def _membership(state: dict):
    return SimpleNamespace(confirm=lambda: state["fresh"], fresh=lambda: state["fresh"], assigned=lambda *a: None,
                           commit=lambda *a, **k: None, forget=lambda p: None)


def sealed(archiver) -> int:
    return sum(len(buf.sealed) for buf in archiver._pool.core._buffers.values())


def test_unconfirmed_after_a_stall_the_archiver_stops_fetching_once_a_file_waits(tmp_path):
    state = {"fresh": True}
    archiver = _archiver(tmp_path, _membership(state))
    archiver.step()                      # the partition is recovered and owned
    state["fresh"] = False               # a stall; the coordinator does not answer the probes
    for _ in range(40):                  # 12 000 readings offered: twelve files' worth
        archiver.step()
    assert archiver._consumer.paused() == {TP}
    assert sealed(archiver) == 1 and archiver.report.consumed <= 1000 + 2 * POLL
    assert not list(tmp_path.rglob("*.parquet"))        # nothing written while unsure

    state["fresh"] = True                # the probe is answered: the membership holds
    archiver.step()
    assert list(tmp_path.rglob("*.parquet")) and archiver._consumer.paused() == set()
    consumed = archiver.report.consumed
    archiver.step()
    assert archiver.report.consumed == consumed + POLL     # fetching again
    assert ArchiveCore("t", str(tmp_path)).recover(0) == 999


def test_a_fresh_membership_never_pauses(tmp_path):
    archiver = _archiver(tmp_path, _membership({"fresh": True}))
    for _ in range(12):
        archiver.step()
        assert archiver._consumer.paused() == set()
    assert archiver.report.consumed == 11 * POLL and list(tmp_path.rglob("*.parquet"))
