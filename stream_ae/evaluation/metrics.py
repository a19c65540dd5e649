"""Point-wise outlier metrics and the NAB-style changepoint score, as SKAB computes them.

Point-wise metrics are *pooled*: confusion counts are summed over every test point of
every file before F1, FAR and MAR are formed (SKAB's ``chp_score(..., metric="binary")``).
All rates here are fractions, not percentages.

The changepoint score follows SKAB's ``tsad`` implementation of NAB
(``chp_score(..., metric="nab", window_width="60s", anomaly_window_destination="righter")``)
with its defaults (``clear_anomalies_mode=True``, ``intersection_mode="cut right window"``,
``scale_func="improved"``, ``scale_koef=1``):

* every labelled changepoint at time ``t`` opens a detection window ``[t, t + 60 s]``,
  both ends inclusive; when a window reaches into the next one, the next one's left
  edge is moved to this one's right edge ("cut right window");
* predicted changepoints are the points where the binary prediction changes state,
  ``|diff(prediction)|``, with the first point counted when it is already flagged;
* a window holding at least one predicted changepoint is a true positive scored by the
  *first* one inside it: ``y[int(1000 * (t_pred - left) / (right - left))]`` on the
  1000-point curve ``y(x) = (A_tp - A_fp)/2 * (1 - tanh(x)/tanh(pi/2)) + A_fp`` over
  ``x`` in ``[-pi/2, pi/2]`` (``A_tp`` at the left edge, ``A_fp`` at the right edge);
  further predictions inside the window are ignored;
* an empty window is a false negative (``A_fn``); every predicted changepoint outside
  all windows is a false positive (``A_fp``);
* raw scores, the null score (all windows missed, ``n * A_fn``) and the perfect score
  (``n * A_tp``) are summed over files, and the result is
  ``100 * (raw - null) / (perfect - null)``: 100 is perfect, 0 is "detect nothing",
  below 0 is worse than that.

Profiles (``A_tp, A_fp, A_fn``): standard (1, -0.11, -1), low_fp (1, -0.22, -1),
low_fn (1, -0.11, -2). Assumption where SKAB's code is silent: a window cut to zero width
scores its detection as if at the left edge (SKAB would divide by zero). The score is not
rounded here (SKAB rounds to 2 decimals for display).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from stream_ae.errors import DataError

NAB_PROFILES: dict[str, tuple[float, float, float]] = {
    "standard": (1.0, -0.11, -1.0),
    "low_fp": (1.0, -0.22, -1.0),
    "low_fn": (1.0, -0.11, -2.0),
}
_DETAIL = 1000  # points on SKAB's scaled-sigmoid curve


@dataclass
class Confusion:
    """Point-wise confusion counts; add them to pool over files.

    Examples
    --------
    >>> c = confusion([1, 1, 0, 0, 1], [1, 0, 1, 0, 1])
    >>> (c.tp, c.fp, c.tn, c.fn)
    (2, 1, 1, 1)
    >>> round(c.f1, 4), c.far, round(c.mar, 4)
    (0.6667, 0.5, 0.3333)
    """

    tp: int = 0
    fp: int = 0
    tn: int = 0
    fn: int = 0

    def __add__(self, other: "Confusion") -> "Confusion":
        return Confusion(self.tp + other.tp, self.fp + other.fp,
                         self.tn + other.tn, self.fn + other.fn)

    @property
    def f1(self) -> float:
        """TP / (TP + (FP + FN) / 2); NaN when there is nothing to score."""
        den = self.tp + (self.fp + self.fn) / 2
        return self.tp / den if den else float("nan")

    @property
    def far(self) -> float:
        """False alarm rate FP / (FP + TN), a fraction."""
        den = self.fp + self.tn
        return self.fp / den if den else float("nan")

    @property
    def mar(self) -> float:
        """Missed alarm rate FN / (FN + TP), a fraction."""
        den = self.fn + self.tp
        return self.fn / den if den else float("nan")

    def as_dict(self) -> dict[str, float]:
        """``{"f1", "far", "mar", "tp", "fp", "tn", "fn"}``."""
        return {"f1": self.f1, "far": self.far, "mar": self.mar,
                "tp": self.tp, "fp": self.fp, "tn": self.tn, "fn": self.fn}


def _binary(a, name: str) -> np.ndarray:
    arr = np.asarray(a)
    if arr.ndim != 1:
        raise DataError(f"{name} must be a 1-D array of 0/1, got shape {arr.shape}")
    return arr.astype(bool)


def confusion(labels, flags) -> Confusion:
    """Count TP / FP / TN / FN between point labels and point flags (same length)."""
    y, p = _binary(labels, "labels"), _binary(flags, "flags")
    if y.shape != p.shape:
        raise DataError(f"labels ({y.size}) and flags ({p.size}) differ in length")
    return Confusion(tp=int(np.sum(y & p)), fp=int(np.sum(~y & p)),
                     tn=int(np.sum(~y & ~p)), fn=int(np.sum(y & ~p)))


def predicted_changepoints(flags) -> np.ndarray:
    """Points where the prediction changes state, SKAB's ``|diff|`` with the first point kept.

    >>> predicted_changepoints([1, 1, 0, 0, 1]).astype(int).tolist()
    [1, 0, 1, 0, 1]
    """
    p = _binary(flags, "flags")
    out = np.zeros_like(p)
    if p.size:
        out[0] = p[0]
        out[1:] = p[1:] != p[:-1]
    return out


def detection_windows(cp_ts: np.ndarray, width: int) -> list[tuple[int, int]]:
    """Right-hand detection windows ``[t, t + width]`` with "cut right window" overlaps.

    >>> detection_windows(np.array([0, 50, 200]), 60)
    [(0, 60), (60, 110), (200, 260)]
    """
    wins = [[int(t), int(t) + width] for t in np.sort(np.asarray(cp_ts, dtype=np.int64))]
    for i in range(len(wins) - 1):
        if wins[i][1] >= wins[i + 1][0]:
            wins[i + 1][0] = wins[i][1]
    return [(a, b) for a, b in wins]


@dataclass
class NabTally:
    """Per-file (or pooled) NAB outcome: counts and relative TP positions in [0, 1]."""

    n_windows: int = 0
    fp: int = 0
    fn: int = 0
    tp_positions: list[float] = field(default_factory=list)

    def __add__(self, other: "NabTally") -> "NabTally":
        return NabTally(self.n_windows + other.n_windows, self.fp + other.fp,
                        self.fn + other.fn, self.tp_positions + other.tp_positions)


def nab_tally(ts, changepoint, flags, window_s: float = 60.0) -> NabTally:
    """Match predicted changepoints (state changes of ``flags``) to labelled ones.

    ``ts`` are int64 nanoseconds (any monotone clock in ns works).

    >>> s = 10**9
    >>> t = np.arange(200) * s
    >>> cp = np.zeros(200, bool); cp[[20, 150]] = True
    >>> fl = np.zeros(200, bool); fl[50:100] = True   # rise at 50 (in window), fall at 100 (FP)
    >>> tally = nab_tally(t, cp, fl)
    >>> (tally.n_windows, tally.fp, tally.fn, tally.tp_positions)
    (2, 1, 1, [0.5])
    """
    t = np.asarray(ts, dtype=np.int64)
    cp = _binary(changepoint, "changepoint")
    pred = predicted_changepoints(flags)
    if not (t.shape == cp.shape == pred.shape):
        raise DataError(f"ts ({t.size}), changepoint ({cp.size}) and flags ({pred.size}) "
                        "differ in length")
    wins = detection_windows(t[cp], int(round(window_s * 1e9)))
    times = np.sort(t[pred])
    tally = NabTally(n_windows=len(wins))
    if not wins:
        tally.fp = int(times.size)
        return tally
    outside = times < wins[0][0]
    for i, (left, right) in enumerate(wins):
        inside = times[(times >= left) & (times <= right)]
        if inside.size == 0:
            tally.fn += 1
        else:
            span = right - left
            tally.tp_positions.append(float(inside[0] - left) / span if span else 0.0)
        nxt = wins[i + 1][0] if i + 1 < len(wins) else None
        outside |= (times > right) & (times < nxt) if nxt is not None else times > right
    tally.fp = int(np.sum(outside))
    return tally


def _curve(a_tp: float, a_fp: float) -> np.ndarray:
    x = np.linspace(-np.pi / 2, np.pi / 2, _DETAIL)
    return (a_tp - a_fp) / 2 * -np.tanh(x) / np.tanh(np.pi / 2) + (a_tp - a_fp) / 2 + a_fp


def nab_score(tally: NabTally) -> dict[str, float]:
    """Normalised NAB score (100 perfect, 0 null) for each profile; NaN without changepoints.

    >>> nab_score(NabTally(n_windows=2, fp=0, fn=0, tp_positions=[0.0, 0.0]))["standard"]
    100.0
    >>> nab_score(NabTally(n_windows=2, fp=0, fn=2))["low_fn"]
    0.0
    >>> round(nab_score(NabTally(n_windows=1, fp=1, fn=0, tp_positions=[0.0]))["standard"], 2)
    94.5
    """
    out = {}
    for name, (a_tp, a_fp, a_fn) in NAB_PROFILES.items():
        y = _curve(a_tp, a_fp)
        idx = np.minimum((np.asarray(tally.tp_positions) * _DETAIL).astype(int), _DETAIL - 1)
        raw = a_fp * tally.fp + a_fn * tally.fn + float(np.sum(y[idx]))
        null, perfect = tally.n_windows * a_fn, tally.n_windows * a_tp
        out[name] = 100 * (raw - null) / (perfect - null) if tally.n_windows else float("nan")
    return out
