"""What an operator reads off a running consumer, without a broker: lag and entity figures
after a rebalance, log lines a pipeline can parse, and a stop that a second signal forces."""

from __future__ import annotations

import io
import json
import logging
import signal
import threading

import pytest

from stream_ae.errors import ConfigError
from stream_ae.stream.metrics import StreamMetrics


def _lag_series(metrics) -> dict:
    return {s.labels["partition"]: s.value for m in metrics.registry.collect() if m.name == "stream_ae_consumer_lag"
            for s in m.samples}


def test_a_revoked_partition_leaves_no_lag_series_behind():
    """Its last lag stayed on /metrics for good, summed with the new owner's figure."""
    m = StreamMetrics()
    m.set_lag({0: 5, 1: 7, 2: 0, 3: 1538})
    m.set_assignment({0, 1})
    assert _lag_series(m) == {"0": 5.0, "1": 7.0} and m.assigned == [0, 1]


def test_live_entities_and_evictions_follow_the_table():
    m = StreamMetrics()
    table = type("Table", (), {"evictions": 0, "dropped": 0, "__len__": lambda self: self.n})()
    for n, evicted in ((8, 0), (1, 3), (4, 5)):   # a revoke drops 7; an entity flood evicts
        table.n, table.evictions = n, evicted
        m.set_entities(table)
    assert m.sample("stream_ae_live_entities") == 4.0
    assert m.sample("stream_ae_entity_evictions_total") == 5.0   # a counter now: rate() works on it


def test_a_field_named_like_a_line_key_does_not_replace_it():
    """A drift event's ``ts`` (event time in ns) replaced the line's timestamp."""
    from stream_ae.stream.logs import JsonFormatter

    record = logging.LogRecord("stream_ae.stream.drift_watch", logging.WARNING, __file__, 1, "drift", (), None)
    record.fields = {"event": "drift", "ts": 223200000000000, "level": "x"}
    line = json.loads(JsonFormatter().format(record))
    assert isinstance(line["ts"], str) and line["level"] == "WARNING"
    assert (line["field_ts"], line["field_level"], line["event"]) == (223200000000000, "x", "drift")


def test_a_dropped_ops_connection_is_not_a_traceback_on_stderr(capsys, caplog):
    from stream_ae.stream.ops import _QuietServer

    server = _QuietServer(("127.0.0.1", 0), object)
    try:
        with caplog.at_level(logging.DEBUG, logger="stream_ae.stream.ops"):
            try:
                raise ConnectionResetError(104, "Connection reset by peer")
            except ConnectionResetError:
                server.handle_error(None, ("10.0.0.9", 5555))
    finally:
        server.server_close()
    assert capsys.readouterr().err == "" and "Connection reset by peer" in caplog.text


@pytest.mark.skipif(threading.current_thread() is not threading.main_thread(), reason="signals: main thread")
def test_a_second_signal_stops_at_once():
    """The first SIGTERM asks for a graceful stop; one that hangs (the broker gone) used to
    ignore every further SIGTERM and Ctrl-C until the producer's 120 s delivery timeout."""
    from stream_ae.stream.serve import stop_on_signals

    stop = threading.Event()
    before = signal.getsignal(signal.SIGTERM)
    with stop_on_signals(stop):
        signal.raise_signal(signal.SIGTERM)
        assert stop.is_set()
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL and signal.getsignal(signal.SIGINT) is signal.SIG_DFL
    assert signal.getsignal(signal.SIGTERM) is before


def test_why_serve_cannot_start_is_a_json_log_line_too():
    from stream_ae.stream.serve import serve

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    out = io.StringIO()
    import sys
    real, sys.stderr = sys.stderr, out
    try:
        with pytest.raises(ConfigError, match="no model"):
            serve(None, ["ops.metrics_port=0", "ops.health_port=0"])
    finally:
        sys.stderr = real
        for h in list(root.handlers):
            root.removeHandler(h)
        for h in handlers:
            root.addHandler(h)
        root.setLevel(level)
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert lines[-1]["level"] == "ERROR" and lines[-1]["error"] == "ConfigError"
    assert lines[-1]["msg"].startswith("stream-ae serve cannot start: no model")


class _Consumer:
    """What update_lag reads from a kafka-python consumer: no partitions, a heartbeat age."""

    config = {"session_timeout_ms": 10_000}

    def __init__(self, heartbeat_ago):
        self.ago = heartbeat_ago

    def assignment(self):
        return set()

    def metrics(self):
        return {"consumer-coordinator-metrics": {"last-heartbeat-seconds-ago": self.ago}}


@pytest.mark.parametrize("ago, ready, status", [(2.5, True, "ready"), (25.0, False, "broker unreachable"),
                                                (1.7e9, True, "ready")])   # 1.7e9: no heartbeat sent yet
def test_not_ready_while_the_group_heartbeat_cannot_be_sent(ago, ready, status):
    """With the broker gone, polls go on returning nothing at once: /readyz said 200 until the
    process died on the producer's delivery timeout."""
    from stream_ae.stream.ops import readiness

    m = StreamMetrics()
    m.running, m.model_version = True, "v1"
    m.set_assignment({0, 1})
    m.update_lag(_Consumer(ago))
    ok, body = readiness(m)
    assert (ok, body["status"]) == (ready, status)
    assert body["broker_reachable"] is ready
