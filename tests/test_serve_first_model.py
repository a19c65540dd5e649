"""`stream-ae serve` on a deployment with no version yet (a new cluster whose first model is still
being trained): with ``model.wait_for_model_s`` it waits, alive but not ready, instead of exiting
and being restarted in a loop; without it, it stops at once with a message that says what to do."""

from __future__ import annotations

import json
import threading
import time

import pytest

from stream_ae.errors import ConfigError
from stream_service import free_port, http_get
from test_registry import tiny_artifact


def watcher_for(tmp_path, wait, monkeypatch):
    from stream_ae.registry import Registry
    from stream_ae.stream.serve import ModelWatcher
    from stream_ae.stream.settings import load_settings

    monkeypatch.setattr(ModelWatcher, "FIRST_CHECK_S", 0.02)
    settings = load_settings(env={"STREAM_AE_MODEL__WAIT_FOR_MODEL_S": wait},
                             overrides=[f"model.registry={tmp_path}", "model.deployment=prod", "model.device=cpu"])
    return ModelWatcher(settings), Registry(tmp_path)


def promote_later(registry, delay_s: float) -> threading.Thread:
    def promote():
        time.sleep(delay_s)
        registry.promote("prod", registry.publish(tiny_artifact(seed=3)))

    thread = threading.Thread(target=promote)
    thread.start()
    return thread


def test_without_a_wait_a_missing_first_model_stops_at_once_and_names_the_setting(tmp_path, monkeypatch):
    watcher, _ = watcher_for(tmp_path, "0", monkeypatch)
    started = time.monotonic()
    with pytest.raises(ConfigError, match="no version .*set model.wait_for_model_s to wait"):
        watcher.initial()
    assert time.monotonic() - started < 1.0


def test_it_waits_alive_and_not_ready_then_starts_on_the_promoted_version(tmp_path, monkeypatch):
    from stream_ae.stream.metrics import StreamMetrics
    from stream_ae.stream.ops import OpsServer

    watcher, registry = watcher_for(tmp_path, "inf", monkeypatch)   # "inf" from the environment: for good
    metrics, seen = StreamMetrics(), []
    port = free_port()
    with OpsServer(metrics, port, port, host="127.0.0.1", stale_after_s=0.5) as ops:
        ops.started_at -= 3600   # started long ago: only the waiting's own checks keep it alive

        def probe():
            while not metrics.waiting_for_model:
                time.sleep(0.01)
            time.sleep(0.6)   # past stale_after_s since the start of the wait
            seen.append((http_get(f"http://127.0.0.1:{port}/healthz"), http_get(f"http://127.0.0.1:{port}/readyz")))

        prober = threading.Thread(target=probe)
        prober.start()
        promoter = promote_later(registry, 1.2)
        scorer = watcher.initial(threading.Event(), metrics)
        promoter.join()
        prober.join()
    (live_status, _), (ready_status, ready_body) = seen[0]
    assert live_status == 200
    assert ready_status == 503 and json.loads(ready_body)["status"] == "waiting for a model"
    assert scorer.version == registry.current("prod") and watcher.version == scorer.version
    assert metrics.waiting_for_model is False


def test_a_finite_wait_ends_with_an_error_that_says_how_long_it_waited(tmp_path, monkeypatch):
    watcher, _ = watcher_for(tmp_path, "0.2", monkeypatch)
    with pytest.raises(ConfigError, match=r"after waiting 0.2 s \(model.wait_for_model_s\); promote one first"):
        watcher.initial(threading.Event())


def test_a_stop_while_waiting_returns_none_without_an_error(tmp_path, monkeypatch):
    watcher, _ = watcher_for(tmp_path, "inf", monkeypatch)
    stop = threading.Event()
    threading.Timer(0.2, stop.set).start()
    started = time.monotonic()
    assert watcher.initial(stop) is None
    assert time.monotonic() - started < 2.0


def test_a_registry_that_cannot_be_read_while_waiting_is_tried_again(tmp_path, monkeypatch, caplog):
    watcher, registry = watcher_for(tmp_path, "inf", monkeypatch)
    real, calls = registry.current, []

    def flaky(deployment):
        calls.append(deployment)
        if len(calls) in (2, 3):
            raise OSError("stale file handle")
        return real(deployment)

    monkeypatch.setattr(watcher.registry, "current", flaky)
    promoter = promote_later(registry, 0.3)
    with caplog.at_level("WARNING", logger="stream_ae.stream.serve"):
        scorer = watcher.initial(threading.Event())
    promoter.join()
    assert scorer.version == real("prod")
    assert "stale file handle" in caplog.text and "waiting" in caplog.text


def test_serve_answers_healthz_while_it_waits_and_exits_0_on_stop(tmp_path, monkeypatch):
    from stream_ae.stream import serve as serve_module

    monkeypatch.setattr(serve_module, "check_broker", lambda settings: None)
    monkeypatch.setattr(serve_module.ModelWatcher, "FIRST_CHECK_S", 0.05)
    port, stop, seen = free_port(), threading.Event(), []

    def probe():   # the port opens before the first registry check: "not ready" until the wait begins
        for _ in range(200):
            try:
                seen.append(http_get(f"http://127.0.0.1:{port}/readyz"))
                if json.loads(seen[-1][1])["waiting_for_model"]:
                    break
            except OSError:
                pass
            time.sleep(0.05)
        stop.set()

    prober = threading.Thread(target=probe)
    prober.start()
    status = serve_module.serve(None, [f"model.registry={tmp_path}", "model.deployment=prod",
                                       "model.wait_for_model_s=inf", f"ops.metrics_port={port}",
                                       f"ops.health_port={port}"], stop=stop)
    prober.join()
    assert status == 0
    assert seen and all(code == 503 for code, _ in seen) and json.loads(seen[-1][1])["waiting_for_model"] is True


def test_before_its_first_poll_it_stays_alive_through_a_slow_model_load_for_the_start_grace():
    """The health port opens before the model loads: a download or GPU warm-up longer than
    stale_after_s must not fail liveness (a restart mid-load would be a crash loop)."""
    from stream_ae.stream.metrics import StreamMetrics
    from stream_ae.stream.ops import START_GRACE_S, liveness

    metrics, now = StreamMetrics(), time.time()
    assert liveness(metrics, now - 75, stale_after_s=60)[0]                      # loading for 75 s
    assert not liveness(metrics, now - START_GRACE_S - 1, stale_after_s=60)[0]  # a load that hangs
    metrics.waiting(False)                                                       # a first model came just now
    assert liveness(metrics, now - 10 * START_GRACE_S, stale_after_s=60)[0]
    metrics.last_poll = now - 61                                                 # running: polls count alone
    assert not liveness(metrics, now, stale_after_s=60)[0]


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_a_settings_error_is_a_log_line_too_in_the_format_asked_for(tmp_path, capsys, fmt):
    """Before: only the CLI's plain line; a JSON log pipeline dropped why the service did not start."""
    import logging

    from stream_ae.stream.serve import serve

    config = tmp_path / "s.toml"
    config.write_text(f'[ops]\nlog_format = "{fmt}"\n[alerts]\nk = 9\nn = 5\n')
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    try:
        with pytest.raises(ConfigError, match="alerts.k"):
            serve(str(config), [])
    finally:
        root.handlers[:], root.level = saved
    line = capsys.readouterr().err.strip().splitlines()[-1]
    if fmt == "json":
        record = json.loads(line)
        assert record["level"] == "ERROR" and "cannot start" in record["msg"] and "alerts.k (9)" in record["msg"]
    else:
        assert "cannot start" in line and "alerts.k (9)" in line and not line.startswith("{")
