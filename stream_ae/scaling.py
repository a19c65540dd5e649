"""Per-channel standardisation, fitted on the training split only.

The scaler is a plain value object: it does no I/O and is saved inside the
artifact as JSON (``to_dict`` / ``from_dict``).
"""
from __future__ import annotations

import math

import numpy as np

from stream_ae.errors import ArtifactError, DataError

# A channel counts as constant when its standard deviation is at most MIN_REL_STD
# times its mean's size (float32 keeps about 7 digits: less is rounding flicker of an
# unchanging reading) or at most MIN_STD. Its scale is then 1.0 (not the tiny std), so
# a later change shows in the channel's raw units instead of being blown up by a
# near-zero divisor. The floor is relative because units are the user's: strain in m/m
# varies by 5e-7 around 1e-5, and an absolute floor of 1e-6 took that for constant.
MIN_STD = 1e-20
MIN_REL_STD = 1e-7
# A constant channel's scale: 1.0, or one float32 step at its mean where that is larger. At
# 1e9 a step is 64: an unchanging reading that rounds to two neighbouring float32 values
# flickers by 64 raw units, which at scale 1.0 drowned every other channel's error (a review
# measured 99 % of the reconstruction error on such a channel, and a fault elsewhere missed).
# Artifacts written before this load with "one" and score as they were trained.
CONSTANT_SCALES = ("one", "float32_step")


