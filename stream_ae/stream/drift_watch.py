"""The stream's watch on its own scores: drift becomes a metric, a log event and a retrain marker.

One :class:`~stream_ae.drift.DriftMonitor` over the scores of the running model (per model, not
per entity, so memory stays flat however many entities there are). Its level is of the windows
the threshold judged normal: an anomaly is not drift. Drift is the mean log score over the last
``[drift] horizon`` of event time (a day by default, so the plant's daily rhythm averages out)
leaving the level the model started from by ``[drift] min_shift`` (0.2). That level is the mean
log score of the model's normal validation windows, stored in its artifact at training
(:func:`~stream_ae.drift.artifact_reference`); an artifact trained before it was stored starts
from the level of its first full horizon. The windows the thresholds flagged are counted too:
when at least ``[drift] max_flagged`` (half) of a horizon's windows were flagged, the model's
thresholds are stuck above a new operating point they will never learn (they learn no flagged
window), or the fleet has had a fault as long as the horizon: an event of direction
``"flagged"``. It is a share of all the model's windows, so it takes most of the fleet; one
entity stuck shows as its alert, open the whole time. When there is an event, the runner

* counts it in ``stream_ae_drift_events_total{direction}``,
* logs a structured ``drift`` event (JSON logs carry its fields), and
* with ``model.deployment`` and an event "up" or "flagged", writes the marker
  ``drift/<deployment>.json`` in the registry that makes ``python -m jobs.retrain --if-drift``
  retrain early.

The level and the share are means, and an evenly spaced sample of at most ``[drift]
sample_per_batch`` scores a batch estimates them as well as every score, at a bounded cost a batch.
``[drift] enabled = false`` turns the watch off.

A hot reload starts a fresh monitor from the new model's reference: its scores have other units.

The monitor's state (a few hundred bytes) goes into every checkpoint (:meth:`DriftWatch.state`,
in each assigned partition's replay-position record, ``checkpoint.py``), and a consumer that
starts takes it back (:meth:`DriftWatch.resume`) from the newest of its partitions' records
written with the model it runs. Without that, every deploy or crash would start the day's
horizon again. A consumer that is already watching when a rebalance gives it more partitions
keeps its own state: the watch is per consumer, not per partition (per partition, each would
see a fraction of the scores and a fleet-wide shift would be reported once per partition). A
state saved with other parameters (or by the ADWIN watch before session 19) is not restored,
and the watch starts afresh (logged).
"""
from __future__ import annotations

import functools
import logging
from collections import deque

import numpy as np

from stream_ae.drift import DriftMonitor
from stream_ae.drift_marker import report_drift
from stream_ae.errors import ConfigError, StreamAEError
from stream_ae.stream.sections import parse_duration

log = logging.getLogger(__name__)

EVENTS_KEPT = 100  # drift events a watch remembers (the metric counts them all)


