"""(a) and (b) of ``stream-ae bench stream`` (``stream.py``): the raw consume rate of a bare
kafka-python consumer, and the detector's end-to-end rate on the same readings.

(b) runs from the runner's partitions being assigned to the checkpoint that covers the last
window (``_Covered``): its alerts acknowledged, its state records written and its offsets
committed, as a deployment leaves them.
"""
from __future__ import annotations

import contextlib
import threading
import time

from stream_ae.bench import cpu

POLL_THREAD = "stream-ae-poll-loop"
# The runner's threads by name: the poll loop (decode, windows, thresholds, alerts, Kafka
# calls), the model's (ThreadPoolExecutor "stream-ae-scoring"), kafka-python's network threads.
CPU_GROUPS = {"poll_loop": lambda name: name == POLL_THREAD,
              "model": lambda name: name.startswith("stream-ae-scoring"),
              "kafka_io": lambda name: name.startswith("kafka-io")}
# (a) polls this many records a call, whatever the detector's batch.max_size: in a sweep of
# 500 / 1024 / 2048 / 4096 (two rounds, one broker) 1024 was the best or equal best
RAW_MAX_RECORDS = 1024


@contextlib.contextmanager
def bare_consumer(settings, compiled: bool):
    """A consumer group member on the readings topic, assigned, under the process settings the
    runner gives itself (``stream/tuning.py``: GIL switch interval, frozen start-up heap), so a
    ceiling measured with it differs from the runner only in the work done. ``compiled``: try to
    install the detector's record decoder (stream/record_decoding.py). Yields the consumer and
    whether that decoder is installed (if not, kafka-python's reads, as the runner falls back)."""
    from kafka import KafkaConsumer

    from stream_ae.stream import record_decoding
    from stream_ae.stream.broker import wait_for_assignment
    from stream_ae.stream.tuning import tune_process

    consumer = KafkaConsumer(**{**settings.kafka_client_kwargs("consumer"), "enable_auto_commit": False})
    try:
        installed = bool(compiled) and record_decoding.install(consumer)
        with contextlib.ExitStack() as stack:
            tune_process(stack, settings.batch.torch_threads)
            consumer.subscribe([settings.kafka.readings_topic])
            wait_for_assignment(consumer)
            yield consumer, installed
    finally:
        consumer.close(autocommit=False)


def raw_consume_rate(settings, n: int, compiled: bool = False) -> float:
    """(a) Records/s of a bare consumer group over the readings topic: no decode, no processing.
    ``compiled``: with the detector's record decoder installed.

    It runs under the runner's process settings (``bare_consumer``): without them kafka-python
    alone was 127-138 k/s against 156-165 k/s with them (three rounds, one broker), a ceiling
    ~20 % low that flattered (b)/(a)."""
    with bare_consumer(settings, compiled) as (consumer, installed):
        if compiled and not installed:
            return float("nan")
        t, got = time.perf_counter(), 0
        while got < n:
            for batch in consumer.poll(timeout_ms=100, max_records=RAW_MAX_RECORDS).values():
                got += len(batch)
        return n / (time.perf_counter() - t)


def _run(runner, done, timeout_s: float = 600.0,
         children: tuple[int, ...] = ()) -> tuple["cpu.Snapshot", "cpu.Snapshot"]:
    """Run until ``done()``; returns CPU snapshots (``.at``: perf_counter seconds) taken when the
    runner's partitions were assigned and when ``done()`` first held; ``children``: processes
    (the broker) whose CPU the snapshots also read."""
    stop, errors = threading.Event(), []

    def target():
        try:
            runner.run(stop)
        except BaseException as exc:  # re-raised below
            errors.append(exc)

    thread = threading.Thread(target=target, daemon=True, name=POLL_THREAD)
    thread.start()
    deadline = time.monotonic() + timeout_s
    assigned = None
    while thread.is_alive() and time.monotonic() < deadline:
        if assigned is None and runner.metrics.assigned:
            assigned = cpu.snapshot(children)
        if done():
            break
        # Once the run is measured, look rarely: each wake-up of this thread takes the GIL from
        # the runner (0.1 ms switch interval); every 2 ms that cost (b) 5-10 %. Seeing the end
        # up to 10 ms late understates (b) by at most 10 ms / the run's length (~0.5 %).
        time.sleep(0.002 if assigned is None else 0.01)
    finished = cpu.snapshot(children)
    stop.set()
    thread.join(60)
    if errors:
        raise errors[0]
    if not done():
        raise RuntimeError("the runner did not get through the readings in time")
    return assigned or finished, finished


class _Covered:
    """(b)'s end, read from the measuring thread: every window scored, then a checkpoint begun
    after the last of them written (the alerts acknowledged, the state records written) and its
    offsets committed. A checkpoint is asked for then, not waited an interval for; one being
    written when the last window was scored may not cover it, so one more is waited for."""

    def __init__(self, runner, windows: int):
        self.runner, self.windows, self.need = runner, windows, None

    def __call__(self) -> bool:
        m = self.runner.metrics
        if self.need is None:
            if (m.sample("stream_ae_windows_scored_total") or 0) < self.windows:
                return False
            in_flight = self.runner._writing is not None
            self.need = (m.sample("stream_ae_checkpoints_total") or 0) + 1 + in_flight
        if (m.sample("stream_ae_checkpoints_total") or 0) >= self.need:
            return True
        self.runner._checkpointer.ask()
        return False


def detector_rate(settings, artifact, n: int, entities: int,
                  broker_pids: tuple[int, ...] = ()) -> tuple[float, dict]:
    """(b) Readings/s of the StreamRunner over ``n`` readings of ``entities`` entities, assignment to
    the checkpoint that covers the last window (``_Covered``); and where time went: the model's busy
    share, the share of windows flagged, and the cores each part used (``cpu_cores``: the poll loop,
    the model's thread, kafka-python's I/O threads, the broker's processes, the whole machine)."""
    from stream_ae.stream.runner import StreamRunner

    runner = StreamRunner(settings, artifact)
    expected = n - entities * (artifact.window.length - 1)
    m, flagged, observe = runner.metrics, [0], runner.drift.observe

    def tap(out, *args):   # every finished batch passes the drift watch: count its flagged windows
        flagged[0] += int(out.flags.sum())
        return observe(out, *args)

    runner.drift.observe = tap
    a, b = _run(runner, _Covered(runner, expected), children=broker_pids)
    elapsed = b.at - a.at
    batches = m.sample("stream_ae_batch_readings_count") or 1
    model_s = m.sample("stream_ae_scoring_seconds_sum") or 0.0
    return n / elapsed, {"seconds": round(elapsed, 2), "batches": int(batches),
                         "mean_batch_readings": round(n / batches, 1),
                         "model_seconds": round(model_s, 2), "model_share": round(model_s / elapsed, 3),
                         "checkpoints": int(m.sample("stream_ae_checkpoints_total") or 0),
                         "flagged_share": round(flagged[0] / expected, 4),
                         "alert_events": int(sum(m.sample("stream_ae_alerts_total", {"state": s}) or 0
                                                 for s in ("open", "update", "resolved"))),
                         "cpu_cores": cpu.cpu_between(a, b, CPU_GROUPS, children_label="broker")}
