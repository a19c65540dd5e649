"""Champion / challenger comparison: holdout metrics from scored windows, and the promotion rule.

Pure: arrays in, numbers and a decision out. The windows come from the one scoring path
(the backfill over the holdout span, see :mod:`stream_ae.retraining.job`).

Examples
--------
>>> rule = PromotionRule(error_tolerance=0.05, alert_rate_tolerance=0.1, alert_rate_slack=0.0)
>>> champion = ModelMetrics("v1", windows=1000, median_error=0.20, p95_error=0.5, alert_rate=0.02)
>>> better = ModelMetrics("v2", windows=1000, median_error=0.15, p95_error=0.4, alert_rate=0.02)
>>> decide(rule, better, champion).promote
True
>>> worse = ModelMetrics("v3", windows=1000, median_error=0.30, p95_error=0.9, alert_rate=0.02)
>>> d = decide(rule, worse, champion); d.promote, d.reasons[0]
(False, 'median normal-data error 0.3 > champion 0.2 x 1.05 = 0.21')
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

from stream_ae.retraining.faults import FAULT_SIGMA, regressions


@dataclass(frozen=True)
class LabelledEvent:
    """An anomaly someone labelled (or confirmed as operator feedback): ``[start, end]`` ns, inclusive."""

    entity: str
    start: int
    end: int


@dataclass(frozen=True)
class ModelMetrics:
    """One model on the holdout span.

    ``median_error`` / ``p95_error``: reconstruction score of the windows outside every
    labelled event ("normal data"); ``alert_rate``: the fraction of those windows flagged
    by the model's own calibrated threshold, run causally as in the stream; ``events`` /
    ``detected`` / ``recall``: labelled events in the span and those overlapped by at least
    one flagged window (None without labels). ``entities``, ``first_window`` and ``last_window``
    say what of the holdout span the archive covered: the entities scored, the first window's
    start and the last one's end (ISO UTC; None without windows). An archive that lags, or an
    entity missing from it, shows there before it shows in the rates.
    """

    version: str
    windows: int
    median_error: float
    p95_error: float
    alert_rate: float
    events: int = 0
    detected: int = 0
    recall: float | None = None
    threshold_median: float | None = None
    fault_detection: dict | None = None   # channel -> share of windows flagged with a synthetic fault (faults.py)
    entities: int = 0
    first_window: str | None = None
    last_window: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class PromotionRule:
    """Promote a challenger only when it is at least as good as the champion on every count.

    * median normal-data error <= champion's x (1 + ``error_tolerance``);
    * alert rate <= champion's x (1 + ``alert_rate_tolerance``) + ``alert_rate_slack``
      (the slack keeps a champion that flags nothing from blocking every challenger);
    * where labelled events exist: recall >= champion's - ``recall_tolerance``;
    * on every channel, the share of holdout windows flagged once a synthetic level shift is
      added to it (:mod:`~stream_ae.retraining.faults`) >= champion's - ``fault_tolerance``:
      neither error nor alert rate says whether a model can still see a fault.
    """

    error_tolerance: float = 0.05
    alert_rate_tolerance: float = 0.10
    alert_rate_slack: float = 0.005
    recall_tolerance: float = 0.0
    min_windows: int = 100
    fault_tolerance: float = 0.1

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Decision:
    """``promote`` and every reason, for and against, in words."""

    promote: bool
    reasons: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def _g(x: float) -> str:
    return f"{x:.4g}"


def swap_blocker(champion, challenger) -> str | None:
    """Why the consumers running ``champion`` could not hot-swap ``challenger`` in (artifacts; None:
    they can). A hot reload keeps the channels and the window length; a new sensor in the archive
    changes the channels of the next model trained on it."""
    from stream_ae.artifact import reload_shape

    if reload_shape(champion) == reload_shape(challenger):
        return None
    return (f"the challenger has channels {list(challenger.channels)} and windows of {challenger.model.window}, "
            f"the champion {list(champion.channels)} and {champion.model.window}: running consumers cannot "
            "hot-swap it, so the job does not promote it; promote it by hand (stream-ae models promote) and "
            "restart the consumers")


def decide(rule: PromotionRule, challenger: ModelMetrics, champion: ModelMetrics | None) -> Decision:
    """Apply ``rule``; no champion: the challenger is promoted when it scored enough windows."""
    if challenger.windows < rule.min_windows:
        return Decision(False, [f"challenger scored {challenger.windows} holdout windows, fewer than the "
                                f"{rule.min_windows} needed to judge it"])
    if champion is None:
        return Decision(True, ["no champion yet: the first valid model is promoted"])
    against, for_ = [], []
    limit = champion.median_error * (1 + rule.error_tolerance)
    text = (f"median normal-data error {_g(challenger.median_error)} {{}} champion "
            f"{_g(champion.median_error)} x {_g(1 + rule.error_tolerance)} = {_g(limit)}")
    (for_ if challenger.median_error <= limit else against).append(
        text.format("<=" if challenger.median_error <= limit else ">"))
    limit = champion.alert_rate * (1 + rule.alert_rate_tolerance) + rule.alert_rate_slack
    ok = challenger.alert_rate <= limit
    (for_ if ok else against).append(
        f"alert rate {_g(challenger.alert_rate)} {'<=' if ok else '>'} champion {_g(champion.alert_rate)} "
        f"x {_g(1 + rule.alert_rate_tolerance)} + {_g(rule.alert_rate_slack)} = {_g(limit)}")
    if challenger.recall is not None and champion.recall is not None:
        floor = champion.recall - rule.recall_tolerance
        ok = challenger.recall >= floor
        (for_ if ok else against).append(
            f"recall {challenger.detected}/{challenger.events} = {_g(challenger.recall)} "
            f"{'>=' if ok else '<'} champion {_g(champion.recall)} - {_g(rule.recall_tolerance)}")
    else:
        for_.append("no labelled events in the holdout: recall not compared")
    if challenger.fault_detection and champion.fault_detection:
        worse = regressions(challenger.fault_detection, champion.fault_detection, rule.fault_tolerance)
        (against if worse else for_).append(
            f"a {FAULT_SIGMA:g}-sigma level shift is flagged less often than by the champion on {', '.join(worse)}"
            if worse else f"a {FAULT_SIGMA:g}-sigma level shift on each channel is flagged at least as often as "
            f"by the champion, less {_g(rule.fault_tolerance)}")
    return Decision(not against, against + for_)


def overlaps(events: list[LabelledEvent], entity: np.ndarray, start: np.ndarray, end: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Which windows overlap a labelled event, and which events a mask of windows overlaps.

    Returns ``(in_event (B,) bool, hit (E, B) bool)`` for windows ``[start, end]`` (ns) of ``entity``.
    """
    in_event = np.zeros(len(start), dtype=bool)                            # (B,)
    hit = np.zeros((len(events), len(start)), dtype=bool)                  # (E, B)
    for i, ev in enumerate(events):
        mask = (entity == ev.entity) & (start <= ev.end) & (end >= ev.start)
        hit[i] = mask
        in_event |= mask
    return in_event, hit


