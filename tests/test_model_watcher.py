"""The hot-reload watcher without a broker: a failed load is retried, a slow load is never
overtaken by a newer one, and a registry that cannot be read or written does not stop the stream."""

from __future__ import annotations

import threading
import time

import pytest

from stream_ae.registry import Registry
from stream_ae.stream.metrics import StreamMetrics
from stream_ae.stream.serve import ModelWatcher
from stream_ae.stream.settings import load_settings
from test_registry import tiny_artifact


@pytest.fixture
def deployed(tmp_path):
    reg = Registry(tmp_path / "models")
    versions = [reg.publish(tiny_artifact(seed)) for seed in range(3)]
    reg.promote("prod", versions[0])
    settings = load_settings(env={}, overrides=[f"model.registry={tmp_path / 'models'}", "model.deployment=prod",
                                                "model.device=cpu"])
    return reg, versions, settings


def _until(predicate, timeout_s: float = 30.0):
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_a_failed_load_is_tried_again_later_and_counted(deployed, monkeypatch):
    """A download that timed out once used to blacklist the version for the life of the process."""
    reg, (v1, v2, _), settings = deployed
    watcher = ModelWatcher(settings)
    watcher.initial()
    watcher.metrics = StreamMetrics()
    served = []
    watcher.on_ready = lambda scorer: served.append(scorer.version)
    real, calls = reg.artifact_path, []

    def flaky(version):
        calls.append(version)
        if len(calls) == 1:
            raise OSError("GET timed out")
        return real(version)

    monkeypatch.setattr(watcher.registry, "artifact_path", flaky)
    reg.promote("prod", v2)
    watcher()
    _until(lambda: watcher._loading is None and calls)
    assert served == [] and watcher.version == v1
    assert watcher.metrics.sample("stream_ae_model_reload_failures_total") == 1.0
    watcher()   # before the retry time: not tried
    assert len(calls) == 1
    monkeypatch.setattr(watcher, "RETRY_S", 0.0)
    watcher._failed[v2] = (0.0, 0.0)   # the retry time has come
    watcher()
    _until(lambda: served == [v2])
    assert watcher.version == v2 and len(calls) == 2


def test_a_refused_version_is_tried_at_once_when_the_pointer_moves_on(deployed):
    reg, (v1, v2, v3), settings = deployed
    incompatible = reg.publish(tiny_artifact(9, channels=("a", "b", "c")))
    watcher = ModelWatcher(settings)
    watcher.initial()
    served = []
    watcher.on_ready = lambda scorer: served.append(scorer.version)
    reg.promote("prod", incompatible)
    watcher()
    _until(lambda: watcher._loading is None and incompatible in watcher._failed)
    reg.promote("prod", v3)
    watcher()
    _until(lambda: served == [v3])


def test_a_slow_handover_is_not_overtaken_by_a_newer_version(deployed):
    """The watcher used to mark a load done before handing its scorer over; a newer version
    loaded in that gap was then replaced by the older one, and the watcher believed it served
    the newer one."""
    reg, (v1, v2, v3), settings = deployed
    watcher = ModelWatcher(settings)
    watcher.initial()
    gate, served = threading.Event(), []

    def slow_handover(scorer):
        if scorer.version == v2:
            gate.wait(10)
        served.append(scorer.version)

    watcher.on_ready = slow_handover
    reg.promote("prod", v2)
    watcher()
    _until(lambda: watcher._loading == v2 and watcher.registry.current("prod") == v2)
    reg.promote("prod", v3)
    time.sleep(0.2)   # v2's scorer is built and waits in its handover
    watcher()         # the poll loop checks meanwhile: no second load while v2's is not handed over
    gate.set()
    _until(lambda: watcher._loading is None and served == [v2])
    watcher()
    _until(lambda: served == [v2, v3])
    assert watcher.version == v3


def test_a_drift_marker_that_cannot_be_written_does_not_stop_the_stream(deployed, monkeypatch, caplog):
    """A consumer whose registry is read-only (or whose object store is down) used to stop at
    the first drift event, and again after each restart (the replay finds the same event)."""
    import numpy as np

    from stream_ae.drift import DriftEvent
    from stream_ae.stream import drift_watch

    _, _, settings = deployed
    event = DriftEvent(key="model", index=10, ts=0, mean_before=0.0, mean_after=1.0, direction="up")

    class Shifted:
        def update_many(self, scores, ts, flags=None):
            return [event]

        def shift(self):
            return 1.0

        def starved(self):
            return False

    def read_only(*args, **kwargs):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(drift_watch, "report_drift", read_only)
    watch = drift_watch.DriftWatch(settings, StreamMetrics(), monitor_factory=lambda reference: Shifted())
    out = type("Out", (), {"flags": np.zeros(3, bool), "scores": np.ones(3), "end_ts": np.arange(3)})()
    assert watch.observe(out, "v") == [event]
    assert "cannot write the drift marker" in caplog.text
