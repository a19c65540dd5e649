"""What a finished training run says about its data, before anyone relies on the model.

Two silent failures of a model trained on data with a few extreme readings (a sensor's
error code, a unit slip):

* one such reading in the training split makes its channel's standard deviation huge, so every
  normal reading of that channel scales to about zero, and a fault on it scores as normal;
* a few such windows in the validation split become the EVT tail the threshold is fitted to,
  and the threshold lands orders of magnitude above every normal score.

A third: windows that join readings across an outage of the feed (no ``--max-gap``). The model
learns such a junction as normal, and in the stream the first windows after every outage join
it too, where the jump can raise an alert.

None stops training; each becomes a warning, logged, kept in the artifact
(``training.warnings``) and printed by ``stream-ae train``.
"""
from __future__ import annotations

import numpy as np

from stream_ae.training.sampling import GAP_RATIO

#: a channel's standard deviation this many times the range of its central 98 % of readings is
#: the work of a few extreme readings (for normal data it is about 0.2; a quantised sensor that
#: mostly reads one value and sometimes the next, as SKAB's flow rate, about 0.4)
SPREAD_RATIO = 100.0
#: a threshold this many times the validation scores' 0.9 quantile was fitted to outliers
THRESHOLD_RATIO = 100.0


def spread_warnings(rows: np.ndarray, std: np.ndarray, channels) -> list[str]:
    """Channels whose standard deviation (training rows (N, C), the scaler's std (C,)) a few readings dominate.

    >>> rows = np.tile(np.arange(1000.0)[:, None], (1, 2)); rows[500, 1] = 1e25
    >>> spread_warnings(rows, rows.std(axis=0), ("a", "b"))[0][:63]
    "channel 'b': its standard deviation (3.16e+23) is 3.2e+20 times"
    """
    x = np.asarray(rows, np.float64)
    with np.errstate(all="ignore"):
        q01, q50, q99 = np.nanpercentile(np.where(np.isfinite(x), x, np.nan), [1, 50, 99], axis=0)
    # a channel whose central readings are all one value: its own size (or 1) stands for the range
    central = np.where(q99 > q01, q99 - q01, np.maximum(np.abs(q50), 1.0) * 10)
    out = []
    for c, name in enumerate(channels):
        if std[c] > SPREAD_RATIO * central[c]:
            top = float(np.nanmax(np.abs(x[:, c])))
            out.append(f"channel {name!r}: its standard deviation ({std[c]:.3g}) is {std[c] / central[c]:.2g} "
                       f"times the range of its central 98 % of readings, the work of a few extreme readings "
                       f"(largest |value| {top:.3g}); scaled by it, the channel's normal readings are all about 0 "
                       "and a fault on it will not show. Remove those readings, or leave the channel out (--channels)")
    return out


def calibration_warnings(scores: np.ndarray, threshold: float | None) -> list[str]:
    """A threshold fitted to a few outlying validation windows rather than to normal scores.

    >>> calibration_warnings(np.r_[np.linspace(0.01, 0.1, 990), [2e10] * 10], 3.4e10)[0][:48]
    'the threshold (3.4e+10) is 3.7e+11 times the 0.9'
    """
    if threshold is None or not np.isfinite(threshold) or len(scores) == 0:
        return []
    q90 = float(np.quantile(np.asarray(scores, np.float64), 0.9))
    if q90 <= 0 or threshold <= THRESHOLD_RATIO * q90:
        return []
    return [f"the threshold ({threshold:.3g}) is {threshold / q90:.2g} times the 0.9 quantile of the validation "
            f"scores ({q90:.3g}): a few validation windows score far above the rest (largest "
            f"{float(np.max(scores)):.3g}), and the threshold was fitted to them, so the model will flag almost "
            "nothing. Remove the extreme readings from the validation span (the newest part of the history) "
            "and train again"]


def gap_warnings(gaps: dict) -> list[str]:
    """Gaps in the history that windows join across (``sampling`` stats' ``gaps``).

    >>> gap_warnings({"bridged": 2, "longest_s": 600.0, "median_step_s": 1.0})[0][:60]
    'the history has 2 gap(s) in its readings (steps of more than'
    >>> gap_warnings({"bridged": 0, "longest_s": 0.0, "median_step_s": 1.0})
    []
    """
    if not gaps.get("bridged"):
        return []
    step = gaps["median_step_s"]
    return [f"the history has {gaps['bridged']} gap(s) in its readings (steps of more than {GAP_RATIO:g} times "
            f"the median step of {step:.3g} s; the longest {gaps['longest_s']:.3g} s), and with no --max-gap a "
            "window joins the readings on either side: the model learns such a junction as normal, and in the "
            "stream the windows after every outage join it too. Pass --max-gap SECONDS (e.g. "
            f"{max(GAP_RATIO * step, 1.0):.3g}) so that a window never spans a longer step (in Python: "
            "WindowSpec.max_gap_s)"]
