"""Quantile rule: flag a score above ``factor x`` a running quantile of the learned scores.

Built on river: ``river.stats.Quantile`` (P², all history) or, with ``spec.window``,
``river.stats.RollingQuantile`` (exact, last ``window`` learned scores).

Exact restore without pickle: river's P² lives in Rust; its ``__getstate__`` is a fixed
170-byte bincode record (q, 5 marker increments, 5 desired positions, 5 positions, 5 heights,
the count of first values, a sorted flag). ``state_dict`` decodes it into named JSON numbers
and ``load_state_dict`` re-encodes it; a layout change in a future river fails loudly (the
decode/encode round trip is checked) instead of restoring a wrong state. The rolling quantile
is a function of its window only, so its state is the window, replayed on load.

Because flagged scores are never learned, the learned scores are cut off at the threshold;
with ``factor = 1`` the running quantile of a censored sample creeps down over long runs. Use
``factor > 1`` (e.g. 1.2 x the 0.99 quantile) so the cut lies well above the quantile.

Nothing is flagged while warming up, and the rule starts only once its last ``warmup``
scores hold ``MIN_FIT_SCORES`` distinct values. One large score then is learned (a saturated one,
``SCORE_MAX``, never is). P² interpolates an upper quantile towards the largest score seen: on
Exp(1) scores, quantile 0.99, warm-up 20, one score of 1e6 left the threshold 5x too high
10 000 windows on and at its level 50 000 on. ``spec.window`` forgets it after ``window`` scores.
"""

from __future__ import annotations

import math
import struct
from collections import deque

import numpy as np
from river import stats

from stream_ae.configs import spec_dict
from stream_ae.errors import ArtifactError, StreamAEError
from stream_ae.thresholds.base import (
    MIN_FIT_SCORES, SCORE_MAX, STATE_FORMAT, Threshold, ThresholdSpec, as_scores, check_fit_scores,
    check_score, has_distinct, learnable)

_P2 = struct.Struct("<21dBB")
_P2_FIELDS = ("increments", "desired", "positions", "heights")


