"""A checkpoint that settles first stores the outputs' ends, not a lower bound (no broker)."""
from types import SimpleNamespace

from stream_ae.stream.checkpoint import Checkpointer, PartitionRecord, partition_key


class _AckOnFlush:
    """A producer whose alerts are acknowledged only when it is flushed, as on a slow broker."""

    def __init__(self):
        self.checkpointer = None
        self.unacked = []  # alerts offsets not yet acknowledged
        self.sent = []

    def flush(self, timeout=None):
        for offset in self.unacked:
            self.checkpointer.alert_acked(0, offset)
        self.unacked = []

    def send(self, topic, key=None, value=None, partition=None, headers=None):
        self.sent.append((key, value))
        return SimpleNamespace(get=lambda timeout=None: SimpleNamespace(offset=len(self.sent) - 1))


class _NoChanges:
    def take_dirty(self):
        return {}


def _record(settle: bool) -> PartitionRecord:
    producer = _AckOnFlush()
    c = producer.checkpointer = Checkpointer(producer, "state", 5.0)
    c.alert_acked(0, 0)
    producer.unacked = [1, 2]  # two alerts produced by the last batch, in flight
    try:
        _, write = c.begin(_NoChanges(), {0: 1500, 1: 0}, settle=settle)
        write.result(timeout=10)
    finally:
        c.close()
    records = {key: PartitionRecord.decode(value) for key, value in producer.sent}
    assert set(records) == {partition_key(0), partition_key(1)}
    assert records[partition_key(0)].alerts_offsets == records[partition_key(1)].alerts_offsets
    return records[partition_key(0)]


def test_a_settled_checkpoint_stores_the_alerts_in_flight():
    assert _record(settle=True).alerts_offsets == {0: 3}


def test_a_periodic_checkpoint_stores_a_lower_bound():
    # the alerts in flight land at or after offset 1: a restore reads them again, loses none
    assert _record(settle=False).alerts_offsets == {0: 1}
