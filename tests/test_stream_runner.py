"""The stream runner on a real broker: alerts end to end, dead letters, graceful shutdown, hot swap."""

from __future__ import annotations

import threading
import time

import pytest

from stream_ae.stream import codec
from test_stream_detector import CHANNELS, T, make_artifact, plant

pytestmark = pytest.mark.kafka


@pytest.fixture(scope="module")
def artifact():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny model; see test_stream_detector.one_torch_thread
    yield make_artifact()
    torch.set_num_threads(before)


def stream_topics(topic_factory, partitions: int = 2) -> dict[str, str]:
    return {"readings_topic": topic_factory(partitions, prefix="readings"),
            "alerts_topic": topic_factory(1, prefix="alerts"),
            "dead_letter_topic": topic_factory(1, prefix="dlq"),
            "state_topic": topic_factory(partitions, compact=True, prefix="state")}


def make_settings(kafka_config: dict, topics: dict, **extra):
    from stream_ae.stream.settings import load_settings

    overrides = [f"kafka.bootstrap_servers={kafka_config['bootstrap_servers']}",
                 f"kafka.group_id={kafka_config['group_id']}",
                 f"kafka.session_timeout_ms={kafka_config['session_timeout_ms']}",
                 "batch.max_size=200", "batch.max_wait_ms=20", "model.device=cpu",
                 "alerts.k=2", "alerts.n=4", "alerts.update_interval_s=10", "alerts.quiet_s=20"]
    overrides += [f"kafka.{k}={v}" for k, v in topics.items()]
    overrides += [f"{k}={v}" for k, v in extra.items()]
    return load_settings(env={}, overrides=overrides)


def reading_bytes(entity, ts_ns, row) -> bytes:
    return codec.encode_reading(codec.Reading(entity=str(entity), ts=int(ts_ns) // 1_000_000,
                                              values={c: float(v) for c, v in zip(CHANNELS, row)}))


def produce(bootstrap: str, topic: str, messages: list[tuple[bytes | None, bytes]]) -> list:
    """Send (key, value) pairs in order; returns their RecordMetadata."""
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    try:
        futures = [producer.send(topic, key=k, value=v) for k, v in messages]
        producer.flush()
        return [f.get(timeout=10) for f in futures]
    finally:
        producer.close()


def read_all(bootstrap: str, topic: str) -> list:
    """Every record of a topic, up to the fetch high-watermark."""
    from kafka import KafkaConsumer

    from stream_ae.stream.recovery import read_to_end

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    try:
        from kafka import TopicPartition

        parts = consumer.partitions_for_topic(topic) or set()
        return list(read_to_end(consumer, {TopicPartition(topic, p): None for p in sorted(parts)}))
    finally:
        consumer.close()


def plant_messages(n_rows: int = 500) -> list[tuple[bytes, bytes]]:
    entity, ts, values = plant(n_rows=n_rows)
    return [(e.encode(), reading_bytes(e, t, v)) for e, t, v in zip(entity, ts, values)]


def run_until(runner, done, timeout: float = 60.0) -> None:
    """Run in a thread until ``done()``; then stop it gracefully and re-raise its error."""
    stop, errors = threading.Event(), []

    def target():
        try:
            runner.run(stop)
        except BaseException as exc:  # re-raised in the test thread below
            errors.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not done() and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    stop.set()
    thread.join(30)
    if errors:
        raise errors[0]
    assert not thread.is_alive(), "the runner did not stop on the stop flag"
    assert done(), "the runner did not get through the topic in time"


