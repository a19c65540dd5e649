"""Drift of a score stream: one ADWIN detector per entity (or per model), no I/O in the detector.

A model that has gone stale shows it in its own scores: the reconstruction error of normal
windows creeps up (equipment ages, a sensor is replaced) or jumps (a new operating point).
:class:`DriftMonitor` runs river's ADWIN (adaptive windowing) over each key's scores and
reports a :class:`DriftEvent` when the mean of the recent scores differs from the older
ones by more than ADWIN's bound allows. It watches ``log(score)`` by default (scores are
heavy-tailed; one huge score should not look like a level change), and skips windows the
threshold flagged: an anomaly is not drift (river's ``protect_anomaly_detector`` idea).

State is JSON-safe and restores exactly: river's ADWIN keeps its window in a Rust object
whose pickled bytes (``__getstate__``) are stored base64-encoded together with the river
version. Those bytes are river's internal format, so a state written by another river
version is **not** restored: the detectors start afresh (``restored_exactly`` is False) and
relearn from the next scores; the per-key counters are kept.

:func:`report_drift` is the one edge function here: it writes the marker file the retrain
job reads (``drift/<deployment>.json`` in the registry root) to run early.

Examples
--------
>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> monitor = DriftMonitor()
>>> monitor.update_many(rng.lognormal(0.0, 0.2, 3000), keys="pump-a")
[]
>>> events = monitor.update_many(rng.lognormal(1.0, 0.2, 3000), keys="pump-a")
>>> events[0].key, events[0].direction, events[0].index > 3000
('pump-a', 'up', True)
"""
from __future__ import annotations

import base64
import datetime as dt
import math
from dataclasses import asdict, dataclass

import numpy as np

from stream_ae.errors import ConfigError

STATE_FORMAT = 1
MODEL_KEY = "__model__"   # the key used when update_many is given no entity keys


@dataclass(frozen=True)
class DriftEvent:
    """ADWIN found that ``key``'s recent scores differ from its older ones.

    ``index``: how many scores of ``key`` the monitor had seen, this one included;
    ``ts``: the score's time (ns) when given; ``mean_before`` / ``mean_after``: the mean of the
    watched value (log score by default) over ADWIN's window before and after it dropped
    the old part; ``direction``: ``"up"`` (scores rose: the model fits worse) or ``"down"``.
    With ``min_shift`` (see :class:`DriftMonitor`), ``reference`` is the key's starting level,
    ``mean_before`` equals it, and ``mean_after`` is ADWIN's mean, which has left it by at
    least ``min_shift``.
    """

    key: str
    index: int
    ts: int | None
    mean_before: float
    mean_after: float
    direction: str
    reference: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "DriftEvent":
        return cls(**d)


def _river_version() -> str:
    import river

    return str(river.__version__)


