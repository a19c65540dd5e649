"""Alert lifecycle per entity: open on k of n flagged windows, rate-limited updates, resolve
after a quiet period. Pure logic on event time (window end timestamps), so replaying the same
windows gives the same events with the same ids.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from stream_ae.alerts.events import AlertEvent, _PendingTop, alert_id, iso_utc, top_channels
from stream_ae.alerts.policy import AlertPolicy
from stream_ae.configs import spec_dict
from stream_ae.errors import ArtifactError, ConfigError, DataError

_NS = 1_000_000_000
STATE_FORMAT = 1


@dataclass
class _Alert:
    alert_id: str
    started_at: int
    sequence: int                  # of the last emitted event
    last_flag_at: int
    last_emit_at: int
    last_emit_score: float
    last_emit_band: int
    peak_band: int
    score: float                   # the last flagged window's
    threshold: float
    top: list[tuple[str, float]]  # or a _PendingTop until an event or a snapshot reads it
    model_version: str


@dataclass
class _Entity:
    history: deque                 # (end_ts, flagged, band: 0 if not flagged) of the last n windows
    last_ts: int | None = None
    last_clock: int | None = None  # with an alert open: the others' event time at the last window, when known
    alert: _Alert | None = None


class _Run:
    """One entity's chunk of scored windows, as :meth:`AlertTracker.observe_many` walks it."""

    __slots__ = ("entity", "ts", "scores", "thresholds", "flags", "channel_error", "channels", "model_version",
                 "clock", "after")

    def __init__(self, entity, ts, scores, thresholds, flags, channel_error, channels, model_version, clock=None,
                 after=None):
        self.entity, self.ts, self.scores, self.thresholds, self.flags = entity, ts, scores, thresholds, flags
        self.channel_error, self.channels, self.model_version = channel_error, channels, model_version
        self.clock = clock  # (B,) others' event time before each window, or None
        self.after = None if clock is None else np.maximum(clock, ts) if after is None else after  # ... after it

    def top(self, j: int, k: int) -> list[tuple[str, float]]:
        return top_channels(self.channel_error[j], self.channels, k)

    def lazy_top(self, j: int, k: int) -> _PendingTop:
        return _PendingTop(self.channel_error[j], self.channels, k)


def _top_of(a: _Alert) -> list[tuple[str, float]]:
    if isinstance(a.top, _PendingTop):
        a.top = a.top.resolve()
    return a.top


def _opening(history) -> tuple[int, int]:
    """``(started, band)`` of an alert the k-of-n ``history`` opens: its first flagged window's
    end, and the highest band among its flagged windows. The window that completes the count
    may be a mild one after a severe one: a 9x spike, then two 1.2x windows, opened as "warning"."""
    flagged = [(t, b) for t, f, b in history if f]
    return min(t for t, _ in flagged), max(b for _, b in flagged)


def _history(pairs, bands, band_map) -> list[tuple[int, bool, int]]:
    """A saved k-of-n history: ``[[ts, flagged], ...]`` and each window's band, kept apart so
    that a release before bands (which reads the pairs) can still load the snapshot;
    ``band_map``: saved band -> this policy's, when the policy changed."""
    if len(bands) != len(pairs):
        raise ValueError(f"{len(pairs)} history windows but {len(bands)} bands")
    return [(int(t), bool(f), int(b) if band_map is None else band_map[int(b)]) for (t, f), b in zip(pairs, bands)]


def _quiet_ends(elapsed, flagged, prev_flagged):
    """Whether a window ends an open alert's quiet period (scalars or arrays): it lies ``quiet_s``
    past the last flagged window (``elapsed``), and is not a flagged window right after a
    flagged one. A gap with no window at all is no evidence of quiet: 5-minute data with
    ``quiet_s`` 300 s split one fault into an alert per window."""
    return np.logical_and(elapsed, np.logical_not(np.logical_and(flagged, prev_flagged)))


