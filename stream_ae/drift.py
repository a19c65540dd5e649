"""Drift of a score stream: the level of a model's normal scores over a day, against where it started.

A model that has gone stale shows it in its own scores: the reconstruction error of normal
windows creeps up (equipment ages, a sensor is replaced) or jumps (a new operating point).
What is *not* drift is the daily rhythm of a plant: most models reconstruct some hours of the
day better than others, so the scores rise and fall every day. A change detector over the raw
scores (river's ADWIN, which this module used until session 19) proves those swings real and
reports them: in the demo, three "drifts" in 13 hours of plant time, and, with ``--if-drift``,
a retrain for each.

:class:`DriftMonitor` judges the **level**: the mean log score (scores are heavy-tailed; one
huge score should not move it) over the last ``horizon_s`` of event time (a day by default, so
a daily cycle averages out), kept in ``buckets`` sums (24 an horizon: memory is flat however
long it runs). Each time a bucket closes, the level is compared with the key's **reference**:

* given (``reference=``): for a model, :func:`reference_level` of its normal validation
  windows, stored in the artifact at training (:func:`artifact_reference`);
* otherwise the level of the key's first full horizon.

An event is the level leaving the reference by ``min_shift`` (0.2: scores about 22 % higher or
18 % lower), judged only once a whole horizon has been seen; one event per excursion, which
ends when the level is back within ``min_shift / 2``. A step is reported within a fraction of
the horizon (the share of it that must hold the new level); a creep when it has added up. Windows
the threshold flagged are skipped: an anomaly is not drift. So is a score stamped more than a
horizon past its batch's median time (one source's clock fault would otherwise close every
bucket at once and leave the monitor blind to the scores after it).

The state is a few hundred bytes of JSON per key and restores exactly.

:func:`report_drift` is the one edge function here: it writes the marker file the retrain
job reads (``drift/<deployment>.json`` in the registry root) to run early.

Examples
--------
>>> import numpy as np
>>> hour = 3600 * 10**9
>>> ts = np.arange(24 * 60) * hour // 10          # 6 days, a score every 6 minutes
>>> level = np.where(ts >= 3 * 24 * hour, 0.5, 0.0)  # the level steps up on day 4
>>> events = DriftMonitor(reference=0.0).update_many(np.exp(level), keys="pump-a", ts=ts)
>>> [(e.key, e.direction, round(e.mean_after - e.reference, 2)) for e in events]
[('pump-a', 'up', 0.21)]
>>> (events[0].ts - 3 * 24 * hour) / hour             # hours after the step: 10 of 24 at +0.5
10.0
"""
from __future__ import annotations

import datetime as dt
import math
from dataclasses import asdict, dataclass, field

import numpy as np

from stream_ae.errors import ConfigError

STATE_FORMAT = 2          # 1: river's ADWIN (before session 19), not restored
MODEL_KEY = "__model__"   # the key used when update_many is given no entity keys
FLOOR = 1e-12             # scores can be 0: the log is taken of max(score, FLOOR)
REFERENCE_METRIC = "val_log_score_mean"  # where an artifact keeps reference_level (training.metrics)
DAY_S = 86_400.0


def reference_level(scores, threshold: float | None = None, floor: float = FLOOR) -> float:
    """The level a model starts from: the mean log score of the validation windows its
    threshold calls normal (score <= ``threshold``; all when it is None or not finite).

    The validation windows span the end of the training history, every hour of its days,
    where the first scores a stream sees cover one part of one day.

    >>> round(reference_level([1.0, 1.0, 100.0], threshold=10.0), 6)
    0.0
    """
    x = np.asarray(scores, dtype=np.float64).reshape(-1)
    x = x[np.isfinite(x)]
    if threshold is not None and math.isfinite(threshold):
        x = x[x <= threshold]
    if not len(x):
        raise ValueError("reference_level needs at least one finite score at or below the threshold")
    return float(np.mean(np.log(np.maximum(x, floor))))


