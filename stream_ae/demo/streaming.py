"""Streaming detection for the demo: a broker, live readings, live alerts, a clean shutdown.

With no ``KAFKA_BOOTSTRAP_SERVERS`` the embedded broker is started (``running_broker``);
uuid-named topics are created and deleted afterwards. The readings after the training span
are produced, keyed by entity, faster than real time, with a few malformed ones among them
to show the dead-letter topic; a :class:`StreamRunner` consumes them in a background thread
while the alerts topic is read and printed as alerts arrive.

The score curves of the plot come from the same scoring path replayed over the same
readings (windower → Scorer → threshold with the artifact's calibration): the runner keeps
no score history, and the architecture promises both give the same numbers.
"""
from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass, field

import numpy as np

from stream_ae.demo.summary import ALERTS, alerts_to_detections

RATE_MSGS_S = 2_500          # readings per second: ~6000x real time for 4 entities at 10 s
WAIT_S = 90.0                # give up waiting for the runner after this long


@dataclass
class _Alerts:
    """What the alert reader saw: (alert, record timestamp ms, received at s)."""

    seen: list = field(default_factory=list)
    latencies_ms: list = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _readings(df, train_end: int, channels) -> tuple[list, list]:
    """(key, value) pairs of the streamed span, and the same as [entity (N,), ts ns (N,), values (N, C)]."""
    from stream_ae.stream import codec

    part = df[df["timestamp"].astype("int64") >= train_end]
    ents = part["entity"].to_numpy()
    ts_ns = part["timestamp"].astype("int64").to_numpy()
    values = part[list(channels)].to_numpy(np.float32)  # (N, C)
    messages = [(str(e).encode(), codec.encode_reading(codec.Reading(
        entity=str(e), ts=int(t) // 1_000_000, values={c: float(v) for c, v in zip(channels, row)})))
        for e, t, row in zip(ents, ts_ns, values)]
    return messages, [ents, ts_ns, values]


def _malformed(messages: list, channels) -> list:
    """A handful of bad records, spread through the stream: each becomes a dead letter."""
    from stream_ae.stream import codec

    e, ts_ms = "unit_0", 1_767_225_600_000
    good = {c: 1.0 for c in channels}
    bad = [b"{this is not json",
           b'{"entity": "unit_1", "ts": %d, "values": {"ch_0": NaN}}' % ts_ms,
           codec.encode_reading(codec.Reading(e, ts_ms, {c: 1.0 for c in channels[1:]})),  # a channel missing
           codec.encode_reading(codec.Reading(e, ts_ms, {**good, "humidity": 0.5})),        # an unknown channel
           b'{"entity": "unit_2", "ts": %d, "values": {}, "firmware": "2.1"}' % ts_ms,     # an unknown field
           ]
    return [(b"unit_0", b) for b in bad] + [messages[len(messages) // 3]]   # the last: a late repeat


def _interleave(good: list, bad: list) -> list:
    """Spread ``bad`` evenly through ``good`` (the late repeat comes well after its original)."""
    out = list(good)
    for i in reversed(range(len(bad))):
        out.insert((i + 1) * len(good) // (len(bad) + 1), bad[i])
    return out


def _print_alert(alert, latency_ms: float, t0: float) -> None:
    """One line per event. A resolved event says how long after its start it resolved (event time) and
    carries its last flagged window's score and the highest severity it reached."""
    top = ", ".join(f"{c.channel} {c.share:.0%}" for c in alert.top_channels)
    ratio = alert.score / alert.threshold if alert.threshold > 0 else float("inf")
    what = "score"
    if alert.state == "resolved":
        what = f"after {(alert.at - alert.started_at).total_seconds() / 60:.0f} min, last flagged"
    print(f"  [{time.perf_counter() - t0:5.1f} s] {alert.state.upper():<8} {alert.entity:<8} "
          f"{alert.severity:<8} {what} {alert.score:.3g} / threshold {alert.threshold:.3g} ({ratio:.1f}x)  "
          f"top {top}  latency {latency_ms:.0f} ms", flush=True)


def _read_alerts(bootstrap: str, topic: str, sent_ms: dict, sink: _Alerts, stop: threading.Event,
                 t0: float) -> None:
    from kafka import KafkaConsumer, TopicPartition

    from stream_ae.stream import codec

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    try:
        parts = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or {0})]
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        while not stop.is_set():
            for batch in consumer.poll(timeout_ms=100).values():
                for record in batch:
                    alert = codec.decode_alert(record.value)
                    key = (alert.entity, int(alert.at.timestamp() * 1000 + 0.5))
                    latency = time.time() * 1000 - sent_ms[key] if key in sent_ms else float("nan")
                    with sink.lock:
                        sink.seen.append(alert)
                        sink.latencies_ms.append(latency)
                    _print_alert(alert, latency, t0)
    finally:
        consumer.close()


def _produce(bootstrap: str, topic: str, messages: list, sent_ms: dict, rate: float) -> None:
    """Send at ``rate`` messages/s (a token bucket in 20 ms steps); remembers each reading's send time."""
    import msgspec
    from kafka import KafkaProducer

    decoder = msgspec.json.Decoder()
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    try:
        start, i = time.perf_counter(), 0
        while i < len(messages):
            due = min(int((time.perf_counter() - start) * rate) + 1, len(messages))
            now_ms = time.time() * 1000
            for key, value in messages[i:due]:
                producer.send(topic, key=key, value=value)
                try:
                    d = decoder.decode(value)
                    sent_ms.setdefault((d["entity"], d["ts"]), now_ms)
                except (msgspec.DecodeError, KeyError, TypeError):
                    pass   # the malformed ones
            i = due
            time.sleep(0.02)
        producer.flush()
    finally:
        producer.close()


def _frames(scorer, artifact, arrays) -> dict:
    """Per entity: ts, every channel's values, window end, score and threshold from the one scoring path."""
    from stream_ae.data.windows import SeriesWindower
    from stream_ae.thresholds import ThresholdSpec, build_threshold

    ents, ts_ns, values = arrays
    frames = {}
    for entity in sorted(set(ents)):
        sel = ents == entity
        wb = SeriesWindower(artifact.window, values.shape[1]).push(ts_ns[sel], values[sel])
        score = scorer.score_rows(wb.rows, wb.starts).score  # (B,)
        threshold = build_threshold(ThresholdSpec.from_dict(artifact.threshold["spec"]))
        threshold.load_state_dict(artifact.threshold["state"])
        _, used = threshold.step_many(score)
        frames[entity] = dict(ts=ts_ns[sel], values=values[sel], channels=tuple(artifact.channels),
                              score_ts=wb.end_ts, score=score, threshold=used)
    return frames


def _settings(broker, topics: dict):
    from stream_ae.stream.settings import load_settings

    session_ms = 3000 if broker.kind == "embedded" else 6000
    overrides = [f"kafka.bootstrap_servers={broker.bootstrap}", f"kafka.group_id=demo-{uuid.uuid4().hex[:8]}",
                 f"kafka.session_timeout_ms={session_ms}", "batch.max_size=1024", "batch.max_wait_ms=20",
                 *(f"alerts.{k}={v}" for k, v in ALERTS.items()),
                 "model.device=auto", "ops.metrics_port=0", "ops.health_port=0"]
    overrides += [f"kafka.{k}={v}" for k, v in topics.items()]
    return load_settings(env={}, overrides=overrides)


def detect_streaming(out, artifact, df, train_end: int):
    """Stream the readings after ``train_end`` through the detector; returns (frames, detections)."""
    import logging

    from stream_ae.stream.broker import create_topics, delete_topics, running_broker

    logging.getLogger("kafka").setLevel(logging.WARNING)   # it logs every connection at INFO
    # "Task ... ran for 0.25s (>0.100s threshold). It is blocking the event loop": kafka-python's
    # note on its own IO thread when the two cores are busy (the model just trained, the broker
    # starting); every demo printed one, and a user can do nothing about it
    logging.getLogger("kafka.net.selector").setLevel(logging.ERROR)
    if logging.getLogger().level > logging.DEBUG:   # the runner's INFO lines broke into the demo's own (-v: kept)
        logging.getLogger("stream_ae.stream").setLevel(logging.WARNING)
    with running_broker() as broker:
        suffix = uuid.uuid4().hex[:8]
        topics = {"readings_topic": f"demo-readings-{suffix}", "alerts_topic": f"demo-alerts-{suffix}",
                  "dead_letter_topic": f"demo-dead-letter-{suffix}", "state_topic": f"demo-state-{suffix}"}
        print(f"broker: {broker.kind} at {broker.bootstrap}; topics *-{suffix}")
        create_topics(broker.bootstrap, {topics["readings_topic"]: 4, topics["alerts_topic"]: 1,
                                         topics["dead_letter_topic"]: 1, topics["state_topic"]: 4},
                      compact={topics["state_topic"]})
        try:
            return _stream(broker, topics, artifact, df, train_end)
        except KeyboardInterrupt:   # Ctrl-C: the clients' complaints as the broker goes are no news
            for name in ("kafka", "stream_ae.stream"):
                logging.getLogger(name).setLevel(logging.CRITICAL)
            raise
        finally:
            delete_topics(broker.bootstrap, list(topics.values()))


def _stream(broker, topics: dict, artifact, df, train_end: int):
    from stream_ae.stream.runner import StreamRunner

    settings = _settings(broker, topics)
    good, arrays = _readings(df, train_end, artifact.channels)
    messages = _interleave(good, _malformed(good, artifact.channels))
    runner = StreamRunner(settings, artifact, checkpoint_interval_s=2.0)
    stop_runner, stop_reader, errors = threading.Event(), threading.Event(), []

    def run():
        try:
            runner.run(stop_runner)
        except BaseException as exc:  # re-raised in the demo thread below
            errors.append(exc)

    thread = threading.Thread(target=run, name="stream-runner", daemon=True)
    thread.start()
    t0 = time.perf_counter()
    deadline = time.monotonic() + 30
    while not runner.metrics.assigned and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    print(f"detector {artifact.version} joined the group in {time.perf_counter() - t0:.1f} s; partitions "
          f"{runner.metrics.assigned}")
    sink, sent_ms = _Alerts(), {}
    reader = threading.Thread(target=_read_alerts, args=(broker.bootstrap, settings.kafka.alerts_topic, sent_ms,
                                                         sink, stop_reader, t0), name="alert-reader", daemon=True)
    reader.start()
    print(f"streaming {len(good):,} readings of {len(set(arrays[0]))} entities at ~{RATE_MSGS_S:,}/s "
          f"(~{RATE_MSGS_S / len(set(arrays[0])) * 10:,.0f}x real time), with {len(messages) - len(good)} "
          "malformed ones; alerts as they arrive:")
    try:
        _produce(broker.bootstrap, settings.kafka.readings_topic, messages, sent_ms, RATE_MSGS_S)
        _wait_done(runner, thread, sink, len(messages))
    finally:
        stop_runner.set()
        thread.join(30)
        stop_reader.set()
        reader.join(10)
    if errors:
        raise errors[0]
    _report(runner, sink, time.perf_counter() - t0)
    last_ts = {e: arrays[1][arrays[0] == e].max() for e in set(arrays[0])}
    return _frames(runner.detector.scorer, artifact, arrays), alerts_to_detections(sink.seen, last_ts)


def _wait_done(runner, thread, sink: _Alerts, total: int) -> None:
    """Until every record is consumed and every published alert was read back."""
    m, deadline = runner.metrics, time.monotonic() + WAIT_S
    while thread.is_alive() and time.monotonic() < deadline:
        published = sum(m.sample("stream_ae_alerts_total", {"state": s}) or 0 for s in ("open", "update", "resolved"))
        if (m.sample("stream_ae_messages_consumed_total") or 0) >= total and len(sink.seen) >= published:
            time.sleep(0.3)   # a batch in flight may still publish
            if len(sink.seen) >= published:
                return
        time.sleep(0.05)
    print(f"warning: stopped waiting after {WAIT_S:.0f} s; consumed "
          f"{m.sample('stream_ae_messages_consumed_total'):.0f} of {total}")


def _report(runner, sink: _Alerts, elapsed: float) -> None:
    from stream_ae.stream.codec import REASONS

    m = runner.metrics
    letters = {r: int(m.sample("stream_ae_dead_letters_total", {"reason": r}) or 0) for r in REASONS}
    lat = np.array([x for x in sink.latencies_ms if np.isfinite(x)])
    print(f"\nstream: {m.sample('stream_ae_messages_consumed_total'):.0f} records consumed, "
          f"{m.sample('stream_ae_windows_scored_total'):.0f} windows scored, {len(sink.seen)} alert events "
          f"in {elapsed:.1f} s")
    print("dead letters: " + (", ".join(f"{r} {n}" for r, n in letters.items() if n) or "none"))
    if lat.size:
        print(f"alert latency (reading produced -> alert received): p50 {np.percentile(lat, 50):.0f} ms, "
              f"p99 {np.percentile(lat, 99):.0f} ms over {lat.size} events")
