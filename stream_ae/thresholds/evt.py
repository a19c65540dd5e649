"""SPOT / DSPOT threshold: peaks over threshold with a generalized Pareto tail (Siffer et al. 2017).

Why not a plain ``libspot.Spot``: its state cannot be restored. It has no loader, its
attributes are read-only, ``raw()`` is a C struct holding pointers, its counters grow without
bound and its running sums depend on the whole past. So this class keeps its own bounded
record -- excess threshold ``t``, the last ``max_excess`` peaks (oldest first), the counters
``n`` and ``Nt``, the fitted ``gamma``/``sigma`` and the peaks added since that fit -- and uses
libspot only for the math: the tail is refitted by libspot (Grimshaw's method, compared with
the method of moments) on exactly the stored peaks.

When it is refitted: on every new peak while the tail holds at most ``1 / REFIT_SHARE``
peaks, then once ``REFIT_SHARE`` of them are new (every 10th peak at the default 500).
SPOT refits on every peak; a fit on 500 peaks costs ~60 us, and a drifting stream whose
scores sit between ``t`` and the threshold makes every window a peak -- that refit was 40 %
of the stream's per-reading CPU. Between refits each peak still moves the threshold through
``n / Nt`` with the last ``gamma``/``sigma``; one new peak in 500 moves an MLE fit far less
than its own standard error. ``_fit_tail`` feeds libspot ``[0]*5 + peaks`` with a
tiny level so that its excess threshold is exactly 0 and its peaks are exactly ours (checked
at every call). The refit is a pure function of the record, so ``load_state_dict`` restores
decisions bit for bit.

With too few peaks for a tail fit (fewer than ``MIN_PEAKS``, e.g. a 300-score calibration),
the threshold falls back to the empirical ``1 - q`` quantile of the calibration scores and
says so in ``state_dict()["method"] == "quantile"``; it switches to the GPD tail once enough
peaks were learned.

Known behaviour of SPOT with protected learning (libspot does the same): flagged scores are
never learned, so the stored peaks are cut off at the anomaly threshold and the refitted tail
is a little too light. On stationary Exp(1) scores with q=1e-3, level=0.98 the flagged share
grows from 0.1% to 0.27% over the first 1e5 and 0.53% over 1e6 scores (0.37% and 0.87% before
the peaks' share was capped, ``_tail_share``). Smaller ``q`` (1e-4) barely drifts; periodic
recalibration (``fit`` on recent validation scores) resets it.
"""

from __future__ import annotations

import math
from collections import deque

import libspot
import numpy as np

from stream_ae.configs import spec_dict
from stream_ae.errors import ArtifactError, StreamAEError
from stream_ae.thresholds.base import (
    MIN_FIT_SCORES, SCORE_MAX, STATE_FORMAT, Threshold, ThresholdSpec, as_scores, check_fit_scores, check_score,
    float_or_none, has_distinct, learnable, none_to_nan)

#: Fewest peaks for a GPD tail fit; fewer use the empirical quantile fallback.
MIN_PEAKS = 10
#: Refit the tail once this share of its stored peaks arrived since the last fit (see above).
REFIT_SHARE = 0.02
_PAD = 5                  # zeros in front of the peaks fed to libspot (fills its P² markers)
_FIT_LEVEL = 1e-9         # puts libspot's excess threshold on those zeros