class DriftWatch:
    """``observe(output, model_version)`` after each finished micro-batch."""

    def __init__(self, settings, metrics, monitor_factory=None):
        d = settings.drift
        if monitor_factory is None:
            monitor_factory = functools.partial(DriftMonitor, min_shift=d.min_shift, max_flagged=d.max_flagged,
                                                horizon_s=parse_duration(d.horizon, "drift.horizon"))
        self.enabled = d.enabled
        self.metrics = metrics
        self.registry = settings.model.registry if settings.model.deployment else None
        self.deployment = settings.model.deployment
        self._factory = monitor_factory  # called with reference= (a model's starting level or None)
        self._monitor = monitor_factory(reference=None)
        self._version: str | None = None
        self.sample_per_batch = int(d.sample_per_batch)
        self._horizon, self._starved_told = d.horizon, False   # told once a consumer
        self.events: deque = deque(maxlen=EVENTS_KEPT)  # the latest, for inspection: bounded over months

    def state(self) -> dict | None:
        """What a checkpoint keeps (JSON-safe, a few hundred bytes): the model version watched and
        the monitor's state; None before the first batch."""
        if self._version is None:
            return None
        return {"model_version": self._version, "monitor": self._monitor.state_dict()}

    def resume(self, saved: list[tuple[float, dict | None]], model_version: str,
               reference: float | None = None) -> bool:
        """Continue from the newest ``(written_at, state())`` saved with ``model_version`` (and
        ``reference``, the model's starting level: :func:`~stream_ae.drift.artifact_reference`),
        if this watch has seen nothing yet; True if it did."""
        if self._version is not None:
            return False  # watching already: a rebalance added partitions
        mine = [(at, s) for at, s in saved if s and s.get("model_version") == model_version]
        if not mine:
            return False
        newest = max(mine, key=lambda pair: pair[0])[1]
        monitor = self._factory(reference=reference)
        try:
            monitor.load_state_dict(newest["monitor"])
        except (ConfigError, KeyError, TypeError, ValueError) as exc:
            log.warning("drift watch not restored, it starts afresh: %s", exc)
            return False
        self._monitor, self._version = monitor, model_version
        return True

    def observe(self, out, model_version: str, reference: float | None = None) -> list:
        """Feed one batch's scores from ``model_version``, whose starting level is ``reference``
        (:func:`~stream_ae.drift.artifact_reference`; None: the level of its first full horizon); returns
        the drift events they caused (also recorded)."""
        if not self.enabled:
            return []
        if model_version != self._version:
            self._monitor, self._version = self._factory(reference=reference), model_version
        scored = np.flatnonzero(np.isfinite(out.scores))  # (b,) flagged ones too: the monitor counts them
        if not len(scored):
            return []
        if len(scored) > self.sample_per_batch:
            scored = scored[np.linspace(0, len(scored) - 1, self.sample_per_batch).astype(np.int64)]
        found = self._monitor.update_many(out.scores[scored], ts=out.end_ts[scored], flags=out.flags[scored])
        self.metrics.drift_shift.set(self._monitor.shift())
        if self._monitor.starved() and not self._starved_told:
            self._starved_told = True
            log.warning("drift watch: a whole drift.horizon of %s held fewer than %d sampled scores, so the "
                        "watch judges nothing: lengthen drift.horizon (a day by default) or raise "
                        "drift.sample_per_batch (%d)", self._horizon, self._monitor.min_values, self.sample_per_batch,
                        extra={"fields": {"event": "drift_starved", "model_version": model_version}})
        for event in found:
            self.metrics.drift.labels(event.direction).inc()
            fields = {"event": "drift", "model_version": model_version, **event.to_dict()}
            if event.direction == "flagged":
                log.warning("drift: model %s flagged %.0f%% of the windows over the last drift.horizon: a new "
                            "operating point or a fault as long, which its thresholds never learn (they learn "
                            "no flagged window); a retrain on the recent history tells the two apart",
                            model_version, 100 * event.flagged_share, extra={"fields": fields})
            else:  # scores rising means the model fits worse (retrain); falling is worth a note only
                log.log(logging.WARNING if event.direction == "up" else logging.INFO,
                        "drift: model %s scores moved %s (mean log score %.3f -> %.3f)", model_version,
                        event.direction, event.mean_before, event.mean_after, extra={"fields": fields})
            if self.registry and self.deployment and event.direction != "down":
                self._mark(event)
        self.events.extend(found)
        return found

    def _mark(self, event) -> None:
        """Write the retrain marker; a registry that cannot be written (read-only in this pod, an
        object store down) costs the early retrain, never the stream: the metric and the log
        event above still say there was drift, and the next event writes it again."""
        try:
            report_drift(self.registry, self.deployment, event)
        except (OSError, StreamAEError) as exc:
            log.warning("cannot write the drift marker of deployment %r in the registry %s (%s): the "
                        "retrain job will not run early for this drift; the consumer needs write access "
                        "to the registry's drift/ folder", self.deployment, self.registry, exc)
