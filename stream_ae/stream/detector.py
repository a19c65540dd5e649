"""The streaming detector without Kafka: readings in, alert events out.

One :meth:`Detector.process` call is one micro-batch. Readings are grouped by entity,
each entity's rows go through its own :class:`~stream_ae.data.windows.SeriesWindower`,
the windows of *all* entities are scored in one :meth:`Scorer.score_rows` call (only the
new rows and each entity's carried tail travel, never overlapping window copies), then
each entity's threshold and alert tracker step through its scores in time order.

Replay: every entity remembers the next Kafka offset per partition after the last
reading it absorbed. A reading below that offset is already in the (restored) state and
is skipped silently, and an event whose ``event_id`` was already published (see
:meth:`Detector.suppress`) is not returned again. Both make a replay after a crash exact.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np

from stream_ae.alerts import AlertPolicy, AlertTracker
from stream_ae.data.windows import SeriesWindower, WindowSpec
from stream_ae.errors import DataError
from stream_ae.stream.entities import EntityState, EntityTable
from stream_ae.thresholds import ThresholdSpec, build_threshold

log = logging.getLogger(__name__)


@dataclass
class ReadingBatch:
    """Decoded readings of one micro-batch, in poll order (columnar)."""

    entity: np.ndarray  # (N,) object: str entity ids
    ts: np.ndarray  # (N,) int64 ns since epoch
    values: np.ndarray  # (N, C) float32, channel order = the model's; NaN = missing
    partition: np.ndarray  # (N,) int64 Kafka partition (-1: not from Kafka)
    offset: np.ndarray  # (N,) int64 Kafka offset

    def __len__(self) -> int:
        return len(self.ts)

    @classmethod
    def from_arrays(cls, entity, ts, values, partition=None, offset=None) -> "ReadingBatch":
        """Build a batch; without Kafka coordinates, partition -1 (never skipped as a replay)."""
        n = len(ts)
        return cls(
            entity=np.asarray(entity, dtype=object),
            ts=np.asarray(ts, dtype=np.int64),
            values=np.asarray(values, dtype=np.float32).reshape(n, -1),
            partition=np.full(n, -1, np.int64) if partition is None else np.asarray(partition, np.int64),
            offset=np.arange(n, dtype=np.int64) if offset is None else np.asarray(offset, np.int64),
        )


@dataclass
class DetectorOutput:
    """What one micro-batch produced."""

    events: list = field(default_factory=list)  # AlertEvent, in entity then time order
    event_index: list = field(default_factory=list)  # per event: batch index of the reading that caused it
    rejected: list = field(default_factory=list)  # (batch index, reason) for dead letters
    windows_scored: int = 0
    skipped: int = 0  # replayed readings already in the state
    suppressed: int = 0  # events already published before a restart
    scoring_s: float = 0.0
    entities: list = field(default_factory=list)  # entity ids touched by this batch
    # every window scored, in entity then time order: a read-only tap (drift watch, demo plot)
    scores: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))    # (B,)
    flags: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))           # (B,)
    end_ts: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))      # (B,) ns


@dataclass
class PreparedBatch:
    """A micro-batch windowed by :meth:`Detector.prepare`, waiting to be scored and finished."""

    out: DetectorOutput
    pending: list  # (EntityState, WindowBatch, batch indices) of entities with new windows
    rows: np.ndarray | None  # (M, C) raw rows of every pending entity, stacked
    starts: np.ndarray | None  # (B,) window starts into ``rows``
    scorer: Any  # the model at prepare time: a hot reload never splits a batch
    scored: Any = None  # ScoreBatch once scored

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
                 threshold_overrides: dict | None = None):
        self.scorer = scorer
        self.threshold_spec = threshold_spec
        self.threshold_state = threshold_state
        self.threshold_overrides = dict(threshold_overrides or {})
        # A threshold learns one model's scores: per model version, the calibration to start from.
        self._calibrations = {scorer.version: (threshold_spec, threshold_state)}
        self.alert_policy = alert_policy
        self.window_spec = window_spec
        self.channels = tuple(scorer.channels)
        self._check_scorer(scorer)
        self.table = EntityTable(self._new_state, max_entities)
        self._published: set[str] = set()

    # -- set-up ----------------------------------------------------------------------------
    def _check_scorer(self, scorer) -> None:
        if int(scorer.length) != self.window_spec.length:
            raise DataError(
                f"model {scorer.version} scores windows of {scorer.length} rows but the stream "
                f"windows are {self.window_spec.length}; use the artifact's window length"
            )
        if tuple(scorer.channels) != self.channels:
            raise DataError(
                f"model {scorer.version} has channels {list(scorer.channels)}, the running one "
                f"{list(self.channels)}; a hot reload must keep the channels"
            )

    def _new_state(self, entity: str) -> EntityState:
        tracker = AlertTracker(self.alert_policy)
        windower = SeriesWindower(self.window_spec, len(self.channels))
        state = EntityState(entity, windower, None, tracker)
        self._seed_threshold(state, self.scorer)
        return state

    def _seed_threshold(self, state: EntityState, scorer) -> None:
        """Start ``state``'s threshold from ``scorer``'s calibration (a new entity, or a new model)."""
        if scorer.version not in self._calibrations:
            self._calibrations[scorer.version] = calibrated_threshold(scorer.artifact, self.threshold_overrides)
        spec, calibration = self._calibrations[scorer.version]
        threshold = build_threshold(spec)
        if calibration is not None:
            threshold.load_state_dict(calibration)
        state.threshold, state.model_version = threshold, scorer.version

    @property
    def model_version(self) -> str:
        return self.scorer.version

    def swap_scorer(self, scorer) -> None:
        """Use another model from the next batch on (hot reload); channels and length must match."""
        self._check_scorer(scorer)
        self.scorer = scorer

    def suppress(self, event_ids: Iterable[str]) -> None:
        """Event ids already on the alerts topic: a replay will not return them again."""
        self._published.update(event_ids)

    # -- the micro-batch -------------------------------------------------------------------
    def process(self, batch: ReadingBatch) -> DetectorOutput:
        """Window, score, threshold and track one micro-batch; returns the new events."""
        return self.finish(self.prepare(batch).score())

    def prepare(self, batch: ReadingBatch) -> "PreparedBatch":
        """Stage 1 of :meth:`process`: skip replayed readings, window every entity, stack the rows.

        The result's :meth:`PreparedBatch.score` touches no detector state, so it may run in
        another thread while the next batch is prepared; :meth:`finish` must then be called
        for the batches in the order they were prepared.
        """
        out = DetectorOutput()
        prep = PreparedBatch(out, [], None, None, self.scorer)
        n = len(batch)
        if n == 0:
            return prep
        if batch.values.shape != (n, len(self.channels)):
            raise DataError(f"readings must have values (N, {len(self.channels)}), got {batch.values.shape}")
        rows_parts, starts_parts = [], []
        base = 0
        for entity, idx in _group_by_entity(batch.entity):  # idx: (n_e,) batch indices in poll order
            state = self.table.get(entity)
            idx = self._skip_replayed(state, batch, idx, out)
            if len(idx) == 0:
                continue
            wb = state.windower.push(batch.ts[idx], batch.values[idx])
            out.rejected.extend((int(idx[r]), str(reason)) for r, reason in zip(wb.rejected, wb.reasons))
            last = int(idx[-1])
            state.partition = int(batch.partition[last])
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
                prep.pending.append((state, wb, idx))
        if prep.pending:
            prep.rows, prep.starts = np.concatenate(rows_parts), np.concatenate(starts_parts)  # (M, C), (B,)
        self.table.pin(out.entities)
        return prep

    def finish(self, prep: "PreparedBatch") -> DetectorOutput:
        """Stage 3 of :meth:`process`: thresholds and alert lifecycles, entity by entity, in time order."""
        out = prep.out
        if prep.pending and prep.scored is None:
            raise DataError("finish() needs a scored batch: call PreparedBatch.score() first")
        lo = 0
        flag_parts, ts_parts = [], []
        for state, wb, idx in prep.pending:
            hi = lo + len(wb)
            score, channel_error = prep.scored.score[lo:hi], prep.scored.channel_error[lo:hi]  # (b,), (b, C)
            lo = hi
            if state.model_version != prep.scorer.version:
                # Scores of another model (hot reload, rollback, a restart on a new version, a
                # snapshot from before): the old threshold is in the wrong units; restart from
                # this model's calibration. Windows and open alerts carry on.
                self._seed_threshold(state, prep.scorer)
            flags, values = state.threshold.step_many(score)
            flag_parts.append(flags)
            ts_parts.append(wb.end_ts)
            state.windows += len(wb)
            events = state.tracker.observe_many(state.entity, wb.end_ts, score, values, flags, channel_error,
                                                self.channels, prep.scorer.version)
            for event, window in _with_windows(events, wb):
                if event.event_id in self._published:
                    self._published.discard(event.event_id)
                    out.suppressed += 1
                    continue
                out.events.append(event)
                out.event_index.append(int(idx[wb.end_index[window]]) if window is not None else int(idx[-1]))
        out.windows_scored = lo
        if flag_parts:
            out.scores, out.flags, out.end_ts = prep.scored.score[:lo], np.concatenate(flag_parts), \
                np.concatenate(ts_parts)
        self.table.unpin(out.entities)
        self.table.trim()
        return out

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
        self.table.restore(entity, snapshot)

    def forget_partitions(self, partitions: set[int]) -> int:
        """Drop the entities of revoked partitions (their new owner restores them)."""
        return self.table.drop_partitions(partitions)


def _group_by_entity(entity: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """[(entity, indices in order)], entities in order of first appearance.

    ``pandas.factorize`` hashes the ids (4x faster than sorting them with ``np.unique`` for a
    micro-batch of 1024 readings) and numbers them in order of first appearance."""
    import pandas as pd

    if len(entity) == 1:
        return [(entity[0], np.zeros(1, np.int64))]
    codes, names = pd.factorize(entity)
    order = np.argsort(codes, kind="stable")
    bounds = np.cumsum(np.bincount(codes, minlength=len(names)))[:-1]
    return list(zip(names.tolist(), np.split(order, bounds)))


def _with_windows(events: list, wb) -> list[tuple[Any, int | None]]:
    """Pair each event with the window (index into ``wb``) that caused it, by end time."""
    if not events:
        return []
    out = []
    for event in events:
        j = int(np.searchsorted(wb.end_ts, event.at))
        pos = j if j < len(wb.end_ts) and wb.end_ts[j] == event.at else None
        out.append((event, pos))
    return out


def build_detector(settings, scorer) -> Detector:
    """A Detector for the settings' threshold, alert and input sections and the scorer's artifact."""
    import msgspec

    overrides = {k: v for k, v in msgspec.structs.asdict(settings.threshold).items() if v is not None}
    spec, state = calibrated_threshold(scorer.artifact, overrides)
    a = settings.alerts
    policy = AlertPolicy(k=a.k, n=a.n, update_interval_s=a.update_interval_s, quiet_s=a.quiet_s)
    return Detector(scorer, spec, state, policy, scorer.window, settings.input.max_entities,
                    threshold_overrides=overrides)


def calibrated_threshold(artifact, overrides: dict | None = None) -> tuple[ThresholdSpec, dict | None]:
    """(spec, state) every entity starts from: the artifact's calibration, unless settings
    override the rule, in which case the calibration no longer applies and entities warm up."""
    import dataclasses

    spec = ThresholdSpec.from_dict(artifact.threshold["spec"])
    state = artifact.threshold.get("state")
    if overrides:
        new = dataclasses.replace(spec, **overrides)
        if new != spec:
            log.warning("threshold settings %s differ from model %s's calibration: every entity warms up",
                        overrides, artifact.version)
            spec, state = new, None
    return spec, state
