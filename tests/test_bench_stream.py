"""The stream benchmark's load generator: what (c) offers is what the detector receives."""
from __future__ import annotations

import pytest

from stream_ae.bench import loadgen

pytestmark = pytest.mark.kafka


def _read_all(bootstrap: str, topic: str, expected: int) -> list:
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                             auto_offset_reset="earliest", consumer_timeout_ms=3000)
    try:
        parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)]
        consumer.assign(parts)
        got = []
        for record in consumer:
            got.append(record)
            if len(got) >= expected:
                break
        return got
    finally:
        consumer.close()


@pytest.mark.parametrize("client", ["confluent-kafka", "kafka-python"])
def test_the_paced_generator_delivers_every_reading_keyed_as_kafka_python(broker, topic_factory, tmp_path,
                                                                          monkeypatch, client):
    import msgspec
    from kafka.partitioner.default import murmur2

    if client == "confluent-kafka":
        pytest.importorskip("confluent_kafka")
    else:
        monkeypatch.setattr(loadgen, "load_generator", lambda: "kafka-python")
    msgs = [(f"e{i % 7}".encode(), f'{{"n": {i}}}'.encode()) for i in range(300)]
    path = tmp_path / "msgs.msgpack"
    path.write_bytes(msgspec.msgpack.encode(msgs))
    readings, warm = topic_factory(partitions=4), topic_factory()
    loadgen.paced_producer(broker.bootstrap, readings, str(path), 3000.0, warm)

    got = _read_all(broker.bootstrap, readings, len(msgs))
    assert sorted(r.value for r in got) == sorted(v for _, v in msgs)  # every reading, once
    for r in got:  # murmur2, as kafka-python and the Java client partition keys
        assert r.partition == (murmur2(r.key) & 0x7FFFFFFF) % 4
        assert r.timestamp > 0
    assert [r.key for r in _read_all(broker.bootstrap, warm, 1)] == [b"warm-up"]


def test_the_generator_reports_the_span_it_delivered_in(broker, topic_factory, tmp_path):
    """The achieved rate is taken over the sends, not the child's start-up."""
    import multiprocessing
    import time

    import msgspec

    msgs = [(b"e", b"{}")] * 400
    path = tmp_path / "msgs.msgpack"
    path.write_bytes(msgspec.msgpack.encode(msgs))
    span = multiprocessing.get_context("spawn").Array("d", 2, lock=False)
    before = time.time()
    loadgen.paced_producer(broker.bootstrap, topic_factory(), str(path), 2000.0, topic_factory(), span)
    first, last = span
    assert before <= first < last <= time.time()
    assert last - first >= 400 / 2000.0 * 0.9  # paced: 400 readings at 2000/s take ~0.2 s


def test_the_broker_floor_reads_every_paced_reading(broker, tmp_path):
    from stream_ae.bench import latency

    msgs = [(f"e{i % 5}".encode(), f'{{"n": {i}}}'.encode()) for i in range(600)]
    out = latency.broker_latency_run(broker, msgs, 1500.0, tmp_path, timeout_s=60)
    assert out["readings"] == 600  # 1500/s for LATENCY_SECONDS is more than the 600 given
    assert 0 < out["p50_ms"] <= out["p99_ms"] <= out["max_ms"] < 60_000
    assert 0 < out["achieved_msgs_per_s"] <= 1500 * 1.1
    assert not list(tmp_path.glob("*.msgpack"))  # the generator's file is removed
    halves = out["halves"]
    assert halves["first"]["count"] + halves["second"]["count"] == 600  # every reading in one half
    assert halves["first"]["count"] > 0 and halves["second"]["count"] > 0


