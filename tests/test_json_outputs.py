"""Reports, benchmark figures and log lines are JSON other tools can read: a NaN or infinite
figure is written as null, never as the bare ``NaN`` / ``Infinity`` that Python's ``json``
writes and ``jq``, browsers and log shippers refuse."""

import json
import logging

import pytest


def strict_loads(text: str):
    """``json.loads`` as RFC 8259 reads it: ``NaN``, ``Infinity`` and ``-Infinity`` are errors."""
    def refuse(token):
        raise ValueError(f"not JSON: {token}")
    return json.loads(text, parse_constant=refuse)


def test_a_benchmark_figure_that_is_nan_is_written_as_null(tmp_path, capsys):
    from stream_ae.bench import emit

    path = tmp_path / "bench.json"
    emit({"p99_ms": float("nan"), "ratio": float("inf"), "runs": [{"rate": -float("inf")}, {"rate": 2.5}]}, path)
    printed, written = strict_loads(capsys.readouterr().out), strict_loads(path.read_text())
    assert printed == written == {"p99_ms": None, "ratio": None, "runs": [{"rate": None}, {"rate": 2.5}]}


def test_a_json_log_line_with_a_nan_field_stays_json():
    from stream_ae.stream.logs import JsonFormatter, TextFormatter

    record = logging.LogRecord("stream_ae.stream.drift_watch", logging.WARNING, __file__, 1, "drift", (), None)
    record.fields = {"score": float("nan"), "threshold": float("inf"), "channels": ("a", "b")}
    line = strict_loads(JsonFormatter().format(record))
    assert (line["score"], line["threshold"], line["channels"]) == (None, None, ["a", "b"])
    assert "score=null threshold=null" in TextFormatter().format(record)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_the_health_body_is_json_whatever_its_figures(value):
    from stream_ae.stream.ops import OpsServer

    class Metrics:
        last_poll, waited_at = None, 0.0

        def health(self):
            return {"lag": value}

    status, kind, body = OpsServer(Metrics(), metrics_port=0, health_port=0, stale_after_s=1e12).respond("/healthz")
    assert kind == "application/json" and strict_loads(body.decode())["lag"] is None
