"""The streaming detector without Kafka: readings in, alert events out.

One :meth:`Detector.process` call is one micro-batch. Readings are grouped by entity;
the entities whose readings are a clean chunk are windowed together
(:func:`~stream_ae.data.many_windows.push_clean_many`), the others each by its own
:class:`~stream_ae.data.windows.SeriesWindower`, with the same windows and state either
way. The windows of *all* entities are scored in one :meth:`Scorer.score_rows` call (only
the new rows and each entity's carried tail travel, never overlapping window copies). An
entity whose scores are all calm (see :meth:`Threshold.calm_level`) and that has no alert open
only counts them; every other entity's threshold and alert tracker step through its scores in time order.

Replay: every entity remembers the next Kafka offset per partition after the last
reading it absorbed. A reading below that offset is already in the (restored) state and
is skipped silently, and an event whose ``event_id`` was already published (see
:meth:`Detector.suppress`) is not returned again. Both make a replay after a crash exact.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import numpy as np

from stream_ae.alerts import AlertPolicy, AlertTracker
from stream_ae.data.many_windows import ManyWindows, push_clean_many
from stream_ae.data.windows import SeriesWindower, WindowSpec
from stream_ae.errors import DataError
from stream_ae.stream.detector_io import DetectorOutput, ReadingBatch, group_by_entity, nothing_replayed
from stream_ae.stream.entities import EntityState, EntityTable
from stream_ae.stream.orphans import PublishedAlerts
from stream_ae.stream.silence import PartitionClocks
from stream_ae.stream.threshold_start import calibrated_threshold
from stream_ae.thresholds import ThresholdSpec, build_threshold

log = logging.getLogger(__name__)
#: Model versions whose threshold calibration is kept at hand (the running one, and the
#: versions of batches still in flight or of a quick rollback).
CALIBRATIONS_KEPT = 4


@dataclass
class _Fleet:
    """The entities of a micro-batch whose chunks :func:`push_clean_many` windowed together."""

    states: list  # EntityState of every entity of the batch, in order of first appearance
    many: ManyWindows  # their windows (owner: index into ``states``), after the other entities' in the batch
    end_ts: np.ndarray  # (Bf,) ns, each window's end
    end_reading: np.ndarray  # (Bf,) batch index of each window's last reading
    last_reading: np.ndarray  # (E,) batch index of each entity's last reading


@dataclass
class PreparedBatch:
    """A micro-batch windowed by :meth:`Detector.prepare`, waiting to be scored and finished."""

    out: DetectorOutput
    pending: list  # (entity rank, EntityState, WindowBatch, batch indices) of entities windowed one by one
    rows: np.ndarray | None  # (M, C) raw rows of every pending entity, then of the fleet, stacked
    starts: np.ndarray | None  # (B,) window starts into ``rows``
    scorer: Any  # the model at prepare time: a hot reload never splits a batch
    scored: Any = None  # ScoreBatch once scored
    fleet: _Fleet | None = None  # entities windowed together (their windows come after ``pending``'s)
    batch: ReadingBatch | None = None  # the readings (their partitions and record timestamps)

    def score(self) -> "PreparedBatch":
        """Run the model (pure: no detector state is read or written, so any thread may call it)."""
        if self.rows is not None and self.scored is None:
            t0 = time.perf_counter()
            self.scored = self.scorer.score_rows(self.rows, self.starts)
            self.out.scoring_s = time.perf_counter() - t0
        return self


class Detector:
    """Per-entity windows, one scoring call per micro-batch, thresholds and alert lifecycles.

    Parameters
    ----------
    scorer : Scorer
        The model; its ``version`` is the ``model_version`` of the events.
    threshold_spec : ThresholdSpec
        Threshold rule for every entity.
    threshold_state : dict or None
        Calibrated state to start every new entity from (the artifact's); None: warm up.
    alert_policy : AlertPolicy
        The k-of-n / update / quiet-period rules.
    window_spec : WindowSpec
        Must match the model's window length.
    max_entities : int
        Live entity states in memory (see :class:`EntityTable`).
    """

    def __init__(self, scorer, threshold_spec: ThresholdSpec, threshold_state: dict | None,
                 alert_policy: AlertPolicy, window_spec: WindowSpec, max_entities: int = 100_000,
                 threshold_overrides: dict | None = None, vectorised: bool = True):
        self.scorer = scorer
        self.vectorised = vectorised  # False: every entity windowed and thresholded one by one
        self.threshold_spec = threshold_spec
        self.threshold_state = threshold_state
        self.threshold_overrides = dict(threshold_overrides or {})
        # A threshold learns one model's scores: per model version, the calibration to start from
        # (the latest CALIBRATIONS_KEPT versions: a service hot-reloads for months)
        self._calibrations = OrderedDict({scorer.version: (threshold_spec, threshold_state)})
        self.alert_policy, self.window_spec = alert_policy, window_spec
        self.channels = tuple(scorer.channels)
        self._check_scorer(scorer)
        self.table = EntityTable(self._new_state, max_entities)
        self._published = PublishedAlerts()   # what a restore found published (orphans.py)
        self.clocks = PartitionClocks()  # partition event time, for alerts of silent entities (silence.py)
        self._silence_ns = alert_policy.silence_ns

    # -- set-up ----------------------------------------------------------------------------
    def _check_scorer(self, scorer) -> None:
        spec = getattr(getattr(scorer, "window", None), "length", scorer.length)  # its artifact's window, if any
        if {int(scorer.length), spec} != {self.window_spec.length}:
            raise DataError(f"model {scorer.version} scores windows of {scorer.length} rows (its window spec "
                            f"{spec}) but the stream windows are {self.window_spec.length}")
        if tuple(scorer.channels) != self.channels:
            raise DataError(f"model {scorer.version} has channels {list(scorer.channels)}, the running one "
                            f"{list(self.channels)}; a hot reload must keep the channels")

    def _new_state(self, entity: str) -> EntityState:
        tracker = AlertTracker(self.alert_policy)
        windower = SeriesWindower(self.window_spec, len(self.channels))
        state = EntityState(entity, windower, None, tracker, channels=tuple(self.channels))
        self._seed_threshold(state, self.scorer)
        return state

    def _seed_threshold(self, state: EntityState, scorer) -> None:
        """Start ``state``'s threshold from ``scorer``'s calibration (a new entity, or a new model)."""
        if scorer.version not in self._calibrations:
            self._calibrations[scorer.version] = calibrated_threshold(scorer.artifact, self.threshold_overrides)
            while len(self._calibrations) > CALIBRATIONS_KEPT:
                self._calibrations.popitem(last=False)  # an older model's comes back from its artifact
        self._calibrations.move_to_end(scorer.version)
        spec, calibration = self._calibrations[scorer.version]
        threshold = build_threshold(spec)
        if calibration is not None:
            threshold.load_state_dict(calibration)
        state.threshold, state.model_version = threshold, scorer.version

    def _threshold_of(self, state: EntityState, scorer):
        """``state``'s threshold for ``scorer``'s scores. Scores of another model (hot reload,
        rollback, a restart on a new version, a snapshot from before) are in other units: the
        threshold restarts from this model's calibration. Windows and open alerts carry on."""
        if state.model_version != scorer.version:
            self._seed_threshold(state, scorer)
        return state.threshold

    @property
    def model_version(self) -> str:
        return self.scorer.version

    def swap_scorer(self, scorer) -> None:
        """Use another model from the next batch on (hot reload); channels and length must match.
        Its hop, gap and fill limit apply at once (an evicted entity's, when it comes back)."""
        self._check_scorer(scorer)
        self.scorer = scorer
        if scorer.window != self.window_spec:
            self.window_spec = scorer.window
            for state in self.table.states():
                state.windower.respec(scorer.window)

    def suppress(self, published: Iterable[str] | Mapping[str, bytes]) -> None:
        """Events already on the alerts topic (ids, or id -> the record's value): a replay will not
        return them again, and one it does not derive can close an alert (``forget_published``)."""
        self._published.add(published)

    def forget_published(self) -> list:
        """Every replay passed its previous owner: ids no replay derived (other partitions') go.
        Returns ``resolved`` events for the alerts of this consumer's entities that the replay
        did not carry on and left open on the topic (``orphans.py``), to publish."""
        return self._published.forget(
            lambda: {st.entity: st.tracker.open_alerts().get(st.entity) for st in self.table.states()},
            lambda entity: self.clocks.now.get(self.table.get(entity).partition))

    # -- the micro-batch -------------------------------------------------------------------
    def process(self, batch: ReadingBatch) -> DetectorOutput:
        """Window, score, threshold and track one micro-batch; returns the new events."""
        return self.finish(self.prepare(batch).score())

    def prepare(self, batch: ReadingBatch) -> "PreparedBatch":
        """Stage 1 of :meth:`process`: skip replayed readings, window every entity, stack the rows.

        The entities whose readings are a clean chunk (in order, newer than their state, no
        gap, no missing value, none replayed, one partition) are windowed together by
        :func:`push_clean_many`; the others one by one by their own windower, which applies
        the general rule. The result's :meth:`PreparedBatch.score` touches no detector
        state, so it may run in another thread while the next batch is prepared;
        :meth:`finish` must then be called for the batches in the order they were prepared.
        """
        out = DetectorOutput()
        prep = PreparedBatch(out, [], None, None, self.scorer, batch=batch)
        n = len(batch)
        if n == 0:
            return prep
        if batch.values.shape != (n, len(self.channels)):
            raise DataError(f"readings must have values (N, {len(self.channels)}), got {batch.values.shape}")
        names, order, counts = group_by_entity(batch.entity)  # order: batch indices, entity by entity
        states = [self.table.get(entity) for entity in names]
        first = np.cumsum(counts) - counts  # (E,) where each entity's readings start in ``order``
        part, off = batch.partition[order], batch.offset[order]  # (n,) entity by entity, in poll order
        last = order[first + counts - 1]  # (E,) batch index of each entity's last reading
        many = None
        taken = [False] * len(names)
        if self.vectorised:
            many = push_clean_many([s.windower for s in states], batch.ts[order], batch.values[order], counts,
                                   nothing_replayed(states, part, off, counts, first))
            taken = many.taken.tolist()
        last_part = batch.partition[last].tolist()
        next_off = (np.maximum.reduceat(off, first) + 1).tolist()
        rows_parts, starts_parts = [], []
        base = 0
        for rank, (entity, state) in enumerate(zip(names, states)):
            if taken[rank]:  # one partition, nothing replayed: windowed above
                p = state.partition = last_part[rank]
                if p >= 0:
                    state.offsets[p] = next_off[rank]
                self.table.mark_dirty(entity)
                out.entities.append(entity)
                continue
            idx = order[first[rank]:first[rank] + counts[rank]]  # (n_e,) batch indices in poll order
            idx = self._skip_replayed(state, batch, idx, out)
            if len(idx) == 0:
                continue
            wb = state.windower.push(batch.ts[idx], batch.values[idx])
            out.rejected.extend((int(idx[r]), str(reason)) for r, reason in zip(wb.rejected, wb.reasons))
            state.partition = int(batch.partition[idx[-1]])
            for p in np.unique(batch.partition[idx]):
                if p >= 0:  # Kafka coordinates: remember where a replay resumes
                    sel = idx[batch.partition[idx] == p]
                    state.offsets[int(p)] = int(batch.offset[sel].max()) + 1
            self.table.mark_dirty(entity)
            out.entities.append(entity)
            if len(wb):
                rows_parts.append(wb.rows)
                starts_parts.append(wb.starts + base)
                base += len(wb.rows)
                prep.pending.append((rank, state, wb, idx))
        if many is not None and len(many.starts):
            rows_parts.append(many.rows)
            starts_parts.append(many.starts + base)
            prep.fleet = _Fleet(states, many, batch.ts[order[many.end_pos]], order[many.end_pos], last)
        if rows_parts:
            prep.rows, prep.starts = np.concatenate(rows_parts), np.concatenate(starts_parts)  # (M, C), (B,)
        self.table.pin(out.entities)
        return prep

    def finish(self, prep: "PreparedBatch") -> DetectorOutput:
        """Stage 3 of :meth:`process`: thresholds and alert lifecycles, entity by entity, in time order.

        An entity of the fleet whose scores are all calm (see :meth:`Threshold.calm_level`)
        and that has no alert open only counts its windows; the others step their threshold
        and alert tracker through every score, in order of first appearance in the batch.
        """
        out = prep.out
        if (prep.pending or prep.fleet) and prep.scored is None:
            raise DataError("finish() needs a scored batch: call PreparedBatch.score() first")
        version = prep.scorer.version
        todo = []  # (rank, state, lo, hi, end_ts, end readings, last reading, threshold values or None)
        ts_parts, readings = [], []
        lo = 0
        for rank, state, wb, idx in prep.pending:
            hi = lo + len(wb)
            readings.append(idx[wb.end_index])
            todo.append((rank, state, lo, hi, wb.end_ts, readings[-1], int(idx[-1]), None))
            ts_parts.append(wb.end_ts)
            lo = hi
        if prep.fleet is not None:
            lo = self._finish_fleet(prep.fleet, prep, lo, todo)
            ts_parts.append(prep.fleet.end_ts)
            readings.append(prep.fleet.end_reading)
        flags = np.zeros(lo, bool)
        clock = after = None   # the partition's time just before and after each window
        if lo:
            readings, rb = np.concatenate(readings), prep.batch  # (lo,) batch index of each window's last reading
            clock, after = self.clocks.around(rb.partition[readings], readings, np.concatenate(ts_parts),
                                              None if rb.record_ts is None else rb.record_ts[readings])
        todo.sort(key=lambda item: item[0])
        for rank, state, a, b, end_ts, end_reading, last_reading, values in todo:
            score, channel_error = prep.scored.score[a:b], prep.scored.channel_error[a:b]  # (b,), (b, C)
            if values is None:
                self._threshold_of(state, prep.scorer)
                flags[a:b], values = state.threshold.step_many(score)
                state.windows += b - a
            events = state.tracker.observe_many(state.entity, end_ts, score, values, flags[a:b], channel_error,
                                                self.channels, version, clock[a:b], after[a:b])
            self.clocks.note(state.entity, state.partition, state.tracker.open_since(state.entity))
            for event in events:
                j = int(np.searchsorted(end_ts, event.at))  # the window that caused it, if any
                self._emit(out, event, int(end_reading[j]) if j < len(end_ts) and end_ts[j] == event.at
                           else last_reading)
        for entity, p in self.clocks.due(self._silence_ns) if lo else ():  # silent while their partition went on
            held = self.table.holds(entity)  # not held: its state was dropped (an entity flood)
            event = self.table.change(entity, lambda s: s.tracker.expire_silent(entity, self.clocks.now[p])) \
                if held else None
            if event is not None or not held:
                self.clocks.note(entity, p, None)
            if event is not None:
                self._emit(out, event, self.clocks.last_reading[p])
        self.clocks.prune(self.table.holds, self.table.dropped)   # states a flood dropped, whatever the silence rule
        out.windows_scored = lo
        if lo:
            out.scores, out.flags, out.end_ts = prep.scored.score[:lo], flags, after   # times bounded as the clocks'
        self.table.unpin(out.entities)
        self.table.trim()
        return out

    def _emit(self, out: DetectorOutput, event, reading: int) -> None:
        """Return ``event`` (caused by batch reading ``reading``) unless it is already published."""
        if self._published.derived(event):
            out.suppressed += 1
        else:
            out.events.append(event)
            out.event_index.append(reading)

    def _finish_fleet(self, fleet: _Fleet, prep: "PreparedBatch", lo: int, todo: list) -> int:
        """Thresholds of the fleet's calm entities in one comparison; the rest go to ``todo``."""
        many = fleet.many
        who = np.flatnonzero(many.counts)  # (E',) ranks of the entities with windows
        count = many.counts[who]
        start = np.cumsum(count) - count  # into the fleet's windows
        states = [fleet.states[r] for r in who.tolist()]
        levels = np.fromiter((self._threshold_of(s, prep.scorer).calm_level() for s in states), np.float64,
                             len(states))
        peak = np.maximum.reduceat(prep.scored.score[lo:lo + len(many.starts)], start)  # (E',)
        calm = (peak <= levels).tolist()  # NaN level: never calm
        for rank, state, c, a, is_calm in zip(who.tolist(), states, count.tolist(), start.tolist(), calm):
            end_ts = fleet.end_ts[a:a + c]
            values = None
            if is_calm:
                threshold = state.threshold
                values = threshold.value
                threshold.absorb_calm(c)
                state.windows += c
                if state.tracker.absorb_calm(state.entity, end_ts):
                    continue
                values = np.full(c, values)  # an alert is open: its tracker sees every window
            todo.append((rank, state, lo + a, lo + a + c, end_ts, fleet.end_reading[a:a + c],
                         int(fleet.last_reading[rank]), values))
        return lo + len(many.starts)

    def _skip_replayed(self, state: EntityState, batch: ReadingBatch, idx: np.ndarray,
                       out: DetectorOutput) -> np.ndarray:
        if not state.offsets:
            return idx
        parts, offs = batch.partition[idx], batch.offset[idx]  # (n_e,), (n_e,)
        if (parts == parts[0]).all():
            nxt = state.offsets.get(int(parts[0]), -1)
        else:
            nxt = np.array([state.offsets.get(int(p), -1) for p in parts], np.int64)
        keep = (offs >= nxt) | (parts < 0)
        if keep.all():
            return idx
        out.skipped += int(len(idx) - keep.sum())
        return idx[keep]

    # -- state ------------------------------------------------------------------------------
    def restore(self, entity: str, snapshot: dict) -> None:
        """Load an entity's checkpoint snapshot."""
        state = self.table.restore(entity, snapshot)
        self._published.restored(state.tracker.open_alerts().values())
        self.clocks.note(entity, state.partition, state.tracker.open_since(entity))

    def discard(self, prep: "PreparedBatch") -> None:
        """A prepared batch that will never be finished (its partitions were lost): its
        entities may be evicted again. Their windows moved on; drop their partitions too."""
        self.table.unpin(prep.out.entities)

    def forget_partitions(self, partitions: set[int]) -> int:
        """Drop the entities of revoked partitions (their new owner restores them)."""
        self.clocks.forget(partitions)
        return self.table.drop_partitions(partitions)


def build_detector(settings, scorer) -> Detector:
    """A Detector for the settings' threshold, alert and input sections and the scorer's artifact."""
    import msgspec

    overrides = {k: v for k, v in msgspec.structs.asdict(settings.threshold).items() if v is not None}
    spec, state = calibrated_threshold(scorer.artifact, overrides)
    a = settings.alerts
    policy = AlertPolicy(k=a.k, n=a.n, update_interval_s=a.update_interval_s, quiet_s=a.quiet_s,
                         silence_s=a.silence_s)
    return Detector(scorer, spec, state, policy, scorer.window, settings.input.max_entities,
                    threshold_overrides=overrides)