def test_alerts_dead_letters_and_graceful_shutdown(broker, topic_factory, kafka_config, artifact):
    from kafka import KafkaConsumer, TopicPartition

    from stream_ae.stream.runner import StreamRunner

    topics = stream_topics(topic_factory)
    good = plant_messages()
    t_last = 1_700_000_000_000 + 10_000_000
    row = {c: 1.0 for c in CHANNELS}
    bad = [
        (b"pump-a", b"{not json"),
        (b"pump-a", b'{"entity": "pump-a", "ts": %d, "values": {"temp": NaN, "pressure": 1, "flow": 1}}' % t_last),
        (b"pump-a", codec.encode_reading(codec.Reading("pump-a", t_last, {"temp": 1.0, "flow": 1.0}))),
        (b"pump-a", codec.encode_reading(codec.Reading("pump-a", t_last, {**row, "vibration": 2.0}))),
        (b"pump-a", b" " * 5000),
        good[-3],  # pump-a's last reading again: a duplicate
    ]
    meta = produce(broker.bootstrap, topics["readings_topic"], good + bad)
    settings = make_settings(kafka_config, topics, **{"input.max_message_bytes": 4096})
    runner = StreamRunner(settings, artifact, checkpoint_interval_s=1.0)
    total = len(good) + len(bad)
    t0 = time.perf_counter()
    run_until(runner, lambda: runner.metrics.sample("stream_ae_messages_consumed_total") >= total)
    elapsed = time.perf_counter() - t0

    # alerts: the level shift of pump-b, opened then resolved, named by the model
    alerts = [codec.decode_alert(r.value) for r in read_all(broker.bootstrap, topics["alerts_topic"])]
    assert alerts, "no alert for the injected level shift"
    assert {a.entity for a in alerts} == {"pump-b"}
    assert alerts[0].state == "open" and alerts[-1].state == "resolved"
    assert alerts[0].started_at.timestamp() >= 1_700_000_000 + 250 - T
    assert {a.model_version for a in alerts} == {artifact.version}
    assert len({a.event_id for a in alerts}) == len(alerts)
    assert runner.metrics.sample("stream_ae_windows_scored_total") == 3 * (500 - T + 1)

    # dead letters: reason, original bytes, source coordinates
    letters = [codec.decode_dead_letter(r.value) for r in read_all(broker.bootstrap, topics["dead_letter_topic"])]
    by_reason = {d.reason: d for d in letters}
    assert set(by_reason) == {"malformed", "non_finite", "missing_channel", "unknown_channel", "oversized",
                              "duplicate"}
    for (key, value), md in zip(bad, meta[len(good):]):
        d = next(d for d in letters if d.source_offset == md.offset and d.source_partition == md.partition)
        assert d.original == value and d.source_topic == topics["readings_topic"] and d.original_key == key
    assert runner.metrics.sample("stream_ae_dead_letters_total", {"reason": "duplicate"}) == 1

    # graceful stop: the group's committed offsets are at the end of every partition
    consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap, group_id=kafka_config["group_id"],
                             enable_auto_commit=False)
    try:
        ends: dict[int, int] = {}
        for md in meta:
            ends[md.partition] = max(ends.get(md.partition, 0), md.offset + 1)
        committed = {p: consumer.committed(TopicPartition(topics["readings_topic"], p)) for p in ends}
    finally:
        consumer.close()
    assert committed == ends
    # at least the last checkpoint, at the stop, wrote the three entities, and was timed
    checkpoints = runner.metrics.sample("stream_ae_checkpoints_total")
    assert checkpoints >= 1 and runner.metrics.sample("stream_ae_checkpoint_seconds_count") == checkpoints
    assert runner.metrics.sample("stream_ae_checkpoint_states_total") >= 3
    assert runner.metrics.sample("stream_ae_checkpoint_seconds_sum") > 0
    assert runner.metrics.sample("stream_ae_checkpoint_write_seconds_count") == checkpoints
    assert runner.metrics.sample("stream_ae_checkpoint_write_seconds_sum") > 0
    print(f"\nrunner end to end: {total / elapsed:,.0f} msg/s over {total} messages (incl. join)")
    assert runner.metrics.health()["model_version"] == artifact.version


