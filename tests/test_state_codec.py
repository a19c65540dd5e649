"""The state topic's record codec (``stream/checkpoint.py``): MessagePack now, JSON before; and the
checkpoints' clock."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from stream_ae.stream.checkpoint import PartitionRecord, decode_state, encode_state


def _snapshot() -> dict:
    return {"entity": "pump-7", "windows": 61, "partition": 2, "offsets": {"2": 1234},
            "windower": {"tail_rows": [[0.5, float("nan")], [float("inf"), -float("inf")]], "filled": [0, 3]},
            "threshold": {"peaks": [0.1 * i for i in range(50)], "ready": True, "t": None},
            "model_version": "conv-undercomplete-1"}


def _same(a, b) -> bool:
    """Equal, NaN equal to NaN."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(map(_same, a, b))
    if isinstance(a, float) and math.isnan(a):
        return isinstance(b, float) and math.isnan(b)
    return type(a) is type(b) and a == b


def test_a_snapshot_survives_the_round_trip_with_nan_and_infinities():
    snap = _snapshot()
    data = encode_state(snap)
    assert data[:1] != b"{"  # binary, not the JSON of earlier versions
    assert _same(decode_state(data), snap)


def test_json_snapshots_written_by_earlier_versions_still_restore():
    snap = _snapshot()
    old = json.dumps(snap, separators=(",", ":"), allow_nan=True).encode()  # what encode_state wrote before
    assert _same(decode_state(old), snap)


def test_numpy_scalars_are_written_as_python_numbers():
    out = decode_state(encode_state({"a": np.float64(1.5), "b": np.int64(7), "c": np.float32(0.25)}))
    assert out == {"a": 1.5, "b": 7, "c": 0.25}
    assert type(out["a"]) is float and type(out["b"]) is int


def test_an_object_that_is_not_state_is_refused_by_name():
    class Threshold:
        pass

    with pytest.raises(TypeError, match="holds a Threshold"):
        encode_state({"a": Threshold()})


def test_partition_record_round_trip_and_its_earlier_json_form():
    rec = PartitionRecord(3, 1000, {0: 17, 1: 4}, 1.7e9)
    assert PartitionRecord.decode(rec.encode()) == rec
    old = json.dumps({"format": 1, "partition": 3, "next_offset": 1000, "alerts_offsets": {"0": 17, "1": 4},
                      "written_at": 1.7e9}).encode()
    assert PartitionRecord.decode(old) == rec


def test_the_checkpoint_interval_starts_over_at_a_restore():
    """A restore has just read the state back: the next checkpoint is an interval after it, however
    long the group join took, and the alerts positions never go back."""
    from stream_ae.stream.checkpoint import Checkpointer

    t = [0.0]
    ck = Checkpointer(producer=None, state_topic="state", interval_s=3.0, clock=lambda: t[0])
    t[0] = 2.9
    assert not ck.due()
    t[0] = 3.5                                   # the join took longer than an interval
    assert ck.due()
    ck.alert_acked(0, 9)
    ck.restored({0: 4, 1: 7})
    assert not ck.due() and ck.alerts_offsets == {0: 10, 1: 7}
    t[0] = 6.5
    assert ck.due()


def test_an_evicted_entity_is_parked_as_its_state_record_and_comes_back_whole():
    from stream_ae.alerts import AlertTracker
    from stream_ae.data.windows import SeriesWindower, WindowSpec
    from stream_ae.stream.entities import EntityState, EntityTable

    class Part:  # stand-in for the threshold, with a state of its own
        def __init__(self):
            self.peaks = []

        def state_dict(self):
            return {"peaks": list(self.peaks)}

        def load_state_dict(self, d):
            self.peaks = list(d["peaks"])

    table = EntityTable(lambda e: EntityState(e, SeriesWindower(WindowSpec(length=3), 1), Part(), AlertTracker()),
                        max_entities=1)
    a = table.get("a")
    a.windows, a.partition, a.threshold.peaks = 7, 3, [0.5, float("nan")]
    table.mark_dirty("a")
    table.get("b").windows = 2
    table.trim()  # "a" is evicted: parked as the record a checkpoint writes for it
    assert "a" not in table and table.evictions == 1
    records = table.take_dirty()
    assert set(records) == {"a"} and records["a"][0] == 3
    parked = decode_state(records["a"][1])
    assert parked["windows"] == 7 and parked["threshold"]["peaks"][0] == 0.5
    back = table.get("a")  # restored from the parked record
    assert back.windows == 7 and back.partition == 3 and math.isnan(back.threshold.peaks[1])
    table.trim()  # now "b" is evicted (windows 2, no partition yet); then that is revoked
    assert table.drop_partitions({-1}) == 0 and table.get("b").windows == 0  # its record went too