def holdout_metrics(version: str, entity: np.ndarray, start: np.ndarray, end: np.ndarray, score: np.ndarray,
                    flagged: np.ndarray, ready: np.ndarray, threshold: np.ndarray,
                    events: list[LabelledEvent] = ()) -> tuple[ModelMetrics, np.ndarray]:
    """Metrics of one model's holdout windows; also returns the normal windows' scores (for plots).

    Arrays are (B,): entity (str), window start/end (ns), score, flagged, ready, threshold value.
    """
    events = list(events)
    in_event, hit = overlaps(events, entity, start, end)
    normal = ~in_event & np.isfinite(score)                                # (B,)
    normal_scores = score[normal].astype(np.float64)
    judged = normal & ready
    if normal_scores.size:
        median, p95 = (float(v) for v in np.quantile(normal_scores, [0.5, 0.95]))
    else:
        median = p95 = float("nan")
    rate = float(flagged[judged].mean()) if judged.any() else float("nan")
    detected = int((hit & flagged[None, :]).any(axis=1).sum()) if events else 0
    thr = threshold[ready & np.isfinite(threshold)]
    metrics = ModelMetrics(
        version=version, windows=int(normal.sum()), median_error=median, p95_error=p95, alert_rate=rate,
        events=len(events), detected=detected, recall=detected / len(events) if events else None,
        threshold_median=float(np.median(thr)) if thr.size else None, entities=len(set(entity.tolist())),
        first_window=iso_utc(start.min()) if start.size else None,
        last_window=iso_utc(end.max()) if end.size else None)
    return metrics, normal_scores


def iso_utc(ns) -> str:
    """``ns`` since the epoch as ISO UTC, as every time in a retrain report is written.

    >>> iso_utc(86_400 * 10**9)
    '1970-01-02T00:00:00+00:00'
    """
    return pd.Timestamp(int(ns), tz="UTC").isoformat()