class EvtThreshold(Threshold):
    """SPOT threshold at risk ``spec.q``; with ``spec.depth > 0``, DSPOT (drift-corrected).

    Examples
    --------
    >>> import numpy as np
    >>> th = EvtThreshold(ThresholdSpec(q=1e-3, level=0.98))
    >>> th.fit(np.random.default_rng(0).exponential(size=5000))
    >>> th.ready, bool(6.0 < th.value < 8.5)        # true 0.999 quantile: 6.91
    (True, True)
    >>> th.step(0.5), th.step(50.0)
    (False, True)
    """

    def __init__(self, spec: ThresholdSpec = ThresholdSpec()):
        if spec.kind != "evt":
            raise StreamAEError(f"EvtThreshold needs spec.kind='evt', got {spec.kind!r}")
        self.spec = spec
        self._reset()

    def _reset(self) -> None:
        self._method = "warmup"       # "gpd" | "quantile" (fallback) | "warmup"
        self._t = math.nan            # excess threshold (drift-corrected scale)
        self._z = math.nan            # anomaly threshold (drift-corrected scale)
        self._gamma = math.nan
        self._sigma = math.nan
        self._fallback = math.nan     # empirical 1 - q quantile of the calibration scores
        self._n = 0                   # scores learned (calibration + stream)
        self._nt = 0                  # peaks seen (may exceed the ones kept)
        self._since_fit = 0           # peaks pushed since gamma/sigma were fitted
        self._buf = np.zeros(_PAD + self.spec.max_excess)   # zeros, then peaks oldest first
        self._size = 0
        self._warm: list[float] = []
        self._recent: deque[float] = deque(maxlen=max(self.spec.depth, 1))
        self._sum = 0.0               # running sum of _recent, re-summed exactly every depth pushes
        self._pushes = 0
        self._value = math.nan

    @property
    def ready(self) -> bool:
        return self._method != "warmup"

    @property
    def value(self) -> float:
        return self._value

    # ---- learning -------------------------------------------------------------------------
    def fit(self, scores) -> None:
        depth = self.spec.depth
        x = check_fit_scores(learnable(as_scores(scores)), "EVT", MIN_FIT_SCORES + depth)
        self._reset()
        if depth:
            y = np.empty(x.shape[0] - depth)
            for xi in x[:depth].tolist():
                self._push_recent(xi)
            for i, xi in enumerate(x[depth:].tolist()):
                y[i] = xi - self._mean()
                self._push_recent(xi)
        else:
            y = x
        t = float(np.quantile(y, self.spec.level))
        peaks = y[y > t] - t
        self._t, self._n, self._nt = t, int(y.shape[0]), int(peaks.shape[0])
        self._fallback = float(np.quantile(y, 1.0 - self.spec.q))
        kept = peaks[-self.spec.max_excess:]
        self._size = kept.shape[0]
        self._buf[_PAD:_PAD + self._size] = kept
        self._refit()

    def _push_peak(self, excess: float) -> None:
        if self._size == self.spec.max_excess:
            self._buf[_PAD:-1] = self._buf[_PAD + 1:].copy()    # drop the oldest peak
            self._buf[-1] = excess
        else:
            self._buf[_PAD + self._size] = excess
            self._size += 1
        self._nt += 1
        self._since_fit += 1
        if self._method == "gpd" and self._since_fit < self._size * REFIT_SHARE:
            self._set_threshold(self._gamma, self._sigma)   # same tail, new n / Nt
        else:
            self._refit()

    def _refit(self) -> None:
        gamma, sigma = (_fit_tail(self._buf[:_PAD + self._size], self._size)
                        if self._size >= MIN_PEAKS else (math.nan, math.nan))
        self._since_fit = 0
        self._set_threshold(gamma, sigma)

    def _set_threshold(self, gamma: float, sigma: float) -> None:
        z = self._t + _gpd_excess_quantile(gamma, sigma, self._tail_share()) if self._nt else math.nan
        if math.isfinite(z) and sigma > 0:   # libspot gives sigma -0.0 on equal peaks of ~1e-9: z fell on t
            self._method, self._gamma, self._sigma, self._z = "gpd", gamma, sigma, z
        else:
            self._method, self._gamma, self._sigma = "quantile", math.nan, math.nan
            self._z = self._fallback
        self._value = self._z + self._mean() if self.spec.depth else self._z

    def _tail_share(self) -> float:
        """SPOT's ``q * n / Nt``: the share of the peaks the threshold leaves above it, capped at
        its value when ``t`` was fitted (``Nt / n = 1 - level`` then): peaks are never taken
        for rarer than the fit of ``t`` says they are.

        Without the cap a spell calmer than the calibration -- an idling machine, hours of
        scores below ``t`` -- raises ``n`` but not ``Nt`` until the share passes 1 and the
        threshold falls to ``t`` or below it. Every later peak is then flagged, flagged scores
        are never learned, and the threshold stays there for good: on Exp(1) scores after 30 000
        windows at half their scale, 1.6 % of normal windows were flagged instead of 0.1 %
        (0.19 % with the cap). The cap also holds back the drift of protected learning (below)."""
        return min(self.spec.q * self._n / self._nt, self.spec.q / (1.0 - self.spec.level))

    def _mean(self) -> float:
        return self._sum / len(self._recent)

    def _push_recent(self, x: float) -> None:
        oldest = self._recent[0] if len(self._recent) == self.spec.depth else 0.0
        self._recent.append(x)
        self._pushes += 1
        if self._pushes % self.spec.depth == 0:     # bound the rounding drift of the running sum
            self._sum = math.fsum(self._recent)
        else:
            self._sum += x - oldest

    def _learn(self, x: float) -> None:
        y = x - self._mean() if self.spec.depth else x
        self._n += 1
        if y > self._t:
            self._push_peak(y - self._t)
        if self.spec.depth:
            self._push_recent(x)
            self._value = self._z + self._mean()

    # ---- deciding -------------------------------------------------------------------------
    def step(self, score: float) -> bool:
        x = check_score(score)
        if self._method == "warmup":
            if x < SCORE_MAX:
                self._warm.append(x)
            if len(self._warm) >= self.spec.warmup:
                if _has_tail(self._warm, self.spec.level):
                    self.fit(self._warm)
                else:   # e.g. an idle machine's constant score: a fit would flag every higher score for good
                    del self._warm[0]
            return False
        if x > self._value:
            return True
        self._learn(x)
        return False

    def step_many(self, scores) -> tuple[np.ndarray, np.ndarray]:
        x = as_scores(scores)
        B = x.shape[0]
        flags = np.zeros(B, dtype=bool)
        values = np.full(B, math.nan)
        i = 0
        while i < B and not self.ready:
            self.step(x[i])
            i += 1
        if self.spec.depth:     # the moving mean changes with every learned score
            for j in range(i, B):
                values[j] = self._value
                flags[j] = self.step(x[j])
            return flags, values
        # Plain SPOT: between two scores above min(t, value) nothing changes but n.
        c = min(self._t, self._value)
        cand = np.flatnonzero(x[i:] > c) + i
        k = 0
        while k < cand.shape[0]:
            j = int(cand[k])
            values[i:j + 1] = self._value
            self._n += j - i
            xj = float(x[j])
            if xj > self._value:
                flags[j] = True
            else:
                self._learn(xj)
            i, k = j + 1, k + 1
            if min(self._t, self._value) < c:       # value fell below the scan level: rescan
                c = min(self._t, self._value)
                cand, k = np.flatnonzero(x[i:] > c) + i, 0
        values[i:] = self._value
        self._n += B - i
        return flags, values

    def calm_level(self) -> float:
        # Plain SPOT, ready: a score at or below min(t, value) is neither flagged nor a peak
        # (see step_many); DSPOT's moving mean changes with every score, so it has none.
        if self._method == "warmup" or self.spec.depth or math.isnan(self._t) or math.isnan(self._value):
            return math.nan
        return min(self._t, self._value)

    def absorb_calm(self, count: int) -> None:
        self._n += int(count)

    # ---- state ----------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "kind": "evt", "format": STATE_FORMAT, "spec": spec_dict(self.spec),
            "method": self._method, "t": float_or_none(self._t), "z": float_or_none(self._z),
            "gamma": float_or_none(self._gamma), "sigma": float_or_none(self._sigma),
            "fallback": float_or_none(self._fallback), "n": self._n, "nt": self._nt,
            "since_fit": self._since_fit,
            "peaks": self._buf[_PAD:_PAD + self._size].tolist(),
            "warm": list(self._warm),
            "recent": list(self._recent) if self.spec.depth else [],
            "recent_sum": self._sum, "pushes": self._pushes,
        }

    def load_state_dict(self, d: dict) -> None:
        self._check_state(d, "evt")
        self._reset()
        try:
            self._method = d["method"]
            self._t, self._z = none_to_nan(d["t"]), none_to_nan(d["z"])
            self._gamma, self._sigma = none_to_nan(d["gamma"]), none_to_nan(d["sigma"])
            self._fallback = none_to_nan(d["fallback"])
            self._n, self._nt = int(d["n"]), int(d["nt"])
            self._since_fit = int(d.get("since_fit", 0))  # states saved before it existed: just fitted
            peaks = np.asarray(d["peaks"], dtype=np.float64).reshape(-1)
            self._warm = [float(v) for v in d["warm"]]
            self._recent.extend(float(v) for v in d["recent"])
            self._sum, self._pushes = float(d["recent_sum"]), int(d["pushes"])
        except (KeyError, TypeError, ValueError) as exc:
            raise _corrupt(f"missing or malformed field ({exc})") from exc
        if self._method not in ("warmup", "gpd", "quantile") or peaks.shape[0] > self.spec.max_excess:
            raise _corrupt(f"method {self._method!r}, {peaks.shape[0]} peaks")
        if self._method != "warmup" and self.spec.depth and len(self._recent) != self.spec.depth:
            raise _corrupt(f"{len(self._recent)} recent scores for depth {self.spec.depth}")
        self._size = peaks.shape[0]
        self._buf[_PAD:_PAD + self._size] = peaks
        if self._method != "warmup":
            self._value = self._z + self._mean() if self.spec.depth else self._z