class _GatedProducer:
    """A producer whose flushes wait for ``gate``; it logs every call."""

    def __init__(self):
        import threading

        self.gate, self.calls = threading.Event(), []

    def flush(self):
        assert self.gate.wait(10), "the test never opened the gate"
        self.calls.append(("flush",))

    def send(self, topic, key, value, partition, headers=None):
        from concurrent.futures import Future

        self.calls.append(("send", key, value, partition))
        done = Future()
        done.set_result(None)
        done.get = lambda timeout: None
        return done


class _Table:
    def __init__(self, states):
        self.states = states

    def take_dirty(self):
        states, self.states = self.states, {}
        return states


def test_a_checkpoint_holds_the_poll_loop_for_its_snapshot_only_and_stores_the_offsets_acknowledged_by_then():
    """The write (flush, send, flush) runs on the checkpoint thread; the partition record stores the
    output offsets acknowledged at the snapshot, a lower bound on where anything produced after it lands,
    not what is acknowledged while the write goes on (a restore reading from there would miss it)."""
    from stream_ae.stream.checkpoint import Checkpointer

    producer = _GatedProducer()
    ck = Checkpointer(producer, "state", interval_s=5.0)
    ck.alert_acked(0, 9)
    ck.letter_acked(1, 3)
    try:
        held, write = ck.begin(_Table({"pump-1": (2, b"s1"), "pump-2": (-1, b"s2")}), {2: 100, 3: 7}, {"d": 1})
        assert not write.done() and producer.calls == []  # the caller is back while the write waits
        ck.alert_acked(0, 20)                               # an alert of a later batch is acknowledged
        producer.gate.set()
        seconds, states = write.result(timeout=10)
    finally:
        producer.gate.set()
        ck.close()
    assert states == 2 and seconds >= held >= 0 and ck.count == 1
    kinds = [c[0] for c in producer.calls]
    assert kinds == ["flush", "send", "send", "send", "send", "flush"]  # the alerts before the snapshot first
    sent = {c[1]: (c[2], c[3]) for c in producer.calls if c[0] == "send"}
    assert sent[b"pump-1"] == (b"s1", 2) and sent[b"pump-2"] == (b"s2", None)
    rec = PartitionRecord.decode(sent[b"__partition__/2"][0])
    assert (rec.next_offset, rec.alerts_offsets, rec.dead_letter_offsets, rec.drift) == (100, {0: 10}, {1: 4}, {"d": 1})
    assert PartitionRecord.decode(sent[b"__partition__/3"][0]).next_offset == 7
    assert ck.alerts_offsets == {0: 21}                     # the next checkpoint stores that one


def test_no_state_is_written_after_an_alert_that_failed():
    """A state that assumes its alerts were published must not land when one of them failed:
    after a crash the restore would take it, and the alert would be lost."""
    from stream_ae.errors import StreamAEError
    from stream_ae.stream.checkpoint import Checkpointer

    producer = _GatedProducer()
    producer.gate.set()
    ck = Checkpointer(producer, "state", interval_s=5.0, output_failed=lambda: True)
    try:
        _, write = ck.begin(_Table({"pump-1": (0, b"s1")}), {0: 5})
        with pytest.raises(StreamAEError, match="no state is written"):
            write.result(timeout=10)
    finally:
        ck.close()
    assert producer.calls == [("flush",)] and ck.count == 0
