"""Prometheus metrics of the stream runner, on a registry of their own, and a health snapshot.

The HTTP ``/metrics`` and ``/health`` endpoints serve :attr:`StreamMetrics.registry` and
:meth:`StreamMetrics.health`; nothing here opens a socket.

>>> m = StreamMetrics()
>>> m.consumed.inc(3)
>>> m.sample("stream_ae_messages_consumed_total")
3.0
"""

from __future__ import annotations

import contextlib
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_SIZE_BUCKETS = (1, 8, 32, 128, 512, 1024, 2048, 4096, 8192, 16384, 65536)
_SCORING_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
_CHECKPOINT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class StreamMetrics:
    """Every metric of one runner. ``registry`` is a dedicated :class:`CollectorRegistry`."""

    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        ProcessCollector(registry=r)  # process_resident_memory_bytes, process_cpu_seconds_total, fds (Linux)
        self.consumed = Counter("stream_ae_messages_consumed", "Records read from the readings topic", registry=r)
        self.dead_letters = Counter("stream_ae_dead_letters", "Records not scored, by reason", ["reason"],
                                    registry=r)
        self.windows = Counter("stream_ae_windows_scored", "Windows scored", registry=r)
        self.replayed = Counter("stream_ae_replayed_skipped",
                                "Replayed readings skipped because the restored state holds them", registry=r)
        self.batch_size = Histogram("stream_ae_batch_readings", "Readings per micro-batch",
                                    buckets=_SIZE_BUCKETS, registry=r)
        self.batch_windows = Histogram("stream_ae_batch_windows", "Windows per micro-batch",
                                       buckets=_SIZE_BUCKETS, registry=r)
        self.scoring_seconds = Histogram("stream_ae_scoring_seconds", "Model time per micro-batch",
                                         buckets=_SCORING_BUCKETS, registry=r)
        self.latency = Histogram("stream_ae_ingest_to_alert_seconds",
                                 "From the reading's Kafka timestamp to the alert's acknowledgement",
                                 buckets=_LATENCY_BUCKETS, registry=r)
        self.alerts = Counter("stream_ae_alerts", "Alert events published, by state", ["state"], registry=r)
        self.suppressed = Counter("stream_ae_alerts_suppressed",
                                  "Replayed alert events not published again (already on the topic)", registry=r)
        self.entities = Gauge("stream_ae_live_entities", "Entity states held in memory", registry=r)
        self.evictions = Counter("stream_ae_entity_evictions", "Entities evicted by the max_entities cap",
                                 registry=r)
        self.dropped = Counter("stream_ae_entity_states_dropped",
                               "Evicted entity states that aged out of the parked set (input.max_entities): such "
                               "an entity that returns after the next checkpoint starts afresh, and an alert it "
                               "had open is not resolved", registry=r)
        self._table = None   # the detector's entity table, once set_entities has seen it
        self.warming = Gauge("stream_ae_thresholds_warming_up", "Entities held in memory whose threshold is still "
                             "warming up: their windows are scored but none is flagged (counted at each scrape)",
                             registry=r)
        self.warming.set_function(self.warming_up)
        self._evicted = self._dropped = 0   # the table's counts already counted
        self._next_lag = 0.0
        self._lag_partitions: set[int] = set()   # partitions with a lag series
        self.heartbeat_age_s: float | None = None
        self.heartbeat_limit_s = float("inf")
        self.lag = Gauge("stream_ae_consumer_lag", "Fetch high-watermark minus position", ["partition"],
                         registry=r)
        self.lost = Counter("stream_ae_partitions_lost", "Partitions the group took away while this member "
                            "stalled (its work on them dropped for the next owner)", registry=r)
        self.checkpoints = Counter("stream_ae_checkpoints", "Checkpoints written", registry=r)
        self.checkpoint_seconds = Histogram("stream_ae_checkpoint_seconds",
                                            "Time a checkpoint held the poll loop: the changed entities "
                                            "snapshotted (the checkpoint thread writes them)",
                                            buckets=_CHECKPOINT_BUCKETS, registry=r)
        self.checkpoint_write_seconds = Histogram("stream_ae_checkpoint_write_seconds",
                                                  "Time from a checkpoint's snapshot until the alerts before it "
                                                  "and its state records were acknowledged",
                                                  buckets=_CHECKPOINT_BUCKETS, registry=r)
        self.checkpoint_states = Counter("stream_ae_checkpoint_states", "Entity states written by checkpoints",
                                         registry=r)
        self.drift = Counter("stream_ae_drift_events", "Shifts in the running model's normal scores (the level "
                             "over [drift] horizon), by direction: up, down, or flagged (at least [drift] "
                             "max_flagged of a horizon's windows flagged)", ["direction"], registry=r)
        self.drift_shift = Gauge("stream_ae_drift_shift", "The running model's mean log score over the closed "
                                 "buckets of the latest [drift] horizon minus its starting level: drift is "
                                 "reported at +/- [drift] min_shift once a whole horizon is in (NaN until the "
                                 "first bucket closes, or the first horizon for a model without a stored "
                                 "starting level)", registry=r)
        self.reload_failures = Counter("stream_ae_model_reload_failures", "Tries to load the version the "
                                       "deployment names that failed (the running model stayed)", registry=r)
        self.model_info = Gauge("stream_ae_model_info", "The model in use (value 1)", ["version"], registry=r)
        self.last_poll = 0.0
        self.waited_at = 0.0   # the last check for a first model (model.wait_for_model_s), while waiting
        self.waiting_for_model = False
        self.assigned: list[int] = []
        self.model_version: str | None = None
        self.running = False

    def set_model(self, version: str) -> None:
        if self.model_version is not None:
            self.model_info.remove(self.model_version)
        self.model_version = version
        self.model_info.labels(version).set(1)

    def checkpointed(self, write_seconds: float, states: int) -> None:
        """A checkpoint's records were written (``checkpoint_seconds`` is observed at its snapshot)."""
        self.checkpoints.inc()
        self.checkpoint_write_seconds.observe(write_seconds)
        self.checkpoint_states.inc(states)

    def polled(self) -> None:
        self.last_poll = time.time()

    def waiting(self, on: bool) -> None:
        """Waiting for the deployment to name a first version: alive (a check just ran), not ready."""
        self.waiting_for_model, self.waited_at = on, time.time()

    def set_assignment(self, partitions) -> None:
        """The partitions this member holds now; the lag series of any it gave up go away (a
        revoked partition's last lag would stay on /metrics, summed with its new owner's)."""
        self.assigned = sorted(partitions)
        for p in self._lag_partitions - set(partitions):
            self.lag.remove(str(p))
        self._lag_partitions &= set(partitions)

    def set_entities(self, table) -> None:
        """Live entities and evictions from the detector's entity table (after a batch, a
        revoke, a restore)."""
        self._table = table
        self.entities.set(len(table))
        if table.evictions > self._evicted:
            self.evictions.inc(table.evictions - self._evicted)
        self._evicted = table.evictions
        if table.dropped > self._dropped:
            self.dropped.inc(table.dropped - self._dropped)
        self._dropped = table.dropped

    def warming_up(self) -> int:
        """Entities held whose threshold is not ready: an uncalibrated model's first ``warmup``
        windows, or an EVT warm-up whose scores have no tail yet (an idle machine's), which goes
        on until they have one. Read at scrape time, from the server's thread: ``states()`` is a
        copy, so the poll loop may change the table meanwhile."""
        return 0 if self._table is None else sum(not s.threshold.ready for s in self._table.states())

    def set_lag(self, lags: dict[int, int]) -> None:
        for p, lag in lags.items():
            self.lag.labels(str(p)).set(lag)
        self._lag_partitions |= set(lags)

    def update_lag(self, consumer, every_s: float = 0.5) -> None:
        """Lag from kafka-python's own figures: the fetch high-watermark (the embedded broker's
        end offsets are wrong) minus the position; no request is sent. At most once ``every_s``
        (the poll loop calls it every step). The high-watermark is the one the latest fetch
        response carried; while the consumer catches up, the log end has moved on since, so the
        figure is then a lower bound."""
        now = time.monotonic()
        if now < self._next_lag:
            return
        self._next_lag = now + every_s
        lags = {}
        for tp in consumer.assignment():
            hw = consumer.highwater(tp)
            if hw is not None:
                with contextlib.suppress(Exception):  # position may be unknown mid-rebalance
                    lags[tp.partition] = max(hw - consumer.position(tp, timeout_ms=0) or 0, 0)
        self.set_lag(lags)
        self._heartbeat(consumer)

    def _heartbeat(self, consumer) -> None:
        """Seconds since the group heartbeat was last sent (kafka-python's own metric): with the
        broker gone, the coordinator is unknown and no heartbeat goes out, while polls go on
        returning nothing at once. None before the first heartbeat, or without the metric."""
        self.heartbeat_limit_s = consumer.config["session_timeout_ms"] / 1000
        with contextlib.suppress(Exception):   # an interface kafka-python calls unstable
            group = (consumer.metrics() or {}).get("consumer-coordinator-metrics", {})
            ago = group.get("last-heartbeat-seconds-ago")
            self.heartbeat_age_s = ago if ago is not None and ago < 1e6 else None   # 1e9: never sent

    def health(self) -> dict:
        """A JSON-safe snapshot for ``/health``."""
        return {
            "running": self.running,
            "last_poll_at": self.last_poll or None,
            "seconds_since_poll": round(time.time() - self.last_poll, 3) if self.last_poll else None,
            "assigned_partitions": sorted(self.assigned),
            "model_version": self.model_version,
            "waiting_for_model": self.waiting_for_model,
            "seconds_since_heartbeat": None if self.heartbeat_age_s is None else round(self.heartbeat_age_s, 3),
            "broker_reachable": self.heartbeat_age_s is None or self.heartbeat_age_s <= self.heartbeat_limit_s,
            "thresholds_warming_up": self.warming_up(),
        }

    def sample(self, name: str, labels: dict | None = None) -> float | None:
        """Current value of one sample (for tests and the benchmark)."""
        return self.registry.get_sample_value(name, labels or {})