class ChannelScaler:
    """Standardise each channel: ``(x - mean) / scale``.

    Statistics are accumulated in float64 and ignore NaN, so missing readings
    in the training split do not poison the fit. ``partial_fit`` may be called
    on successive chunks (Chan's parallel update); ``fit`` starts afresh.

    Parameters
    ----------
    min_std, min_rel_std
        Channels whose standard deviation is at or below ``min_std`` or
        ``min_rel_std * |mean|`` are treated as constant and get ``scale = 1.0``,
        or one float32 step at their mean where that is larger (``constant_scale``).
        (Artifacts written before ``min_rel_std`` existed load with 0: their
        absolute floor alone, as they were trained; before ``constant_scale``, "one".)

    Examples
    --------
    >>> import numpy as np
    >>> rows = np.array([[1.0, 5.0], [3.0, 5.0], [np.nan, 5.0]], dtype=np.float32)
    >>> scaler = ChannelScaler().fit(rows)
    >>> scaler.mean.tolist(), scaler.scale.tolist()
    ([2.0, 5.0], [1.0, 1.0])
    >>> scaler.transform(np.array([[4.0, 6.0]], dtype=np.float32))
    array([[2., 1.]], dtype=float32)
    >>> ChannelScaler.from_dict(scaler.to_dict()).scale.tolist()
    [1.0, 1.0]
    >>> meter = np.array([[1e9], [1e9 + 64], [1e9]], dtype=np.float32)   # one float32 step of flicker
    >>> ChannelScaler().fit(meter).scale.tolist()
    [64.0]
    """

    def __init__(self, min_std: float = MIN_STD, min_rel_std: float = MIN_REL_STD,
                 constant_scale: str = "float32_step"):
        if constant_scale not in CONSTANT_SCALES:
            raise ArtifactError(f"constant_scale must be one of {CONSTANT_SCALES}, got {constant_scale!r}")
        self.min_std, self.min_rel_std, self.constant_scale = float(min_std), float(min_rel_std), constant_scale
        self.count: np.ndarray | None = None  # (C,) float64, finite values seen
        self._mean: np.ndarray | None = None  # (C,) float64 running mean
        self._m2: np.ndarray | None = None  # (C,) float64 sum of squared deviations

    # -- fitting -----------------------------------------------------------
    def fit(self, rows: np.ndarray) -> "ChannelScaler":
        """Fit on ``rows`` (N, C), replacing any earlier statistics."""
        self.count = self._mean = self._m2 = None
        return self.partial_fit(rows)

    def partial_fit(self, rows: np.ndarray) -> "ChannelScaler":
        """Add the finite values of ``rows`` (N, C) to the statistics."""
        x = np.asarray(rows, dtype=np.float64)
        if x.ndim != 2:
            raise DataError(f"ChannelScaler expects rows of shape (N, C), got shape {x.shape}")
        if self.count is not None and x.shape[1] != self.count.shape[0]:
            raise DataError(
                f"ChannelScaler was fitted on {self.count.shape[0]} channels, got rows with {x.shape[1]}"
            )
        finite = np.isfinite(x)  # (N, C)
        n_b = finite.sum(axis=0).astype(np.float64)  # (C,)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean_b = np.where(finite, x, 0.0).sum(axis=0) / np.maximum(n_b, 1.0)
            m2_b = (np.where(finite, x - mean_b, 0.0) ** 2).sum(axis=0)
        if self.count is None:
            self.count, self._mean, self._m2 = n_b, mean_b, m2_b
            return self
        n_a, mean_a, m2_a = self.count, self._mean, self._m2
        n = n_a + n_b
        safe_n = np.maximum(n, 1.0)
        delta = mean_b - mean_a
        self._mean = mean_a + delta * n_b / safe_n
        self._m2 = m2_a + m2_b + delta**2 * n_a * n_b / safe_n
        self.count = n
        return self

    # -- fitted statistics ------------------------------------------------
    def _require_fitted(self) -> None:
        if self.count is None:
            raise DataError("ChannelScaler is not fitted: call fit(rows) on the training split first")
        empty = np.flatnonzero(self.count == 0)
        if empty.size:
            raise DataError(
                f"channel(s) at position {empty.tolist()} have no finite value in the training "
                "split; drop those channels (Layout.channels) or widen the training period"
            )

    @property
    def n_channels(self) -> int:
        self._require_fitted()
        return int(self.count.shape[0])

    @property
    def mean(self) -> np.ndarray:
        """(C,) float64 mean of each channel."""
        self._require_fitted()
        return self._mean.copy()

    @property
    def std(self) -> np.ndarray:
        """(C,) float64 population standard deviation of each channel."""
        self._require_fitted()
        return np.sqrt(np.maximum(self._m2, 0.0) / self.count)

    @property
    def scale(self) -> np.ndarray:
        """(C,) float64 divisor: the std, or for constant channels 1.0 (or one float32 step at
        their mean, where that is larger: ``constant_scale``)."""
        std = self.std
        unit = 1.0
        if self.constant_scale == "float32_step":
            unit = np.maximum(1.0, np.spacing(np.abs(self._mean).astype(np.float32)).astype(np.float64))
        return np.where(self.constant(), unit, std)

    def constant(self) -> np.ndarray:
        """(C,) bool: the channels treated as constant (see the class's parameters)."""
        return self.std <= np.maximum(self.min_std, self.min_rel_std * np.abs(self._mean))

    # -- use ------------------------------------------------------------------
    def transform(self, rows: np.ndarray) -> np.ndarray:
        """Scale ``rows`` (..., C) to float32; NaN stays NaN."""
        x = np.asarray(rows, dtype=np.float32)
        if x.shape[-1] != self.n_channels:
            raise DataError(
                f"ChannelScaler was fitted on {self.n_channels} channels, got data with {x.shape[-1]}"
            )
        mean, scale = self.affine()
        return (x - mean) / scale

    def affine(self) -> tuple[np.ndarray, np.ndarray]:
        """``(center, scale)``, float32 (C,): ``transform(x) == (x - center) / scale``."""
        return self._mean.astype(np.float32), self.scale.astype(np.float32)

    def inverse_transform(self, scaled: np.ndarray) -> np.ndarray:
        """Undo ``transform``: back to raw units, float32."""
        x = np.asarray(scaled, dtype=np.float32)
        return x * self.scale.astype(np.float32) + self._mean.astype(np.float32)

    # -- persistence ----------------------------------------------------------
    def to_dict(self) -> dict:
        """JSON-safe state (plain floats and lists)."""
        self._require_fitted()
        return {
            "min_std": self.min_std,
            "min_rel_std": self.min_rel_std,
            "constant_scale": self.constant_scale,
            "count": self.count.tolist(),
            "mean": self._mean.tolist(),
            "m2": self._m2.tolist(),
        }

    @classmethod
    def from_dict(cls, d: dict) -> "ChannelScaler":
        """Rebuild a fitted scaler from ``to_dict`` output."""
        expected = {"min_std", "count", "mean", "m2"}
        if not isinstance(d, dict) or set(d) - {"min_rel_std", "constant_scale"} != expected:
            got = sorted(d) if isinstance(d, dict) else type(d).__name__
            raise ArtifactError(f"scaler state must have keys {sorted(expected)} (and min_rel_std), got {got}")
        arrays = [np.asarray(d[k], dtype=np.float64) for k in ("count", "mean", "m2")]
        if len({a.shape for a in arrays}) != 1 or arrays[0].ndim != 1:
            raise ArtifactError("scaler state has count/mean/m2 of different lengths")
        floors = (float(d["min_std"]), float(d.get("min_rel_std", 0.0)))   # absent: written before it existed
        if not all(np.isfinite(a).all() for a in arrays) or not all(map(math.isfinite, floors)):
            raise ArtifactError("scaler state holds non-finite numbers; the artifact is corrupt")
        scaler = cls(*floors, constant_scale=d.get("constant_scale", "one"))
        scaler.count, scaler._mean, scaler._m2 = arrays
        return scaler

    def __repr__(self) -> str:
        n = "unfitted" if self.count is None else f"{self.count.shape[0]} channels"
        return f"ChannelScaler({n}, min_std={self.min_std}, min_rel_std={self.min_rel_std})"
