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
18 % lower), judged only once a whole horizon has been seen, and only over a horizon that holds
scores in about as many of its buckets as usual (all but an eighth of the most seen): an outage
inside it would leave the level of some hours of the rhythm, which is no drift. Two horizons in a
row with fewer make that the new usual (a plant now idle at night). One event per excursion, which
ends when the level is back within ``min_shift / 2``. A step is reported within a fraction of
the horizon (the share of it that must hold the new level); a creep when it has added up. Windows
the threshold flagged are left out of the level: an anomaly is not drift. So is a score stamped
more than a horizon past its batch's median time (one source's clock fault would otherwise close
every bucket at once and leave the monitor blind to the scores after it).

Flagged windows are counted, though. A threshold learns no window it flags, so a step larger than
its margin (a sensor swapped, a new operating point) is flagged for ever, and the level of the
windows it still calls normal stays where it was. When at least ``max_flagged`` of a whole
horizon's windows were flagged, the event's direction is ``"flagged"``: a new operating point or
a fault as long as the horizon, which a retrain on the recent history (judged on a holdout)
tells apart; its ``mean_after`` is the level of every window, flagged or not. One event per
such excursion, which ends when the share is back under ``max_flagged / 2``.

The state is a few hundred bytes of JSON per key and restores exactly.

:func:`~stream_ae.drift_marker.report_drift` (its own module: this one does no I/O) writes the
marker file the retrain job reads (``drift/<deployment>.json`` in the registry root) to run early.

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
>>> flagged = level > 0                              # a threshold that flags every window after the step
>>> events = DriftMonitor(reference=0.0).update_many(np.exp(level), keys="pump-a", ts=ts, flags=flagged)
>>> [(e.direction, e.flagged_share, (e.ts - 3 * 24 * hour) / hour) for e in events]
[('flagged', 0.5, 12.0)]
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from stream_ae.errors import ConfigError