def test_a_restarted_consumer_resumes_its_drift_watch_from_the_checkpoint(broker, topic_factory, kafka_config,
                                                                          artifact):
    """The drift watch's state travels in the checkpoint: a consumer started after a graceful
    stop watches on from exactly where the last one stopped, not from nothing."""
    from stream_ae.stream.runner import StreamRunner

    topics = stream_topics(topic_factory)
    produce(broker.bootstrap, topics["readings_topic"], plant_messages())
    settings = make_settings(kafka_config, topics)
    first = StreamRunner(settings, artifact, checkpoint_interval_s=1.0)
    run_until(first, lambda: first.metrics.sample("stream_ae_messages_consumed_total") >= 1500)
    saved = first.drift.state()
    assert saved is not None and saved["model_version"] == artifact.version
    assert saved["monitor"]["keys"]["__model__"]["seen"] > 0

    second = StreamRunner(settings, artifact, checkpoint_interval_s=1.0)
    assert second.drift.state() is None
    run_until(second, lambda: second._assigned == {0, 1})  # restored; nothing new to read
    assert second.drift.state() == saved


def test_hot_swap_between_batches_names_the_new_model(broker, topic_factory, kafka_config, artifact):
    import dataclasses

    from stream_ae.scoring import Scorer
    from stream_ae.stream.runner import StreamRunner

    topics = stream_topics(topic_factory, partitions=1)
    produce(broker.bootstrap, topics["readings_topic"], plant_messages())
    v2 = Scorer(dataclasses.replace(artifact, version="conv-undercomplete-v2"), device="cpu")
    calls = []

    def reload():
        calls.append(1)
        return v2

    settings = make_settings(kafka_config, topics, **{"model.reload_interval_s": 0.001, "batch.max_size": 50})
    runner = StreamRunner(settings, artifact, reload=reload)
    run_until(runner, lambda: runner.metrics.sample("stream_ae_messages_consumed_total") >= 1500)
    alerts = [codec.decode_alert(r.value) for r in read_all(broker.bootstrap, topics["alerts_topic"])]
    assert calls and alerts and {a.model_version for a in alerts} == {"conv-undercomplete-v2"}
    assert runner.metrics.health()["model_version"] == "conv-undercomplete-v2"


def test_process_tuning_is_applied_while_running_and_undone_after():
    import contextlib
    import gc
    import sys

    import torch

    from stream_ae.allocator import keep_freed_memory
    from stream_ae.stream.tuning import SWITCH_INTERVAL_S, tune_process

    interval, threads = sys.getswitchinterval(), torch.get_num_threads()
    gc.unfreeze()
    with contextlib.ExitStack() as stack:
        tune_process(stack, torch_threads=1)
        assert sys.getswitchinterval() == pytest.approx(min(interval, SWITCH_INTERVAL_S))
        assert torch.get_num_threads() == 1
        assert gc.get_freeze_count() > 1000  # the start-up heap is out of the collector's reach
        trimming = [t for t in threading.enumerate() if t.name == "stream-ae-malloc-trim"]
        assert len(trimming) == (1 if keep_freed_memory() else 0)
    assert sys.getswitchinterval() == interval and torch.get_num_threads() == threads
    assert gc.get_freeze_count() == 0
    assert not any(t.is_alive() for t in trimming)  # stopped with the rest