class AlertTracker:
    """Alert state machines for any number of entities (one state per entity); no I/O.

    Examples
    --------
    >>> tr = AlertTracker(AlertPolicy(k=2, n=3, quiet_s=10))
    >>> ch = ["a", "b"]
    >>> [e.state for t, f in [(1, True), (2, True), (3, False), (20, False)]
    ...  for e in tr.observe("pump-1", t * 10**9, 5.0, 1.0, f, np.array([1.0, 3.0]), ch, "v1")]
    ['open', 'resolved']
    """

    def __init__(self, policy: AlertPolicy = AlertPolicy()):
        self.policy = policy
        self._entities: dict[str, _Entity] = {}
        self._quiet_ns = int(round(policy.quiet_s * _NS))
        self._update_ns = int(round(policy.update_interval_s * _NS))
        self._silence_ns = policy.silence_ns

    def open_alerts(self) -> dict[str, str]:
        """``{entity: alert_id}`` of the alerts open now."""
        return {e: s.alert.alert_id for e, s in sorted(self._entities.items()) if s.alert}

    def _entity(self, entity: str) -> _Entity:
        st = self._entities.get(entity)
        if st is None:
            st = self._entities[entity] = _Entity(deque(maxlen=self.policy.n))
        return st

    def observe(self, entity: str, end_ts_ns: int, score: float, threshold: float, flagged: bool,
                channel_error: np.ndarray, channels: Sequence[str], model_version: str) -> list[AlertEvent]:
        """Feed one scored window (in event-time order per entity); returns the events it causes."""
        return self._observe(self._entity(entity), entity, int(end_ts_ns), float(score),
                             float(threshold), bool(flagged), channel_error, channels, model_version)

    def observe_many(self, entity: str, end_ts_ns: np.ndarray, scores: np.ndarray,
                     thresholds: np.ndarray, flagged: np.ndarray, channel_error: np.ndarray,
                     channels: Sequence[str], model_version: str,
                     clock: np.ndarray | None = None, after: np.ndarray | None = None) -> list[AlertEvent]:
        """Feed a batch ``(B,)`` of one entity's windows (``channel_error`` ``(B, C)``).

        ``clock`` ``(B,)``: the event time other entities had reached just before each window
        (its partition's, in the stream). An open alert resolves when that time moved on by
        ``policy.silence`` from one window of the entity to the next (:meth:`expire_silent`):
        measured on the others' time, an entity whose own clock lags is not silent while it
        sends. None: no silence rule. ``after`` ``(B,)``: that time just after each window (None:
        the later of ``clock`` and the window's end; the stream bounds a window's end by its
        record's Kafka timestamp, ``silence.py``).

        Identical to calling :meth:`observe` in a loop, but vectorised: a stretch without an
        open alert is one k-of-n count over the chunk, a stretch with one is one search for the
        resolve time and one per emitted update; ``top_channels`` is computed only for
        windows whose values end up in an event or in the saved state.
        """
        ts = np.asarray(end_ts_ns, dtype=np.int64).reshape(-1)
        flags = np.asarray(flagged, dtype=bool).reshape(-1)
        B = ts.shape[0]
        if not (np.shape(scores)[0] == np.shape(thresholds)[0] == flags.shape[0] == np.shape(channel_error)[0] == B):
            raise DataError("observe_many needs end_ts_ns, scores, thresholds, flagged and channel_error "
                            "of the same length")
        if B > 1 and (np.diff(ts) < 0).any():
            raise DataError(f"windows of entity {entity!r} must be in event-time order")
        st = self._entity(entity)
        if B and st.last_ts is not None and ts[0] < st.last_ts:
            raise DataError(f"window of entity {entity!r} at {iso_utc(ts[0])} is older than the last one "
                            f"({iso_utc(st.last_ts)}); feed windows in event-time order")
        run = _Run(entity, ts, np.asarray(scores, np.float64).reshape(-1),
                   np.asarray(thresholds, np.float64).reshape(-1), flags, channel_error, channels, model_version,
                   None if clock is None or not self._silence_ns else np.asarray(clock, np.int64).reshape(-1),
                   None if after is None else np.asarray(after, np.int64).reshape(-1))
        events: list[AlertEvent] = []
        i = 0
        while i < B:
            i = self._quiet_run(st, run, i, events) if st.alert is None else self._alert_run(st, run, i, events)
        return events

    def absorb_calm(self, entity: str, end_ts_ns: np.ndarray) -> bool:
        """Windows of ``entity`` none of which was flagged (``end_ts_ns`` ``(B,)``, increasing).

        With no alert open, all :meth:`observe_many` does with them is add them to the k-of-n
        history; this does just that and returns True. With an alert open (the quiet period
        may end) or windows older than the last, it changes nothing and returns False: use
        :meth:`observe_many`.
        """
        st = self._entity(entity)
        if st.alert is not None or not len(end_ts_ns) or (st.last_ts is not None and end_ts_ns[0] < st.last_ts):
            return False
        tail = end_ts_ns[-self.policy.n:].tolist()
        st.history.extend((t, False, 0) for t in tail)
        st.last_ts = tail[-1]
        return True

    def _bands(self, score: np.ndarray, threshold: np.ndarray) -> np.ndarray:
        """Vectorised :meth:`AlertPolicy.band` of ``score / threshold`` (inf where threshold <= 0)."""
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(threshold > 0, score / np.where(threshold > 0, threshold, 1.0), np.inf)
        return np.maximum(np.searchsorted(self.policy._ratios, ratio, side="right") - 1, 0)

    def _absorb(self, st: _Entity, run: "_Run", lo: int, hi: int) -> None:
        """Windows ``[lo, hi)`` enter the k-of-n history (only the last n matter)."""
        if hi > lo:
            s = slice(max(lo, hi - self.policy.n), hi)
            bands = np.where(run.flags[s], self._bands(run.scores[s], run.thresholds[s]), 0)
            st.history.extend(zip(run.ts[s].tolist(), run.flags[s].tolist(), bands.tolist()))
            st.last_ts = int(run.ts[hi - 1])
            if run.after is not None and st.alert is not None:  # kept only while it counts (the fleet's calm
                st.last_clock = int(run.after[hi - 1])           # entities never see the clock)

    def _quiet_run(self, st: _Entity, run: "_Run", i: int, events: list) -> int:
        """No open alert from window ``i``: find the first window where k of the last n are flagged."""
        p = self.policy
        past = np.fromiter((f for _, f, _ in st.history), bool, len(st.history))
        f = np.concatenate([past, run.flags[i:]])  # (h + B - i,) history then chunk
        counts = np.concatenate([[0], np.cumsum(f)])
        pos = np.arange(past.size, f.size)
        hits = np.flatnonzero(f[past.size:] & (counts[pos + 1] - counts[np.maximum(pos + 1 - p.n, 0)] >= p.k))
        if not hits.size:
            self._absorb(st, run, i, len(run.ts))
            return len(run.ts)
        j = i + int(hits[0])
        self._absorb(st, run, i, j + 1)
        ts, score, threshold = int(run.ts[j]), float(run.scores[j]), float(run.thresholds[j])
        started, band = _opening(st.history)
        st.alert = _Alert(alert_id(run.entity, ts), started, 0, ts, ts, score, band, band, score, threshold,
                          run.top(j, p.top_k), run.model_version)
        st.last_clock = None if run.after is None else int(run.after[j])
        events.append(self._event(run.entity, st.alert, "open", ts, band))
        return j + 1

    def _alert_run(self, st: _Entity, run: "_Run", i: int, events: list) -> int:
        """An open alert from window ``i``: its flagged windows update it until the quiet period ends."""
        p, a = self.policy, st.alert
        t, fl = run.ts[i:], run.flags[i:]
        last_flag = np.maximum.accumulate(np.where(fl, t, a.last_flag_at))  # (b,) incl. each window
        before = np.concatenate([[a.last_flag_at], last_flag[:-1]])          # last flag before each window
        prev = np.concatenate([[bool(st.history) and st.history[-1][1]], fl[:-1]])   # the window before each
        quiet = np.flatnonzero(_quiet_ends(t - before >= self._quiet_ns, fl, prev))
        end = int(quiet[0]) if quiet.size else len(t)  # windows [i, i + end) belong to the alert
        silent_since = None
        if run.clock is not None:  # silent before window j: the others' time moved on by the silence
            since = np.concatenate([[self._last_clock(st)], run.after[i:-1]])  # others' time at the entity's last
            silent = np.flatnonzero(run.clock[i:] - since >= self._silence_ns)
            if silent.size and silent[0] <= end:
                end = int(silent[0])
                silent_since = int(st.last_ts if end == 0 else t[end - 1])  # its last window before
        idx = i + np.flatnonzero(fl[:end])  # flagged windows of the alert, chunk indices
        if idx.size:
            bands = self._bands(run.scores[idx], run.thresholds[idx])
            pos = 0
            while pos < idx.size:  # emitted updates: rate-limited, so few searches
                pos += int(np.searchsorted(run.ts[idx[pos:]], a.last_emit_at + self._update_ns, "left"))
                if pos >= idx.size:
                    break
                sc = run.scores[idx[pos:]]
                changed = (bands[pos:] != a.last_emit_band) | \
                    (np.abs(sc - a.last_emit_score) >= p.update_min_change * abs(a.last_emit_score))
                hit = np.flatnonzero(changed)
                if not hit.size:
                    break
                pos += int(hit[0])
                j = int(idx[pos])
                self._flagged(a, run, j, int(bands[: pos + 1].max()))
                a.sequence += 1
                a.last_emit_at, a.last_emit_score, a.last_emit_band = a.last_flag_at, a.score, int(bands[pos])
                events.append(self._event(run.entity, a, "update", a.last_flag_at, int(bands[pos])))
                pos += 1
            self._flagged(a, run, int(idx[-1]), int(bands.max()))
        self._absorb(st, run, i, i + end)
        if silent_since is not None:  # resolved while the entity was silent; the window counts anew
            events.append(self._resolve(st, run.entity, silent_since))
        elif i + end < len(run.ts):  # the quiet period ended at this window: resolve, then it counts anew
            events.append(self._resolve(st, run.entity, int(run.ts[i + end])))
        return i + end

    def _flagged(self, a: _Alert, run: "_Run", j: int, band: int) -> None:
        """The alert's last flagged window is ``j`` (``band``: highest band up to it)."""
        a.last_flag_at, a.score, a.threshold = int(run.ts[j]), float(run.scores[j]), float(run.thresholds[j])
        a.top, a.model_version = run.lazy_top(j, self.policy.top_k), run.model_version
        a.peak_band = max(a.peak_band, band)

    def expire_silent(self, entity: str, clock_ns: int) -> AlertEvent | None:
        """Resolve ``entity``'s open alert if other entities' event time, now ``clock_ns``, moved
        on by ``policy.silence`` since the entity's last window. The event is stamped with that
        last window's end, the last the entity showed, however late the silence is noticed: a
        backlog of the entity's readings delivered later then opens its next alert after it,
        never before (a stamp of last window + silence could lie after the next alert's start)."""
        st = self._entities.get(entity)
        if st is None or st.alert is None or not self._silence_ns or st.last_ts is None \
                or int(clock_ns) - self._last_clock(st) < self._silence_ns:
            return None
        return self._resolve(st, entity, st.last_ts)

    def open_since(self, entity: str) -> int | None:
        """With an alert open for ``entity``: the others' time at its last window (its own end
        where not known), from which :meth:`expire_silent` counts; else None."""
        st = self._entities.get(entity)
        return None if st is None or st.alert is None or st.last_ts is None else self._last_clock(st)

    @staticmethod
    def _last_clock(st: _Entity) -> int:
        """The others' time at the entity's last window; its own end where not known (older state)."""
        return st.last_ts if st.last_clock is None else st.last_clock

    def _observe(self, st: _Entity, entity: str, ts: int, score: float, threshold: float,
                 flagged: bool, channel_error, channels, model_version: str) -> list[AlertEvent]:
        if st.last_ts is not None and ts < st.last_ts:
            raise DataError(f"window of entity {entity!r} at {iso_utc(ts)} is older than the last one "
                            f"({iso_utc(st.last_ts)}); feed windows in event-time order")
        st.last_ts = ts
        events = []
        if st.alert is not None and _quiet_ends(ts - st.alert.last_flag_at >= self._quiet_ns, flagged,
                                                st.history[-1][1]):
            events.append(self._resolve(st, entity, ts))
        p = self.policy
        band = p.band(score / threshold if threshold > 0 else float("inf")) if flagged else 0
        st.history.append((ts, flagged, band))
        if not flagged:
            return events
        top = top_channels(channel_error, channels, p.top_k)
        a = st.alert
        if a is None:
            if sum(f for _, f, _ in st.history) >= p.k:
                started, band = _opening(st.history)
                st.alert = _Alert(alert_id(entity, ts), started, 0, ts, ts, score, band, band,
                                  score, threshold, top, model_version)
                events.append(self._event(entity, st.alert, "open", ts, band))
            return events
        a.last_flag_at, a.score, a.threshold, a.top, a.model_version = ts, score, threshold, top, model_version
        a.peak_band = max(a.peak_band, band)
        changed = band != a.last_emit_band or abs(score - a.last_emit_score) >= p.update_min_change * abs(a.last_emit_score)
        if ts - a.last_emit_at >= self._update_ns and changed:
            a.sequence += 1
            a.last_emit_at, a.last_emit_score, a.last_emit_band = ts, score, band
            events.append(self._event(entity, a, "update", ts, band))
        return events

    def _resolve(self, st: _Entity, entity: str, at: int) -> AlertEvent:
        a = st.alert
        a.sequence += 1
        st.alert, st.last_clock = None, None
        st.history.clear()          # a new alert needs k new flagged windows
        return self._event(entity, a, "resolved", at, a.peak_band)

    def _event(self, entity: str, a: _Alert, state: str, at: int, band: int) -> AlertEvent:
        return AlertEvent(a.alert_id, f"{a.alert_id}-{a.sequence}", entity, a.model_version, state,
                          a.started_at, at, a.score, a.threshold, self.policy.bands[band][0],
                          list(_top_of(a)), a.sequence)

    # ---- state ----------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """JSON-safe state; a restored tracker continues open alerts with the same ids."""
        ents = {}
        for entity, st in sorted(self._entities.items()):
            a = st.alert
            ents[entity] = {
                "history": [[t, f] for t, f, _ in st.history], "bands": [b for _, _, b in st.history],
                "last_ts": st.last_ts, "last_clock": st.last_clock,
                "alert": None if a is None else {
                    **{k: getattr(a, k) for k in _Alert.__dataclass_fields__ if k != "top"},
                    "top": [[c, s] for c, s in _top_of(a)]}}
        return {"format": STATE_FORMAT, "policy": spec_dict(self.policy), "entities": ents}

    def load_state_dict(self, d: dict) -> None:
        """Restore :meth:`state_dict` output. State saved under another policy (the settings
        changed) goes on under this one: open alerts keep their ids, the k-of-n history keeps
        its last ``n`` windows, and a band gone from the settings becomes its nearest."""
        if not isinstance(d, dict) or d.get("format") != STATE_FORMAT:
            raise ArtifactError(f"not an alert tracker state of format {STATE_FORMAT}")
        band = None
        if d.get("policy") != spec_dict(self.policy):
            try:
                band = self.policy.band_map(AlertPolicy.from_dict(d.get("policy")))
            except (ConfigError, TypeError, ValueError) as exc:
                raise ArtifactError(f"alert state names no valid policy ({exc})") from exc
        ents = {}
        try:
            for entity, e in d["entities"].items():
                bands = e.get("bands") or [0] * len(e["history"])   # a snapshot from before bands were kept
                st = _Entity(deque(_history(e["history"], bands, band), maxlen=self.policy.n),
                             None if e["last_ts"] is None else int(e["last_ts"]),
                             None if e.get("last_clock") is None else int(e["last_clock"]))
                if e["alert"] is not None:
                    a = dict(e["alert"])
                    a["top"] = [(str(c), float(s)) for c, s in a["top"]]
                    if band is not None:
                        a["last_emit_band"], a["peak_band"] = band[a["last_emit_band"]], band[a["peak_band"]]
                    st.alert = _Alert(**a)
                ents[str(entity)] = st
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise ArtifactError(f"corrupt alert tracker state ({exc!r})") from exc
        self._entities = ents
