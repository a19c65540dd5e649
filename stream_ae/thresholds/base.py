"""Threshold contract: the spec saved in the artifact, the ABC every rule follows, the factory.

A threshold turns a stream of anomaly scores into decisions, causally: the decision for a
score uses only the scores before it, and a flagged score is never learned (the same
protection as river's ``protect_anomaly_detector``).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass

import numpy as np

from stream_ae.configs import from_mapping, spec_dict
from stream_ae.errors import ArtifactError, ConfigError, DataError

#: Fewest scores :meth:`Threshold.fit` accepts (and the smallest allowed ``warmup``).
MIN_FIT_SCORES = 10
#: The score ``scoring.Scorer`` gives a window whose error overflowed float32 (the largest
#: float32). It says the window could not be measured, not how badly it was reconstructed, so
#: no rule learns it: a ready rule flags it (it exceeds any threshold learned without it), a
#: warming-up rule skips it, and :meth:`Threshold.fit` leaves it out. Learned, one such score
#: during warm-up held a P² quantile rule at 1e32-1e34 for good (P² interpolates an upper
#: quantile towards the largest score seen) and an EVT rule at ~9x its level 10 000 windows on.
SCORE_MAX = float(np.finfo(np.float32).max)
STATE_FORMAT = 1
KINDS = ("evt", "quantile")


@dataclass(frozen=True)
class ThresholdSpec:
    """Hyperparameters of a threshold rule, saved in the artifact.

    Parameters
    ----------
    kind
        ``"evt"`` (SPOT, peaks over threshold) or ``"quantile"`` (factor x running quantile).
    q, level
        evt: risk (probability of a normal score above the threshold) and the tail level.
    quantile, factor
        quantile: the threshold is ``factor * running quantile(quantile)``; ``factor`` must
        exceed 1. Flagged scores are never learned, so the learned sample is cut off at the
        threshold; at ``factor <= 1`` its running quantile lies below the cut, the threshold
        falls, more is cut, and it keeps falling (67 % of stationary Exp(1) scores flagged
        with a rolling 0.99 quantile and factor 1, where 1 % was meant).
    warmup
        Scores needed before the threshold is ready, when it was not calibrated with ``fit``.
    max_excess
        evt: most recent peaks kept for the tail fit.
    depth
        evt: DSPOT drift handling; ``0`` is plain SPOT, ``d > 0`` thresholds the score minus
        the mean of the last ``d`` normal scores.
    window
        quantile: ``None`` keeps a quantile over all learned scores (P²); an int keeps an
        exact quantile over the last ``window`` learned scores.

    Examples
    --------
    >>> spec = ThresholdSpec.from_dict({"kind": "quantile", "quantile": 0.99})
    >>> spec.to_dict()["quantile"]
    0.99
    >>> ThresholdSpec.from_dict({"kind": "evt", "risk": 0.01})
    Traceback (most recent call last):
    ...
    stream_ae.errors.ConfigError: unknown threshold setting(s): risk; valid: kind, q, level, quantile, factor, warmup, max_excess, depth, window
    """

    kind: str = "evt"
    q: float = 1e-3
    level: float = 0.98
    quantile: float = 0.99
    factor: float = 1.2
    warmup: int = 100
    max_excess: int = 500
    depth: int = 0
    window: int | None = None

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first invalid setting."""
        if self.kind not in KINDS:
            raise ConfigError(f"threshold kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        for name in ("q", "level", "quantile", "factor"):
            _check_number(name, getattr(self, name))
        for name in ("warmup", "max_excess", "depth"):
            _check_int(name, getattr(self, name))
        _open_unit("q", self.q)
        _open_unit("level", self.level)
        _open_unit("quantile", self.quantile)
        if self.q >= 1.0 - self.level:
            raise ConfigError(
                f"threshold q={self.q} must be smaller than 1 - level={1.0 - self.level:g}: "
                "the anomaly quantile has to lie inside the fitted tail")
        if not (self.factor > 0 and math.isfinite(self.factor)):
            raise ConfigError(f"threshold factor must be a positive number, got {self.factor}")
        if self.kind == "quantile" and self.factor <= 1.0:
            raise ConfigError(
                f"threshold factor must exceed 1 for the quantile rule, got {self.factor}: flagged scores are "
                "never learned, so at factor <= 1 the threshold keeps falling and flags ever more normal "
                "windows. Use e.g. factor=1.2 with quantile=0.99 (threshold.factor)")
        if self.warmup < MIN_FIT_SCORES + self.depth:
            raise ConfigError(
                f"threshold warmup must be at least {MIN_FIT_SCORES + self.depth} "
                f"({MIN_FIT_SCORES} + depth), got {self.warmup}")
        if self.max_excess < 10:
            raise ConfigError(f"threshold max_excess must be at least 10, got {self.max_excess}")
        if self.depth < 0:
            raise ConfigError(f"threshold depth must be >= 0 (0 disables drift handling), got {self.depth}")
        if self.window is not None:
            _check_int("window", self.window)
            if self.window < 2:
                raise ConfigError(f"threshold window must be None or >= 2, got {self.window}")

    def to_dict(self) -> dict:
        """JSON-safe dict of every setting."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ThresholdSpec":
        """Build from a dict; unknown keys are a :class:`ConfigError`, missing keys take defaults."""
        return from_mapping(cls, d, "threshold")


def _check_number(name: str, x) -> None:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        raise ConfigError(f"threshold {name} must be a number, got {x!r}")


def _check_int(name: str, x) -> None:
    if isinstance(x, bool) or not isinstance(x, int):
        raise ConfigError(f"threshold {name} must be an integer, got {x!r}")


def _open_unit(name: str, x: float) -> None:
    if not 0.0 < x < 1.0:
        raise ConfigError(f"threshold {name} must lie strictly between 0 and 1, got {x}")


class Threshold(ABC):
    """A causal, self-updating decision rule over anomaly scores.

    ``step`` decides with the current value, then learns the score only if it was not
    flagged. Until calibrated (``fit``) or warmed up (``spec.warmup`` scores), ``ready`` is
    False, ``value`` is NaN and ``step`` returns False while learning. A score saturated at
    :data:`SCORE_MAX` is never learned, and does not count towards the warm-up.
    """

    spec: ThresholdSpec

    @property
    @abstractmethod
    def ready(self) -> bool:
        """Whether decisions are made (False while warming up)."""

    @property
    @abstractmethod
    def value(self) -> float:
        """The threshold the next score is compared with (NaN while warming up)."""

    @abstractmethod
    def fit(self, scores) -> None:
        """Calibrate from past (validation) scores, replacing any learned state."""

    @abstractmethod
    def step(self, score: float) -> bool:
        """Decide whether ``score`` is anomalous (``score > value``), then learn it unless flagged."""

    def step_many(self, scores) -> tuple[np.ndarray, np.ndarray]:
        """Decide a batch in order: flags ``(B,)`` bool and the value each was compared with ``(B,)``.

        Identical to calling :meth:`step` on each score in turn.
        """
        x = as_scores(scores)
        flags = np.zeros(x.shape[0], dtype=bool)
        values = np.empty(x.shape[0], dtype=np.float64)
        for i, s in enumerate(x.tolist()):
            values[i] = self.value
            flags[i] = self.step(s)
        return flags, values

    def calm_level(self) -> float:
        """A level at or below which a run of scores is *calm*: :meth:`step_many` would flag
        none of them, compare each with :attr:`value`, and learn nothing from them but their
        count (:meth:`absorb_calm`). NaN when the rule has no such level (every score must go
        through :meth:`step_many`), which is the default."""
        return math.nan

    def absorb_calm(self, count: int) -> None:
        """:meth:`step_many` of ``count`` scores at or below :meth:`calm_level`."""
        raise NotImplementedError(f"{type(self).__name__} has no calm level")

    @abstractmethod
    def state_dict(self) -> dict:
        """JSON-safe state; :meth:`load_state_dict` restores it exactly."""

    @abstractmethod
    def load_state_dict(self, d: dict) -> None:
        """Restore a state from :meth:`state_dict`; later decisions equal the original's."""

    def _check_state(self, d: dict, kind: str) -> None:
        if not isinstance(d, dict) or d.get("kind") != kind or d.get("format") != STATE_FORMAT:
            raise ArtifactError(
                f"not a {kind} threshold state of format {STATE_FORMAT}: "
                f"got kind={_get(d, 'kind')!r}, format={_get(d, 'format')!r}")
        if d.get("spec") != spec_dict(self.spec):
            raise ArtifactError(
                f"threshold state was saved with spec {d.get('spec')} but this threshold has "
                f"{self.spec.to_dict()}; build the threshold from the saved spec")


def _get(d, key):
    return d.get(key) if isinstance(d, dict) else None


def as_scores(scores) -> np.ndarray:
    """Scores as a 1-D float64 array; NaN or infinity is a :class:`DataError` (a score must be a
    finite number: ``Scorer`` saturates an overflowing window at ``scoring.SCORE_MAX``)."""
    x = np.asarray(scores, dtype=np.float64).reshape(-1)
    if not np.isfinite(x).all():
        i = int(np.flatnonzero(~np.isfinite(x))[0])
        raise DataError(f"scores contain {x[i]} at index {i}; a score must be finite: drop windows that "
                        "could not be scored, or saturate them, before thresholding")
    return x


def learnable(x: np.ndarray) -> np.ndarray:
    """The scores of ``x`` a rule may learn: all but those saturated at :data:`SCORE_MAX`.

    >>> learnable(np.array([1.0, SCORE_MAX, 2.0])).tolist()
    [1.0, 2.0]
    """
    return x[x < SCORE_MAX]


def has_distinct(scores) -> bool:
    """Whether ``scores`` hold at least ``MIN_FIT_SCORES`` distinct values, what a rule needs
    to start from them (a calibration, a warm-up).

    >>> has_distinct([0.05] * 100), has_distinct([i / 10 for i in range(10)])
    (False, True)
    """
    return np.unique(np.asarray(scores)).size >= MIN_FIT_SCORES


def check_fit_scores(x: np.ndarray, what: str, fewest: int) -> np.ndarray:
    """``x`` when a calibration may use it: at least ``fewest`` scores, ``MIN_FIT_SCORES`` of
    them distinct; else a :class:`DataError` saying why. Fitted on a few values (an idle
    machine's constant score), a rule puts its threshold on them, flags every higher score,
    learns none of them and never moves.

    >>> check_fit_scores(np.full(50, 0.05), "EVT", 10)
    Traceback (most recent call last):
    ...
    stream_ae.errors.DataError: EVT calibration needs at least 10 distinct scores, got 1 among 50 ...
    """
    if x.shape[0] < fewest:
        raise DataError(f"{what} calibration needs at least {fewest} scores, got {x.shape[0]} not saturated; "
                        "use more validation windows")
    if not has_distinct(x):
        distinct = np.unique(x).size
        raise DataError(f"{what} calibration needs at least {MIN_FIT_SCORES} distinct scores, got {distinct} "
                        f"among {x.shape[0]} (a machine idle over the validation span?); a threshold on them "
                        "would flag every higher score for good. Calibrate on a span where it runs")
    return x


def check_score(score) -> float:
    """One score as a float; NaN or infinity is a :class:`DataError`."""
    x = float(score)
    if not math.isfinite(x):
        raise DataError(f"score is {x}; a score must be finite: drop windows that could not be scored, "
                        "or saturate them, before thresholding")
    return x


def float_or_none(x: float) -> float | None:
    """JSON-safe float: NaN becomes None (floats round-trip exactly through JSON)."""
    return None if x != x else float(x)


def none_to_nan(x) -> float:
    return math.nan if x is None else float(x)


def build_threshold(spec: ThresholdSpec) -> Threshold:
    """The threshold rule named by ``spec.kind``.

    >>> build_threshold(ThresholdSpec(kind="quantile")).ready
    False
    """
    from stream_ae.thresholds.evt import EvtThreshold
    from stream_ae.thresholds.quantile import QuantileThreshold

    return {"evt": EvtThreshold, "quantile": QuantileThreshold}[spec.kind](spec)


def threshold_to_dict(threshold: Threshold) -> dict:
    """``{"spec": ..., "state": ...}`` as stored in the artifact."""
    return {"spec": threshold.spec.to_dict(), "state": threshold.state_dict()}


def threshold_from_dict(d: dict) -> Threshold:
    """Rebuild a threshold saved with :func:`threshold_to_dict`."""
    if not isinstance(d, dict) or set(d) != {"spec", "state"}:
        raise ArtifactError("a saved threshold must be a mapping with exactly the keys 'spec' and 'state'")
    threshold = build_threshold(ThresholdSpec.from_dict(d["spec"]))
    threshold.load_state_dict(d["state"])
    return threshold
