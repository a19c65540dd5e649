"""A restore that reads a large state topic at a steady pace is alive: it is not cut off after a
fixed time, and each poll that brings records counts as the service's liveness; a stuck read
still stops, naming what it could not read."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
from kafka import TopicPartition

import stream_ae.stream.recovery as recovery
from stream_ae.errors import StreamAEError


class SlowTopic:
    """A one-partition topic of ``n`` records that a poll brings ``per_poll`` at a time, each poll
    taking ``poll_s`` of a fake clock; ``stuck_after``: no record once that many were brought."""

    def __init__(self, n, per_poll, poll_s, stuck_after=None):
        self.n, self.per_poll, self.poll_s, self.stuck_after = n, per_poll, poll_s, stuck_after
        self.now, self.pos = 0.0, 0
        self.tp = TopicPartition("stream-ae.state", 0)

    def clock(self):
        return self.now

    def assign(self, tps): pass
    def resume(self, *tps): pass
    def pause(self, *tps): pass
    def seek_to_beginning(self, tp): self.pos = 0

    def poll(self, timeout_ms, max_records):
        self.now += self.poll_s
        stop = self.n if self.stuck_after is None else min(self.n, self.stuck_after)
        batch = [SimpleNamespace(offset=o, partition=0) for o in range(self.pos, min(stop, self.pos + self.per_poll))]
        self.pos += len(batch)
        return {self.tp: batch} if batch else {}

    def highwater(self, tp): return self.n
    def position(self, tp): return self.pos


def _read(topic, monkeypatch, progress=None):
    monkeypatch.setattr(recovery, "time", SimpleNamespace(monotonic=topic.clock))
    return list(recovery.read_to_end(topic, {topic.tp: None}, timeout_s=60.0, progress=progress))


def test_a_long_steady_read_is_not_cut_off_and_reports_progress(monkeypatch):
    """Before: any read longer than 60 s in all failed ('could not read ... within 60 s')."""
    topic = SlowTopic(n=3_000, per_poll=10, poll_s=0.5)     # 300 polls, 150 s of reading
    beats = []
    records = _read(topic, monkeypatch, progress=lambda: beats.append(topic.now))
    assert [r.offset for r in records] == list(range(3_000)) and topic.now == pytest.approx(150.0)
    assert len(beats) == 300 and max(b - a for a, b in zip([0.0, *beats], beats)) <= 0.5


def test_a_read_that_stops_bringing_records_fails_after_the_timeout(monkeypatch):
    topic = SlowTopic(n=3_000, per_poll=10, poll_s=0.5, stuck_after=500)
    with pytest.raises(StreamAEError, match=r"stream-ae.state\[0\] to the end: nothing came for 60 s"):
        _read(topic, monkeypatch)
    assert topic.now == pytest.approx(25.0 + 60.0, abs=1.0)   # 50 polls of progress, then 60 s of nothing



def test_the_runner_counts_a_restore_read_as_a_poll(monkeypatch):
    from test_restore_order import _restart
    from test_stream_bounds import runner_with_fakes

    runner = runner_with_fakes()
    runner.metrics.last_poll = 0.0
    _restart(monkeypatch, {0: {}}, runner)
    assert runner.metrics.last_poll > 0     # liveness saw the restore's progress