def test_a_due_checkpoint_waits_for_the_batches_in_flight_without_blocking_the_poll_loop(artifact):
    """A periodic checkpoint neither blocks on a batch still scoring nor lets a new batch in
    meanwhile: the loop polls on, finishes the batch once scored, checkpoints (not waiting for
    the commit), and only then submits again."""
    from collections import namedtuple
    from concurrent.futures import Future
    from types import SimpleNamespace

    from stream_ae.stream.batcher import InFlight
    from stream_ae.stream.runner import StreamRunner
    from stream_ae.stream.settings import load_settings

    runner = StreamRunner(load_settings(env={}, overrides=["batch.max_wait_ms=0", "model.device=cpu"]), artifact)
    calls, polls = [], []
    due = [True]
    runner._consumer = SimpleNamespace(poll=lambda **kw: polls.append(kw) or {})
    runner._checkpointer = SimpleNamespace(due=lambda: due[0])
    runner.checkpoint = lambda **kw: calls.append(("checkpoint", kw)) or due.__setitem__(0, False)
    runner._submit_batch = lambda: calls.append("submit")
    runner._finish_oldest = lambda: calls.append("finish") or runner._inflight.popleft()
    runner.metrics.update_lag = lambda consumer: None
    runner.membership = SimpleNamespace(confirm=lambda: True, fresh=lambda: True)
    runner._assigned = {0}
    scoring = Future()
    runner._inflight.append(InFlight({0: 8}, None, None, scoring))
    runner.batcher.add(0, [namedtuple("R", "offset")(8)])  # ready at once (max_wait 0)

    for _ in range(3):
        runner.step()
    assert calls == [] and len(polls) == 3  # polled on; nothing finished, checkpointed or submitted
    scoring.set_result(None)
    runner.step()
    assert calls == ["finish", ("checkpoint", {"wait": False})]
    runner.step()
    assert calls[-1] == "submit"


def test_the_poll_loop_scores_on_while_a_checkpoint_is_written_and_commits_it_once_written(artifact):
    """The checkpoint thread writes (here: its flush is held) while the loop polls and submits
    batches; no second checkpoint starts meanwhile, and the positions are committed only once
    the records are acknowledged."""
    import threading
    from collections import namedtuple
    from types import SimpleNamespace

    from stream_ae.stream.checkpoint import Checkpointer
    from stream_ae.stream.runner import StreamRunner
    from stream_ae.stream.settings import load_settings

    R, TP = namedtuple("R", "offset"), namedtuple("TP", "partition")
    runner = StreamRunner(load_settings(env={}, overrides=["batch.max_wait_ms=0", "model.device=cpu"]), artifact)
    gate, sent, commits, submitted = threading.Event(), [], [], []
    producer = SimpleNamespace(flush=lambda: gate.wait(10),
                               send=lambda *a, **kw: sent.append(kw["key"]) or SimpleNamespace(get=lambda timeout: None))
    runner._checkpointer = Checkpointer(producer, "state", interval_s=0.0)
    runner._publisher = SimpleNamespace(failed=False)
    offsets = iter(range(100))
    runner._consumer = SimpleNamespace(poll=lambda **kw: {TP(0): [R(next(offsets))]})
    runner._submit_batch = lambda: submitted.append(runner.batcher.take()[0])
    runner.metrics.update_lag = lambda consumer: None
    runner.membership = SimpleNamespace(confirm=lambda: True, fresh=lambda: True,
                                        commit=lambda positions, blocking: positions and commits.append(positions))
    runner._assigned, runner._next_offsets = {0}, {0: 10}
    try:
        runner.step()                                     # due at once: the snapshot, then on to the next poll
        assert runner._writing is not None and not runner._writing[0].done()
        for _ in range(3):
            runner.step()
        assert len(submitted) == 3 and sent == [] and commits == []  # scored on; nothing written or committed yet
        assert runner._checkpointer.count == 0            # and no second checkpoint began
        gate.set()
        runner._writing[0].result(timeout=10)
        runner.step()
        assert sent == [b"__partition__/0"] and commits == [{0: 10}] and runner._writing is None
        runner.step()                                     # the interval (0 s) is over: the next one begins
        assert runner._writing is not None
    finally:
        gate.set()
        runner._checkpointer.close()