STATE_FORMAT = 2          # 1: river's ADWIN (before session 19), not restored
MODEL_KEY = "__model__"   # the key used when update_many is given no entity keys
FLOOR = 1e-12             # scores can be 0: the log is taken of max(score, FLOOR)
REFERENCE_METRIC = "val_log_score_mean"  # where an artifact keeps reference_level (training.metrics)
DAY_S = 86_400.0
MAX_FLAGGED = 0.5         # share of a horizon's windows flagged that is a "flagged" event


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
    ``"up"`` (scores rose: the model fits worse), ``"down"``, or ``"flagged"`` (at least
    ``max_flagged`` of the horizon's windows were flagged; ``mean_after`` is then the level of
    every window, flagged or not); ``flagged_share``: the share of the horizon's windows flagged.
    """

    key: str
    index: int
    ts: int | None
    mean_before: float | None
    mean_after: float
    direction: str
    reference: float | None = None
    flagged_share: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "DriftEvent":
        return cls(**d)


@dataclass
class _Level:
    """One key: the sums of its buckets (index -> [sum, count, flagged sum, flagged count] of the
    log scores) and where it stands."""

    buckets: dict[int, list] = field(default_factory=dict)
    open: int | None = None       # the bucket the newest scores go to
    first: int | None = None      # the first bucket this key ever had
    reference: float | None = None
    side: int = 0                 # -1 / 0 / 1: below, near or above the reference
    seen: int = 0
    events: int = 0
    flagged: bool = False         # in a "flagged" excursion
    thin: int = 0                 # closes in a row whose horizon held too few values to judge (not saved)
    usual: int = 0                # most buckets holding scores in a horizon judged
    short: int = 0                # closes in a row not judged for holding scores in fewer buckets than usual

    def sums(self, upto: int, n: int) -> tuple[float, float, float, float]:
        """The four sums over the buckets [upto - n, upto)."""
        total = [0.0, 0.0, 0.0, 0.0]
        for b, cell in self.buckets.items():
            if upto - n <= b < upto:
                for j in range(4):
                    total[j] += cell[j]
        return total[0], total[1], total[2], total[3]

    def level(self, upto: int, n: int, min_values: int) -> float:
        """Mean of the unflagged values over the buckets [upto - n, upto); NaN with fewer than
        ``min_values`` of them."""
        total, count, _, _ = self.sums(upto, n)
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
        Fewest scores a level (or a share of flagged windows) is judged over (fewer in a horizon:
        not judged).
    floor : float
        Lower bound applied before the log.
    max_flagged : float
        Share of a horizon's windows flagged that is reported (direction ``"flagged"``).
    """

    def __init__(self, min_shift: float = 0.2, horizon_s: float = DAY_S, buckets: int = 24,
                 reference: float | None = None, min_values: int = 200, floor: float = FLOOR,
                 max_flagged: float = MAX_FLAGGED):
        if not min_shift > 0.0:
            raise ConfigError(f"DriftMonitor min_shift must be > 0, got {min_shift}")
        if not horizon_s > 0.0 or buckets < 1:
            raise ConfigError(f"DriftMonitor needs horizon_s > 0 and buckets >= 1, got {horizon_s}, {buckets}")
        if reference is not None and not math.isfinite(reference):
            raise ConfigError(f"DriftMonitor reference must be a finite level, got {reference}")
        if not floor > 0.0 or min_values < 1:
            raise ConfigError(f"DriftMonitor needs floor > 0 and min_values >= 1, got {floor}, {min_values}")
        if not 0.0 < max_flagged <= 1.0:
            raise ConfigError(f"DriftMonitor max_flagged is a share of windows, in (0, 1], got {max_flagged}")
        self.min_shift = float(min_shift)
        self.horizon_s = float(horizon_s)
        self.buckets = int(buckets)
        self.reference = None if reference is None else float(reference)
        self.min_values = int(min_values)
        self.floor = float(floor)
        self.max_flagged = float(max_flagged)
        self._bucket_ns = max(1, int(round(self.horizon_s * 1e9 / self.buckets)))
        self._keys: dict[str, _Level] = {}

    def __repr__(self) -> str:
        return (f"DriftMonitor(min_shift={self.min_shift}, horizon_s={self.horizon_s:g}, keys={len(self._keys)}, "
                f"events={sum(k.events for k in self._keys.values())})")

    def params(self) -> dict:
        """What a saved state must have been built with."""
        return {"min_shift": self.min_shift, "horizon_s": self.horizon_s, "buckets": self.buckets,
                "reference": self.reference, "min_values": self.min_values, "floor": self.floor,
                "max_flagged": self.max_flagged}

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
            Windows the threshold flagged as anomalous: out of the level, counted in the share
            of flagged windows.
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
        flagged = np.zeros(n, dtype=bool) if flags is None else np.asarray(flags, dtype=bool).reshape(-1)
        if flagged.shape[0] != n:
            raise ConfigError(f"update_many: {flagged.shape[0]} flags for {n} scores")
        values = np.log(np.maximum(scores, self.floor))
        slots = stamps // self._bucket_ns
        fed = np.flatnonzero(np.isfinite(scores))
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
                events += self._close(key_list[i], k, b)
            if b < k.open - self.buckets:
                continue  # later than the horizon: nothing it could still change
            cell = k.buckets.setdefault(b, [0.0, 0, 0.0, 0])
            j = 2 if flagged[i] else 0  # a flagged window: out of the level, in the flagged share
            cell[j] += float(values[i])
            cell[j + 1] += 1
            k.seen += j == 0
        return events

    def _close(self, key: str, k: _Level, b: int) -> list[DriftEvent]:
        """Bucket ``k.open`` (and any before ``b``) closed: judge the horizon that ends at ``b``."""
        k.open = b
        for old in [o for o in k.buckets if o < b - self.buckets]:
            del k.buckets[old]
        if not k.buckets:  # a gap of a whole horizon (an outage): nothing before it counts any more, so
            k.first = b    # wait for a whole horizon again; judged on its first hours, a daily rhythm was drift
        if b - k.first < self.buckets:
            return []  # less than a whole horizon seen
        total, count, flagged_total, flagged = k.sums(b, self.buckets)
        if count + flagged < self.min_values:
            k.thin += 1
            return []
        k.thin = 0
        held = sum(b - self.buckets <= o < b for o in k.buckets)
        if held < k.usual - self.buckets // 8 and k.short < 2 * self.buckets:
            k.short += 1  # an outage inside the horizon: its level is of some hours of the rhythm only
            return []     # (after two horizons of it, the stream's hours have changed: the new usual)
        k.usual = held if k.short else max(k.usual, held)
        k.short = 0
        share, events = flagged / (count + flagged), []
        level = total / count if count >= self.min_values else math.nan
        if not math.isnan(level):
            if k.reference is None:
                k.reference = level  # the first full horizon is where this key started
            shift, last = level - k.reference, k.side
            if abs(shift) >= self.min_shift:
                k.side = 1 if shift > 0 else -1
            elif abs(shift) < self.min_shift / 2:  # hysteresis: an excursion ends well inside the band
                k.side = 0
            if k.side != 0 and k.side != last:
                events.append(self._event(key, k, b, level, "up" if shift > 0 else "down", share))
        was = k.flagged
        if share >= self.max_flagged:
            k.flagged = True
        elif share < self.max_flagged / 2:  # hysteresis, as the level's
            k.flagged = False
        if k.flagged and not was:
            events.append(self._event(key, k, b, (total + flagged_total) / (count + flagged), "flagged", share))
        return events

    def _event(self, key: str, k: _Level, b: int, level: float, direction: str, share: float) -> DriftEvent:
        """One more event of ``key``; ``mean_before`` is None for a key whose horizons were all mostly
        flagged and that was given no reference."""
        k.events += 1
        return DriftEvent(key=key, index=k.seen, ts=b * self._bucket_ns, mean_before=k.reference,
                          mean_after=level, direction=direction, reference=k.reference, flagged_share=share)

    def shift(self, key: str = MODEL_KEY) -> float:
        """``key``'s level over the closed buckets of the latest horizon minus its reference
        (NaN while either is unknown); a creep shows here before it reaches ``min_shift``."""
        k = self._keys.get(key)
        if k is None or k.open is None or k.reference is None:
            return math.nan
        return k.level(k.open, self.buckets, 1) - k.reference

    def starved(self, key: str = MODEL_KEY) -> bool:
        """Whether ``key``'s last whole horizon (every close over it) held fewer than
        ``min_values`` scores: a horizon too short for the rate of scores judges nothing."""
        k = self._keys.get(key)
        return k is not None and k.thin >= self.buckets

    def counts(self) -> dict[str, int]:
        """Drift events reported so far, per key."""
        return {key: k.events for key, k in self._keys.items()}

    def forget(self, key: str) -> None:
        """Drop one key (an evicted entity)."""
        self._keys.pop(key, None)

    # -- state -------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """JSON-safe state: parameters and each key's bucket sums and standing. A bucket without a
        flagged window is saved as ``[b, sum, count]``, one with as ``[b, sum, count, flagged sum,
        flagged count]``."""
        keys = {key: {"buckets": [[b, *cell[:4 if cell[3] else 2]] for b, cell in sorted(k.buckets.items())],
                      "open": k.open, "first": k.first, "reference": k.reference, "side": k.side,
                      "seen": k.seen, "events": k.events, "flagged": k.flagged, "usual": k.usual,
                      "short": k.short}
                for key, k in self._keys.items()}
        return {"format": STATE_FORMAT, "params": self.params(), "keys": keys}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict` exactly; ConfigError for another format or other parameters.
        A state saved before flagged windows were counted loads as one that had seen none."""
        if state.get("format") != STATE_FORMAT:
            raise ConfigError(f"drift state format {state.get('format')!r} is not {STATE_FORMAT} "
                              "(format 1 was river's ADWIN): the watch starts afresh")
        saved = {"max_flagged": MAX_FLAGGED, **(state.get("params") or {})}
        if saved != self.params():
            raise ConfigError(f"drift state was saved with {state.get('params')}, this monitor has "
                              f"{self.params()}; build the monitor with the saved parameters")
        keys = {}
        for key, d in state.get("keys", {}).items():
            buckets = {}
            for b, s, c, *f in d["buckets"]:
                fs, fc = f if f else (0.0, 0)
                buckets[int(b)] = [float(s), int(c), float(fs), int(fc)]
            keys[key] = _Level(buckets=buckets, open=d["open"], first=d["first"], reference=d["reference"],
                               side=int(d["side"]), seen=int(d["seen"]), events=int(d["events"]),
                               flagged=bool(d.get("flagged", False)), usual=int(d.get("usual", 0)),
                               short=int(d.get("short", 0)))
        self._keys = keys


def artifact_reference(artifact) -> float | None:
    """The starting level stored in ``artifact`` at training (None for one trained before
    stream_ae stored it: the monitor then takes the level of its first full horizon)."""
    value = ((artifact.training or {}).get("metrics") or {}).get(REFERENCE_METRIC)
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None