def _has_tail(scores: list[float], level: float) -> bool:
    """Whether the warm-up holds at least ``MIN_FIT_SCORES`` distinct scores and some above the
    ``level`` quantile. Without them (an idle machine's constant score, then the first scores
    of it running), the fit has one peak or none, its fallback threshold is the warm-up's top
    score, every higher score is flagged and never learned, and the threshold never moves again.

    >>> _has_tail([0.05] * 100, 0.98), _has_tail([0.05] * 99 + [0.06], 0.98)
    (False, False)
    >>> _has_tail([0.05] * 90 + [0.06 + i / 100 for i in range(10)], 0.98)
    True
    """
    x = np.asarray(scores)
    return has_distinct(x) and bool((x > np.quantile(x, level)).any())


def _corrupt(why: str) -> ArtifactError:
    return ArtifactError(f"corrupt EVT threshold state: {why}; re-calibrate the threshold")


def _fit_tail(padded: np.ndarray, size: int) -> tuple[float, float]:
    """GPD ``(gamma, sigma)`` fitted by libspot on exactly the ``size`` peaks after the zeros."""
    spot = libspot.Spot(q=1e-3, level=_FIT_LEVEL, max_excess=size)
    spot.fit(padded)
    if spot.excess_threshold != 0.0 or spot.Nt != size:
        raise StreamAEError(
            f"libspot {getattr(libspot, '__version__', '?')} did not fit the given peaks exactly "
            f"(excess threshold {spot.excess_threshold}, {spot.Nt} of {size} peaks); "
            "pin libspot to the version in pyproject.toml")
    return float(spot.gamma), float(spot.sigma)


def _gpd_excess_quantile(gamma: float, sigma: float, r: float) -> float:
    """Excess over ``t`` exceeded with probability ``r`` of the peaks' share (SPOT eq. 1)."""
    if gamma == 0.0:
        return -sigma * math.log(r)
    return sigma / gamma * (r ** -gamma - 1.0)