def test_a_batch_closes_early_only_while_a_model_thread_is_idle(artifact):
    """Below the model's capacity a reading does not wait out ``max_wait_ms``: what a poll brings is
    submitted while a scoring thread is idle. With every thread busy the batch waits, as before,
    for its wait to end, for it to fill, or for a thread to come free."""
    from collections import namedtuple
    from concurrent.futures import Future
    from types import SimpleNamespace

    from stream_ae.stream.batcher import InFlight
    from stream_ae.stream.runner import StreamRunner
    from stream_ae.stream.settings import load_settings

    R, TP = namedtuple("R", "offset"), namedtuple("TP", "partition")
    runner = StreamRunner(load_settings(env={}, overrides=[
        "batch.max_wait_ms=60000", "batch.max_size=100", "batch.scoring_threads=2", "model.device=cpu"]), artifact)
    submitted, scoring = [], []

    def submit():
        records, _ = runner.batcher.take()
        submitted.append(len(records))
        scoring.append(Future())
        runner._inflight.append(InFlight({0: records[-1].offset + 1}, None, None, scoring[-1]))

    polled = iter([{}, {0: [R(0), R(1)]}, {0: [R(2)]}, {0: [R(3), R(4)]}, {0: [R(5)]}, {}])
    runner._consumer = SimpleNamespace(poll=lambda **kw: {TP(p): rs for p, rs in next(polled).items()})
    runner._checkpointer = SimpleNamespace(due=lambda: False)
    runner._submit_batch = submit
    runner._finish_oldest = lambda: runner._inflight.popleft()
    runner.metrics.update_lag = lambda consumer: None
    runner.membership = SimpleNamespace(confirm=lambda: True, fresh=lambda: True)

    runner.step()
    assert submitted == []                      # nothing polled, nothing to score
    runner.step()
    assert submitted == [2]                     # both threads idle: scored now, not in 60 s
    runner.step()
    assert submitted == [2, 1]                  # one thread still idle
    runner.step()
    runner.step()
    assert submitted == [2, 1] and len(runner.batcher) == 3   # both busy: the batch waits and grows
    scoring[0].set_result(None)
    runner.step()
    assert submitted == [2, 1, 3]               # a thread came free: the grown batch goes


def test_a_checkpoint_that_fails_on_revoke_stops_the_poll_loop_instead_of_being_only_logged(artifact):
    """kafka-python logs a rebalance listener's error and goes on: the runner forgets the revoked
    partitions all the same, commits nothing, and its next poll raises (a restart replays)."""
    from collections import namedtuple
    from types import SimpleNamespace

    from kafka.errors import KafkaTimeoutError

    from stream_ae.errors import StreamAEError
    from stream_ae.stream.checkpoint import Checkpointer
    from stream_ae.stream.runner import StreamRunner
    from stream_ae.stream.settings import load_settings

    def timed_out(timeout):
        raise KafkaTimeoutError("state record not acknowledged")

    runner = StreamRunner(load_settings(env={}, overrides=["model.device=cpu"]), artifact)
    commits, producer = [], SimpleNamespace(flush=lambda: None, send=lambda *a, **kw: SimpleNamespace(get=timed_out))
    runner._checkpointer = Checkpointer(producer, "state", interval_s=3600.0)
    runner._publisher = SimpleNamespace(failed=False, forget=lambda parts: None)
    runner._consumer = SimpleNamespace(poll=lambda **kw: {})
    runner.membership = SimpleNamespace(confirm=lambda: True, fresh=lambda: True, forget=lambda parts: None,
                                        commit=lambda positions, blocking: positions and commits.append(positions))
    runner._assigned, runner._next_offsets = {0, 1}, {0: 10, 1: 20}
    try:
        with pytest.raises(KafkaTimeoutError):                  # what kafka-python would log and swallow
            runner.on_revoked([namedtuple("TP", "partition")(0)])
        assert runner._assigned == {1} and 0 not in runner._next_offsets and commits == []
        with pytest.raises(StreamAEError, match="checkpoint of revoked partitions failed.*not acknowledged"):
            runner.step()
    finally:
        runner._checkpointer.close()