def test_the_halves_split_by_when_each_reading_was_sent():
    """Unit: the readings sent before the span's middle are the first half, and the cores in
    each half come from the CPU samples inside that half; the load generator counts only
    between the samples that saw it (it exits before the run ends)."""
    import numpy as np

    from stream_ae.bench import cpu, latency

    sent = np.array([100.0, 100.5, 101.0, 101.9, 102.1, 103.0, 104.0])
    ms = np.array([10.0, 12.0, 11.0, 13.0, 50.0, 70.0, 60.0])
    track = latency._CpuTrack({"loop": lambda name: name == "loop"})
    track.broker, track.generator = (7,), (8,)

    def snap(at, loop_s, broker_s, generator_s=None):
        kids = {7: broker_s} if generator_s is None else {7: broker_s, 8: generator_s}
        return at, cpu.Snapshot(at, {1: ("loop", loop_s)}, kids)

    track.samples = [snap(100.0, 0.0, 5.0, 1.0), snap(101.0, 0.5, 5.5, 1.2), snap(102.0, 1.0, 6.0, 1.4),
                     snap(103.0, 1.25, 7.0, 1.5), snap(104.0, 1.5, 8.0)]  # the generator gone at 104
    out = latency._halves(ms, sent, (100.0, 104.0), track)
    assert out["first"]["count"] == 4 and out["second"]["count"] == 3
    assert out["first"]["max_ms"] == 13.0 and out["second"]["p50_ms"] == 60.0
    first, second = out["first"]["cpu_cores"], out["second"]["cpu_cores"]
    assert first["loop"] == 0.5 and second["loop"] == 0.25  # 0 -> 1 CPU s over 2 s; 1 -> 1.5 over 2 s
    assert first["broker"] == 0.5 and second["broker"] == 1.0  # 5 -> 6 over 2 s; 6 -> 8 over 2 s
    assert first["load_generator"] == 0.2 and second["load_generator"] == 0.1  # 1.4 -> 1.5 over 102..103
    assert latency._CpuTrack({}).cores(0.0, 1.0) is None  # no samples: no figure


def test_the_latency_plot_bins_the_floor_and_draws_the_alerts_and_the_cores(tmp_path):
    """Unit: the floor's percentiles per half second of sending time; the cores between
    consecutive CPU samples (NaN where the generator was not seen); the picture is written."""
    import numpy as np

    from stream_ae.bench import cpu, latency
    from stream_ae.bench.latency_plot import plot_latency

    sent = np.array([0.1, 0.2, 0.4, 0.6, 1.7])
    binned = latency.binned_percentiles(np.array([10.0, 30.0, 20.0, 5.0, 7.0]), sent)
    assert binned["t_s"] == [0.25, 0.75, 1.75]  # the empty bin 1.0-1.5 is left out
    assert binned["p50"] == [20.0, 5.0, 7.0] and binned["p99"][0] == np.percentile([10, 30, 20], 99)
    assert latency.binned_percentiles(np.zeros(0), np.zeros(0)) == {"t_s": [], "p50": [], "p99": []}

    track = latency._CpuTrack({})
    track.broker, track.generator = (7,), (8,)
    track.samples = [(100.0, cpu.Snapshot(100.0, {1: ("x", 0.0)}, {7: 1.0, 8: 0.0}, (0.0, 100.0))),
                     (100.5, cpu.Snapshot(100.5, {1: ("x", 0.1)}, {7: 1.25, 8: 0.1}, (60.0, 200.0))),
                     (101.5, cpu.Snapshot(101.5, {1: ("x", 0.2)}, {7: 1.75}, (150.0, 300.0)))]
    cores = track.series(100.0)
    assert cores["t_s"] == [0.25, 1.0] and cores["broker"] == [0.5, 0.5]
    assert cores["load_generator"][0] == 0.2 and np.isnan(cores["load_generator"][1])  # gone by 101.5
    assert cores["machine"][0] == round(0.6 * (cpu.os.cpu_count() or 1), 3)

    png = plot_latency(tmp_path / "lat.png", {"sent_s": sent, "ms": np.array([50.0, 80.0, 250.0, 90.0, 60.0]),
                                              "cores": cores}, binned, 200.0, "t")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


@pytest.mark.parametrize("flags, message", [
    ({"n": 500}, "--n must be at least 1920 readings"),
    ({"consumers": "1,x"}, "--consumers takes comma-separated positive integers"),
    ({"consumers": "1,2", "precision": "bf16"}, "--consumers measures fp32 only"),
])
def test_flags_that_would_measure_nothing_stop_before_a_broker_starts(flags, message):
    from stream_ae.bench import stream
    from stream_ae.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        stream.run_from_flags(**flags)