@dataclass(frozen=True)
class DriftEvent:
    """``key``'s level left its reference by at least ``min_shift``.

    ``index``: how many scores of ``key`` the monitor had seen; ``ts``: the end (ns) of the
    horizon judged, the moment its last bucket closed; ``mean_before``: the reference (also in
    ``reference``); ``mean_after``: the level, the mean log score over the horizon; ``direction``:
    ``"up"`` (scores rose: the model fits worse) or ``"down"``.
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


@dataclass
class _Level:
    """One key: the sums of its buckets (index -> [sum, count]) and where it stands."""

    buckets: dict[int, list] = field(default_factory=dict)
    open: int | None = None       # the bucket the newest scores go to
    first: int | None = None      # the first bucket this key ever had
    reference: float | None = None
    side: int = 0                 # -1 / 0 / 1: below, near or above the reference
    seen: int = 0
    events: int = 0

    def level(self, upto: int, n: int, min_values: int) -> float:
        """Mean over the buckets [upto - n, upto); NaN with fewer than ``min_values`` values."""
        total = count = 0.0
        for b, (s, c) in self.buckets.items():
            if upto - n <= b < upto:
                total, count = total + s, count + c
        return total / count if count >= min_values else math.nan


class DriftMonitor:
    """Per key, the mean log score over a sliding horizon of event time against a reference.

    Parameters
    ----------
    min_shift : float
        How far (in mean log score) the level must leave the reference to be drift.
    horizon_s : float
        Seconds of event time the level is the mean over; at least the period of the plant's
        rhythm (a day by default), so the rhythm averages out.
    buckets : int
        Sums kept per horizon; the level is judged each time one closes.
    reference : float, optional
        Every key's starting level (:func:`reference_level` of the model's validation scores).
        None: the level of a key's first full horizon.
    min_values : int
        Fewest scores a level is judged over (fewer in a horizon: not judged).
    floor : float
        Lower bound applied before the log.
    """

    def __init__(self, min_shift: float = 0.2, horizon_s: float = DAY_S, buckets: int = 24,
                 reference: float | None = None, min_values: int = 200, floor: float = FLOOR):
        if not min_shift > 0.0:
            raise ConfigError(f"DriftMonitor min_shift must be > 0, got {min_shift}")
        if not horizon_s > 0.0 or buckets < 1:
            raise ConfigError(f"DriftMonitor needs horizon_s > 0 and buckets >= 1, got {horizon_s}, {buckets}")
        if reference is not None and not math.isfinite(reference):
            raise ConfigError(f"DriftMonitor reference must be a finite level, got {reference}")
        if not floor > 0.0 or min_values < 1:
            raise ConfigError(f"DriftMonitor needs floor > 0 and min_values >= 1, got {floor}, {min_values}")
        self.min_shift = float(min_shift)
        self.horizon_s = float(horizon_s)
        self.buckets = int(buckets)
        self.reference = None if reference is None else float(reference)
        self.min_values = int(min_values)
        self.floor = float(floor)
        self._bucket_ns = max(1, int(round(self.horizon_s * 1e9 / self.buckets)))
        self._keys: dict[str, _Level] = {}

    def __repr__(self) -> str:
        return (f"DriftMonitor(min_shift={self.min_shift}, horizon_s={self.horizon_s:g}, keys={len(self._keys)}, "
                f"events={sum(k.events for k in self._keys.values())})")

    def params(self) -> dict:
        """What a saved state must have been built with."""
        return {"min_shift": self.min_shift, "horizon_s": self.horizon_s, "buckets": self.buckets,
                "reference": self.reference, "min_values": self.min_values, "floor": self.floor}

    def _key(self, key: str) -> _Level:
        k = self._keys.get(key)
        if k is None:
            k = self._keys[key] = _Level(reference=self.reference)
        return k

    def update_many(self, scores, keys=None, ts=None, flags=None) -> list[DriftEvent]:
        """Feed scores in stream order; returns the drift events they caused (often none).

        Parameters
        ----------
        scores : array-like (B,)
            Window scores. NaN / inf scores are skipped.
        keys : str or array-like (B,) of str, optional
            The entity of each score (one string: all the same). None: one stream for the model.
        ts : array-like (B,) of int
            Event time (ns) of each score: the horizon is event time, so a replay or a backfill
            judges the same as the live stream.
        flags : array-like (B,) of bool, optional
            Windows the threshold flagged as anomalous: skipped, never learned.
        """
        scores = np.asarray(scores, dtype=np.float64).reshape(-1)          # (B,)
        n = scores.shape[0]
        if ts is None:
            raise ConfigError("DriftMonitor.update_many needs each score's event time (ts, ns)")
        stamps = np.asarray(ts, dtype=np.int64).reshape(-1)                # (B,)
        if stamps.shape[0] != n:
            raise ConfigError(f"update_many: {stamps.shape[0]} timestamps for {n} scores")
        if keys is None or isinstance(keys, str):
            key_list = [MODEL_KEY if keys is None else keys] * n
        else:
            key_list = [str(k) for k in keys]
            if len(key_list) != n:
                raise ConfigError(f"update_many: {len(key_list)} keys for {n} scores")
        skip = ~np.isfinite(scores)
        if flags is not None:
            skip |= np.asarray(flags, dtype=bool).reshape(-1)
        values = np.log(np.maximum(scores, self.floor))
        slots = stamps // self._bucket_ns
        fed = np.flatnonzero(~skip)
        # a score stamped more than a horizon past the batch's median time is a clock fault of one
        # source (a reading from 2099), not the stream's time: it would end every horizon at once
        # and leave the monitor blind to every later score. A whole batch that moves on (the
        # stream resuming after an outage) moves its median with it.
        median = int(np.median(slots[fed])) if len(fed) else 0
        events = []
        for i in fed:
            k, b = self._key(key_list[i]), int(slots[i])
            if b > max(median, k.open if k.open is not None else median) + self.buckets:
                continue
            if k.open is None:
                k.open = k.first = b
            elif b > k.open:
                event = self._close(key_list[i], k, b)
                if event is not None:
                    events.append(event)
            if b < k.open - self.buckets:
                continue  # later than the horizon: nothing it could still change
            k.seen += 1
            cell = k.buckets.setdefault(b, [0.0, 0])
            cell[0] += float(values[i])
            cell[1] += 1
        return events

    def _close(self, key: str, k: _Level, b: int) -> DriftEvent | None:
        """Bucket ``k.open`` (and any before ``b``) closed: judge the horizon that ends at ``b``."""
        k.open = b
        for old in [o for o in k.buckets if o < b - self.buckets]:
            del k.buckets[old]
        if not k.buckets:  # a gap of a whole horizon (an outage): nothing before it counts any more, so
            k.first = b    # wait for a whole horizon again; judged on its first hours, a daily rhythm was drift
        if b - k.first < self.buckets:
            return None  # less than a whole horizon seen
        level = k.level(b, self.buckets, self.min_values)
        if math.isnan(level):
            return None
        if k.reference is None:
            k.reference = level  # the first full horizon is where this key started
        shift, last = level - k.reference, k.side
        if abs(shift) >= self.min_shift:
            k.side = 1 if shift > 0 else -1
        elif abs(shift) < self.min_shift / 2:  # hysteresis: an excursion ends well inside the band
            k.side = 0
        if k.side == 0 or k.side == last:
            return None
        k.events += 1
        return DriftEvent(key=key, index=k.seen, ts=b * self._bucket_ns, mean_before=k.reference,
                          mean_after=level, direction="up" if shift > 0 else "down", reference=k.reference)

    def shift(self, key: str = MODEL_KEY) -> float:
        """``key``'s level over the closed buckets of the latest horizon minus its reference
        (NaN while either is unknown); a creep shows here before it reaches ``min_shift``."""
        k = self._keys.get(key)
        if k is None or k.open is None or k.reference is None:
            return math.nan
        return k.level(k.open, self.buckets, 1) - k.reference

    def counts(self) -> dict[str, int]:
        """Drift events reported so far, per key."""
        return {key: k.events for key, k in self._keys.items()}

    def forget(self, key: str) -> None:
        """Drop one key (an evicted entity)."""
        self._keys.pop(key, None)

    # -- state -------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """JSON-safe state: parameters and each key's bucket sums and standing."""
        keys = {key: {"buckets": [[b, s, c] for b, (s, c) in sorted(k.buckets.items())], "open": k.open,
                      "first": k.first, "reference": k.reference, "side": k.side, "seen": k.seen,
                      "events": k.events}
                for key, k in self._keys.items()}
        return {"format": STATE_FORMAT, "params": self.params(), "keys": keys}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict` exactly; ConfigError for another format or other parameters."""
        if state.get("format") != STATE_FORMAT:
            raise ConfigError(f"drift state format {state.get('format')!r} is not {STATE_FORMAT} "
                              "(format 1 was river's ADWIN): the watch starts afresh")
        if state.get("params") != self.params():
            raise ConfigError(f"drift state was saved with {state.get('params')}, this monitor has "
                              f"{self.params()}; build the monitor with the saved parameters")
        keys = {}
        for key, d in state.get("keys", {}).items():
            keys[key] = _Level(buckets={int(b): [float(s), int(c)] for b, s, c in d["buckets"]},
                               open=d["open"], first=d["first"], reference=d["reference"],
                               side=int(d["side"]), seen=int(d["seen"]), events=int(d["events"]))
        self._keys = keys


def artifact_reference(artifact) -> float | None:
    """The starting level stored in ``artifact`` at training (None for one trained before
    stream_ae stored it: the monitor then takes the level of its first full horizon)."""
    value = ((artifact.training or {}).get("metrics") or {}).get(REFERENCE_METRIC)
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


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