class DriftMonitor:
    """One ADWIN per key over a score stream.

    Parameters
    ----------
    delta : float
        ADWIN's significance: smaller means fewer false alarms and later detection.
    clock : int
        ADWIN checks for a change every ``clock`` scores.
    min_window_length : int
        Smallest sub-window ADWIN compares.
    grace_period : int
        Scores of a key seen before ADWIN may report anything.
    log : bool
        Watch ``log(max(score, floor))`` rather than the raw score.
    floor : float
        Lower bound applied before the log (scores can be 0).
    min_shift : float
        0 (default): every change ADWIN finds is an event. Above 0: an event is ADWIN's mean
        (over its adaptive window: the long-run level while nothing changes, the recent one
        after a change; judged only over at least ``grace_period`` values) leaving the key's
        *reference*, the mean of its first ``grace_period`` watched values (the level the
        model started from), by at least ``min_shift``; one event per excursion, which ends
        when the mean is back within ``min_shift / 2``. Over
        millions of scores ADWIN finds changes far too small to matter: a 10 % daily cycle in
        the scores gave 53 events in 1 M scores, each a shift of 0.001-0.005 in the mean log
        score. A slow creep is reported when it has added up to ``min_shift``.
    """

    def __init__(self, delta: float = 0.002, clock: int = 32, min_window_length: int = 5,
                 grace_period: int = 200, log: bool = True, floor: float = 1e-12, min_shift: float = 0.0):
        if not 0.0 < delta < 1.0:
            raise ConfigError(f"DriftMonitor delta must lie in (0, 1), got {delta}")
        if clock < 1 or min_window_length < 1 or grace_period < 0:
            raise ConfigError("DriftMonitor needs clock >= 1, min_window_length >= 1 and grace_period >= 0")
        if not floor > 0.0:
            raise ConfigError(f"DriftMonitor floor must be > 0, got {floor}")
        if not min_shift >= 0.0:
            raise ConfigError(f"DriftMonitor min_shift must be >= 0, got {min_shift}")
        self.delta = float(delta)
        self.clock = int(clock)
        self.min_window_length = int(min_window_length)
        self.grace_period = int(grace_period)
        self.log = bool(log)
        self.floor = float(floor)
        self.min_shift = float(min_shift)
        self._baseline = max(self.grace_period, 1)  # values in a starting level; fewest ADWIN is judged over
        self.restored_exactly = True
        self._detectors: dict[str, object] = {}
        self._seen: dict[str, int] = {}
        self._events: dict[str, int] = {}
        self._start: dict[str, list] = {}  # key -> [sum, count] of its first values, then [reference, -1]
        self._side: dict[str, int] = {}    # key -> -1 / 0 / 1: below, near or above its reference

    def __repr__(self) -> str:
        return f"DriftMonitor(delta={self.delta}, keys={len(self._detectors)}, events={sum(self._events.values())})"

    def params(self) -> dict:
        return {"delta": self.delta, "clock": self.clock, "min_window_length": self.min_window_length,
                "grace_period": self.grace_period, "log": self.log, "floor": self.floor,
                "min_shift": self.min_shift}

    def _detector(self, key: str):
        det = self._detectors.get(key)
        if det is None:
            from river.drift import ADWIN

            det = self._detectors[key] = ADWIN(delta=self.delta, clock=self.clock,
                                               min_window_length=self.min_window_length,
                                               grace_period=self.grace_period)
            self._seen.setdefault(key, 0)
            self._events.setdefault(key, 0)
            self._start.setdefault(key, [0.0, 0])
            self._side.setdefault(key, 0)
        return det

    def _reference(self, key: str, value: float) -> float | None:
        """The key's starting level: the mean of its first ``grace_period`` values (None before)."""
        start = self._start[key]
        if 0 <= start[1] < self._baseline:
            start[0] += value
            start[1] += 1
            if start[1] == self._baseline:
                start[:] = [start[0] / start[1], -1]
        return start[0] if start[1] < 0 else None

    def _left_reference(self, key: str, level: float, reference: float) -> bool:
        """Whether ``level`` has just left ``reference`` by ``min_shift`` (an excursion starts)."""
        shift, last = level - reference, self._side[key]
        if abs(shift) >= self.min_shift:
            side = 1 if shift > 0 else -1
        else:  # hysteresis: an excursion ends only well inside the band
            side = 0 if abs(shift) < self.min_shift / 2 else last
        self._side[key] = side
        return side != 0 and side != last

    def update_many(self, scores, keys=None, ts=None, flags=None) -> list[DriftEvent]:
        """Feed scores in stream order; returns the drift events they caused (often none).

        Parameters
        ----------
        scores : array-like (B,)
            Window scores. NaN / inf scores are skipped.
        keys : str or array-like (B,) of str, optional
            The entity of each score (one string: all the same). None: one stream for the model.
        ts : array-like (B,) of int, optional
            Time (ns) of each score, copied into the events.
        flags : array-like (B,) of bool, optional
            Windows the threshold flagged as anomalous: skipped, never learned.
        """
        scores = np.asarray(scores, dtype=np.float64).reshape(-1)          # (B,)
        n = scores.shape[0]
        if keys is None or isinstance(keys, str):
            key_list = [MODEL_KEY if keys is None else keys] * n
        else:
            key_list = [str(k) for k in keys]
            if len(key_list) != n:
                raise ConfigError(f"update_many: {len(key_list)} keys for {n} scores")
        stamps = None if ts is None else np.asarray(ts, dtype=np.int64).reshape(-1)
        skip = ~np.isfinite(scores)
        if flags is not None:
            skip |= np.asarray(flags, dtype=bool).reshape(-1)
        values = np.log(np.maximum(scores, self.floor)) if self.log else scores
        events = []
        for i in np.flatnonzero(~skip):
            key = key_list[i]
            det = self._detector(key)
            before = det.estimation
            value = float(values[i])
            det.update(value)
            self._seen[key] += 1
            reference = self._reference(key, value)
            if self.min_shift > 0.0:
                # ADWIN's mean over fewer values (just after a cut) is too noisy to judge by
                if reference is None or det.width < self._baseline \
                        or not self._left_reference(key, det.estimation, reference):
                    continue
                before, after = reference, det.estimation
            elif det.drift_detected:
                after = det.estimation
            else:
                continue
            self._events[key] += 1
            events.append(DriftEvent(key=key, index=self._seen[key], ts=None if stamps is None else int(stamps[i]),
                                     mean_before=float(before), mean_after=float(after),
                                     direction="up" if after > before else "down",
                                     reference=reference if self.min_shift > 0.0 else None))
        return events

    def shift(self, key: str = MODEL_KEY) -> float:
        """``key``'s level (ADWIN's mean of the watched value) minus its starting level (the
        reference of ``min_shift``); NaN until the starting level is known."""
        det, start = self._detectors.get(key), self._start.get(key)
        if det is None or start is None or start[1] >= 0:
            return math.nan
        return float(det.estimation) - start[0]

    def counts(self) -> dict[str, int]:
        """Drift events reported so far, per key."""
        return dict(self._events)

    def forget(self, key: str) -> None:
        """Drop one key's detector (an evicted entity)."""
        for d in (self._detectors, self._seen, self._events, self._start, self._side):
            d.pop(key, None)

    # -- state -------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """JSON-safe state: parameters, river version, each key's ADWIN bytes (base64) and counters."""
        keys = {}
        for key, det in self._detectors.items():
            keys[key] = {"adwin": base64.b64encode(det._helper.__getstate__()).decode("ascii"),
                         "drift_detected": bool(det.drift_detected),
                         "seen": self._seen[key], "events": self._events[key],
                         "start": list(self._start[key]), "side": self._side[key]}
        return {"format": STATE_FORMAT, "river": _river_version(), "params": self.params(), "keys": keys}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`; exact with the same river version, else detectors restart."""
        if state.get("format") != STATE_FORMAT:
            raise ConfigError(f"drift state format {state.get('format')!r} is unknown (expected {STATE_FORMAT})")
        if state.get("params") != self.params():
            raise ConfigError(f"drift state was saved with {state.get('params')}, this monitor has "
                              f"{self.params()}; build the monitor with the saved parameters")
        exact = state.get("river") == _river_version()
        self._detectors, self._seen, self._events, self._start, self._side = {}, {}, {}, {}, {}
        for key, d in state.get("keys", {}).items():
            det = self._detector(key)
            if exact:
                det._helper.__setstate__(base64.b64decode(d["adwin"]))
                det._drift_detected = bool(d.get("drift_detected", False))
            self._seen[key] = int(d["seen"])
            self._events[key] = int(d["events"])
            if "start" in d:  # the reference survives even when ADWIN's bytes cannot be read
                self._start[key] = [float(d["start"][0]), int(d["start"][1])]
                self._side[key] = int(d["side"])
        self.restored_exactly = exact


# -- the edge: the marker the retrain job reads ----------------------------------------------

def drift_marker_path(deployment: str) -> str:
    """Path of a deployment's drift marker, relative to the registry root."""
    return f"drift/{deployment}.json"


def report_drift(registry_root, deployment: str, event: DriftEvent | dict | None = None,
                 at: dt.datetime | None = None) -> dict:
    """Write ``drift/<deployment>.json`` in the registry root: the retrain job runs early when it
    is newer than the last retrain (``jobs.retrain --schedule --if-drift``). Replaced whole.

    Returns the marker record (``deployment``, ``reported_at`` ISO UTC, ``event``).
    """
    from stream_ae.registry import Registry
    from stream_ae.retraining.job import write_json

    at = at or dt.datetime.now(dt.timezone.utc)
    if isinstance(event, DriftEvent):
        event = event.to_dict()
    record = {"deployment": deployment, "reported_at": at.astimezone(dt.timezone.utc).isoformat(),
              "event": event}
    registry = Registry(registry_root)
    registry._pointer_path(deployment)   # validates the name the same way as deployments
    write_json(registry, drift_marker_path(deployment), record)
    return record