class QuantileThreshold(Threshold):
    """``factor x`` running ``quantile`` of the scores learned so far.

    Examples
    --------
    >>> th = QuantileThreshold(ThresholdSpec(kind="quantile", quantile=0.5, factor=2.0, window=100))
    >>> th.fit([float(i % 10) for i in range(100)])
    >>> th.value                                   # 2 x the median of 0..9
    9.0
    >>> th.step(20.0), th.step(3.0)
    (True, False)
    """

    def __init__(self, spec: ThresholdSpec = ThresholdSpec(kind="quantile")):
        if spec.kind != "quantile":
            raise StreamAEError(f"QuantileThreshold needs spec.kind='quantile', got {spec.kind!r}")
        self.spec = spec
        self._reset()

    def _reset(self) -> None:
        if self.spec.window is None:
            self._stat = stats.Quantile(self.spec.quantile)
            self._recent: deque[float] | None = None
        else:
            self._stat = stats.RollingQuantile(self.spec.quantile, self.spec.window)
            self._recent = deque(maxlen=self.spec.window)
        self._seen = 0                   # scores learned
        self._calibrated = False
        self._started = False            # warmed up on the stream's own scores
        self._warm: list[float] = []     # the last ``warmup`` scores, until it starts
        self._value = math.nan

    @property
    def ready(self) -> bool:
        return self._calibrated or self._started

    @property
    def value(self) -> float:
        return self._value

    def _learn(self, x: float) -> None:
        if x >= SCORE_MAX:           # reaches here only from the warm-up (a ready rule flags it)
            return
        self._stat.update(x)
        if self._recent is not None:
            self._recent.append(x)
        self._seen += 1
        if self.ready:
            self._value = self.spec.factor * self._stat.get()

    def _warm_up(self, x: float) -> None:
        """Nothing is flagged while warming up. The rule starts on the last ``warmup`` scores once
        they hold ``MIN_FIT_SCORES`` distinct values: on an idle machine's constant score it
        would start at ``factor x`` that score, flag every score of the machine running, learn
        none of them and never move (a review measured 100 % flagged)."""
        if x < SCORE_MAX:
            self._warm.append(x)
        if len(self._warm) < self.spec.warmup:
            return
        if not has_distinct(self._warm):
            del self._warm[0]
            return
        warm, self._warm, self._started = self._warm, [], True
        for s in warm:
            self._learn(s)

    def fit(self, scores) -> None:
        x = check_fit_scores(learnable(as_scores(scores)), "quantile", MIN_FIT_SCORES)
        self._reset()
        self._calibrated = True
        for s in x.tolist():
            self._learn(s)

    def step(self, score: float) -> bool:
        x = check_score(score)
        if not self.ready:
            self._warm_up(x)
            return False
        if x > self._value:
            return True
        self._learn(x)
        return False

    def step_many(self, scores) -> tuple[np.ndarray, np.ndarray]:
        x = as_scores(scores)
        flags = np.zeros(x.shape[0], dtype=bool)
        values = np.full(x.shape[0], math.nan)
        scores, i = x.tolist(), 0
        while i < len(scores) and not self.ready:   # warming up: nothing flagged, the value NaN
            self._warm_up(scores[i])
            i += 1
        if self._recent is None and i < len(scores):
            self._step_p2(scores, i, flags, values)
            return flags, values
        learn = self._learn
        for i, s in enumerate(scores[i:], start=i):
            v = self._value
            values[i] = v
            if s > v:
                flags[i] = True
            else:
                learn(s)
        return flags, values

    def _step_p2(self, scores: list, i: int, flags: np.ndarray, values: np.ndarray) -> None:
        """:meth:`step_many`'s loop for the ready P² rule, inlined (the stream's hot path: half of
        the detector's finishing time went to the method calls per score). Same steps as
        :meth:`_learn`, on river's Rust estimator directly."""
        stat, factor, v, seen = self._stat._quantile, self.spec.factor, self._value, self._seen
        update, get, out, flagged = stat.update, stat.get, [], []
        for j, s in enumerate(scores[i:], start=i):
            out.append(v)
            if s > v:
                flagged.append(j)
            elif s < SCORE_MAX:
                update(s)
                seen += 1
                v = factor * get()
        if seen != self._seen:
            self._stat._is_updated = True
        self._seen, self._value = seen, v
        values[i:] = out
        flags[flagged] = True

    # ---- state ----------------------------------------------------------------------------
    def state_dict(self) -> dict:
        d = {"kind": "quantile", "format": STATE_FORMAT, "spec": spec_dict(self.spec),
             "seen": self._seen, "calibrated": self._calibrated, "started": self._started,
             "warm": list(self._warm)}
        if self._recent is not None:
            d["window"] = list(self._recent)
        else:
            d["p2"] = _decode_p2(self._stat._quantile.__getstate__()) if self._seen else None
        return d

    def load_state_dict(self, d: dict) -> None:
        self._check_state(d, "quantile")
        self._reset()
        try:
            seen, calibrated = int(d["seen"]), bool(d["calibrated"])
            # a state saved before session 30 has neither: its rule started after ``warmup`` scores
            started = bool(d.get("started", seen >= self.spec.warmup))
            warm = [float(x) for x in d.get("warm", [])]
            if self._recent is not None:
                for x in d["window"]:
                    self._stat.update(float(x))
                    self._recent.append(float(x))
            elif d["p2"] is not None:
                self._stat._quantile.__setstate__(_encode_p2(d["p2"], self.spec.quantile))
                self._stat._is_updated = True
        except (KeyError, TypeError, ValueError, struct.error) as exc:
            raise ArtifactError(f"corrupt quantile threshold state ({exc}); re-calibrate the threshold") from exc
        self._seen, self._calibrated, self._started, self._warm = seen, calibrated, started, warm
        if self.ready and self._seen:
            self._value = self.spec.factor * self._stat.get()


def _decode_p2(raw: bytes) -> dict:
    """River's P² record as named JSON numbers (checked to encode back to the same bytes)."""
    if len(raw) != _P2.size:
        raise StreamAEError(_layout_changed(len(raw)))
    v = _P2.unpack(raw)
    d = {"q": v[0], **{name: list(v[1 + 5 * i:6 + 5 * i]) for i, name in enumerate(_P2_FIELDS)},
         "count": v[21], "sorted": bool(v[22])}
    if _encode_p2(d, v[0]) != raw:
        raise StreamAEError(_layout_changed(len(raw)))
    return d


def _encode_p2(d: dict, q: float) -> bytes:
    if d["q"] != q or any(len(d[name]) != 5 for name in _P2_FIELDS):
        raise ValueError(f"P² record for q={d['q']} with 5 markers expected (q={q})")
    values = [float(d["q"])] + [float(x) for name in _P2_FIELDS for x in d[name]]
    return _P2.pack(*values, int(d["count"]), int(bool(d["sorted"])))


def _layout_changed(n: int) -> str:
    import river
    return (f"river {river.__version__} stores its P² quantile in an unknown layout ({n} bytes); "
            "use the river version pinned in pyproject.toml or window=N (rolling quantile)")
