"""The stream's watch on its own scores: drift becomes a metric, a log event and a retrain marker.

One ADWIN detector over the scores of the running model (per model, not per entity, so
memory stays flat however many entities there are), fed only windows the threshold judged
normal: an anomaly is not drift. A shift is ADWIN's mean log score leaving the level the model
started from by ``[drift] min_shift`` (0.2 by default; see :class:`~stream_ae.drift.DriftMonitor`:
over months of scores, ADWIN alone reports every daily cycle). When there is one, the runner

* counts it in ``stream_ae_drift_events_total{direction}``,
* logs a structured ``drift`` event (JSON logs carry its fields), and
* with ``model.deployment``, writes the marker ``drift/<deployment>.json`` in the registry
  that makes ``python -m jobs.retrain --if-drift`` retrain early.

ADWIN costs about 10 µs a score, as much as scoring the window: each batch feeds it an evenly
spaced sample of at most ``[drift] sample_per_batch`` normal scores (an unbiased sample of the
same distribution), which keeps the watch under 1 µs a window. ``[drift] enabled = false``
turns the watch off.

A hot reload starts a fresh detector: a new model's scores have other units.

The detector's state goes into every checkpoint (:meth:`DriftWatch.state`, in each assigned
partition's replay-position record, ``checkpoint.py``), and a consumer that starts takes it
back (:meth:`DriftWatch.resume`) from the newest of its partitions' records written with the
model it runs. Without that, ADWIN's window, which is what lets it see a creep over weeks,
started again at every deploy or crash. A consumer that is already watching when a rebalance
gives it more partitions keeps its own state: the watch is per consumer, not per partition
(per partition, each would see a fraction of the scores and a fleet-wide shift would be
reported once per partition). A watch saved with other parameters is not restored; one saved
by another river version keeps its starting level while ADWIN starts afresh (both logged).
"""
from __future__ import annotations

import functools
import logging
from collections import deque

import numpy as np

from stream_ae.drift import DriftMonitor, report_drift
from stream_ae.errors import ConfigError

log = logging.getLogger(__name__)

EVENTS_KEPT = 100  # drift events a watch remembers (the metric counts them all)


class DriftWatch:
    """``observe(output, model_version)`` after each finished micro-batch."""

    def __init__(self, settings, metrics, monitor_factory=None):
        import river.drift  # noqa: F401 - ~1 s of imports (scipy): at start-up, not in the first batch

        d = settings.drift
        if monitor_factory is None:
            monitor_factory = functools.partial(DriftMonitor, delta=d.delta, min_shift=d.min_shift)
        self.enabled = d.enabled
        self.metrics = metrics
        self.registry = settings.model.registry if settings.model.deployment else None
        self.deployment = settings.model.deployment
        self._factory = monitor_factory
        self._monitor = monitor_factory()
        self._version: str | None = None
        self.sample_per_batch = int(d.sample_per_batch)
        self.events: deque = deque(maxlen=EVENTS_KEPT)  # the latest, for inspection: bounded over months

    def state(self) -> dict | None:
        """What a checkpoint keeps (JSON-safe, a few KB): the model version watched and the
        detector's state; None before the first batch."""
        if self._version is None:
            return None
        return {"model_version": self._version, "monitor": self._monitor.state_dict()}

    def resume(self, saved: list[tuple[float, dict | None]], model_version: str) -> bool:
        """Continue from the newest ``(written_at, state())`` saved with ``model_version``, if
        this watch has seen nothing yet; True if it did."""
        if self._version is not None:
            return False  # watching already: a rebalance added partitions
        mine = [(at, s) for at, s in saved if s and s.get("model_version") == model_version]
        if not mine:
            return False
        newest = max(mine, key=lambda pair: pair[0])[1]
        monitor = self._factory()
        try:
            monitor.load_state_dict(newest["monitor"])
        except (ConfigError, KeyError, TypeError, ValueError) as exc:
            log.warning("drift watch not restored, it starts afresh: %s", exc)
            return False
        if not getattr(monitor, "restored_exactly", True):
            log.warning("drift watch saved by another river version: its detector starts afresh")
        self._monitor, self._version = monitor, model_version
        return True

    def observe(self, out, model_version: str) -> list:
        """Feed one batch's scores; returns the drift events it caused (also recorded)."""
        if not self.enabled:
            return []
        if model_version != self._version:
            self._monitor, self._version = self._factory(), model_version
        normal = np.flatnonzero(~out.flags & np.isfinite(out.scores))  # (b,) an anomaly is not drift
        if not len(normal):
            return []
        if len(normal) > self.sample_per_batch:
            normal = normal[np.linspace(0, len(normal) - 1, self.sample_per_batch).astype(np.int64)]
        found = self._monitor.update_many(out.scores[normal], ts=out.end_ts[normal])
        self.metrics.drift_shift.set(self._monitor.shift())
        for event in found:
            self.metrics.drift.labels(event.direction).inc()
            # scores rising means the model fits worse (retrain); falling is worth a note only
            level = logging.WARNING if event.direction == "up" else logging.INFO
            log.log(level, "drift: model %s scores moved %s (mean log score %.3f -> %.3f)", model_version,
                        event.direction, event.mean_before, event.mean_after,
                        extra={"fields": {"event": "drift", "model_version": model_version, **event.to_dict()}})
            if self.registry and self.deployment and event.direction == "up":
                report_drift(self.registry, self.deployment, event)
        self.events.extend(found)
        return found
