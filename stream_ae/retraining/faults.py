"""Synthetic faults: does a model still see a fault on each channel?

Without labels, the promotion rule compares normal-data error and alert rate. Neither says
whether a model can still detect anything: each model's error is in its own scaled units (a
challenger whose scaler saw a few extreme readings on one channel divides that channel by a
larger spread, so its errors there are smaller without being better), and a model that flags
nothing has the lowest alert rate of all. The check here closes that gap. It adds a level
shift of ``sigma`` times each channel's robust spread, measured on the holdout's own raw
readings (so the fault's size does not depend on either model's scaler), to the second half
of sampled holdout windows, one channel at a time, and counts the windows each model flags
against its calibrated threshold. The promotion rule then asks the challenger to flag, on
every channel, at least the champion's share less a tolerance.

:func:`measure` reads the holdout and loads the models; the rest is pure.
"""
from __future__ import annotations

import numpy as np

FAULT_SIGMA = 6.0       # the level shift, in robust standard deviations of the channel
FAULT_WINDOWS = 64      # holdout windows sampled for the check


def robust_spread(rows: np.ndarray) -> np.ndarray:
    """Per channel of ``rows`` ``(N, C)``: 1.4826 x the median absolute deviation (a standard
    deviation that a few extreme readings do not move), the standard deviation where that is
    0 (a channel mostly at one value), NaN where both are 0 or no value is known.

    >>> rows = np.array([[0.0, 5.0], [1.0, 5.0], [2.0, 5.0], [100.0, 5.0]])
    >>> robust_spread(rows).round(3).tolist()
    [1.483, nan]
    """
    x = np.asarray(rows, np.float64)
    seen = ~np.isnan(x).all(axis=0)   # a channel with no value warns in numpy's nan-functions: NaN here
    mad, std = np.full(x.shape[1], np.nan), np.full(x.shape[1], np.nan)
    if seen.any():   # (no warnings.catch_warnings: it swaps the process's filters under other threads)
        xs = x[:, seen]
        mad[seen] = 1.4826 * np.nanmedian(np.abs(xs - np.nanmedian(xs, axis=0)), axis=0)
        std[seen] = np.nanstd(xs, axis=0)
    out = np.where(mad > 0, mad, std)
    return np.where(np.isfinite(out) & (out > 0), out, np.nan)


def shifted(windows: np.ndarray, channel: int, size: float) -> np.ndarray:
    """Copies of ``windows`` ``(B, T, C)`` with ``size`` added to ``channel`` over the second half
    of each window (a step inside it, which the newest rows of the score always see).

    >>> shifted(np.zeros((1, 4, 2)), 1, 3.0)[0].tolist()
    [[0.0, 0.0], [0.0, 0.0], [0.0, 3.0], [0.0, 3.0]]
    """
    out = np.array(windows, np.float32, copy=True)
    out[:, out.shape[1] // 2:, channel] += np.float32(size)
    return out


def detection_shares(scorer, threshold: float, windows: np.ndarray, spread: dict[str, float],
                     sigma: float = FAULT_SIGMA) -> dict[str, float] | None:
    """Per channel of ``scorer`` with a known ``spread`` (raw units, by name): the share of
    ``windows`` ``(B, T, C)`` (raw, the scorer's channel order) flagged (score above
    ``threshold``) once a ``sigma`` x spread level shift is added to that channel. None when
    the threshold is not known (a model that calibrated none) or there are no windows."""
    if not np.isfinite(threshold) or not len(windows):
        return None
    shares = {}
    for c, name in enumerate(scorer.channels):
        size = spread.get(name)
        if size is None or not np.isfinite(size):
            continue
        score = scorer.score_windows(shifted(windows, c, sigma * size)).score
        shares[name] = round(float(np.mean(score > threshold)), 4)
    return shares


def regressions(challenger: dict[str, float] | None, champion: dict[str, float] | None,
                tolerance: float) -> list[str]:
    """The channels, in words, on which the challenger flags a smaller share of the faulted
    windows than the champion less ``tolerance`` (channels both know; none without shares).

    >>> regressions({"a": 0.0, "b": 1.0}, {"a": 1.0, "b": 1.0, "c": 1.0}, 0.1)
    ['a (0 < 1 - 0.1)']
    """
    if not challenger or not champion:
        return []
    return [f"{name} ({challenger[name]:.4g} < {champion[name]:.4g} - {tolerance:.4g})"
            for name in challenger if name in champion and challenger[name] < champion[name] - tolerance]


def measure(history_uri: str, start: str, end: str, artifacts: dict, device: str, seed: int) -> dict:
    """``{name: shares or None}`` for ``artifacts`` (``{name: Artifact}``, the first one's
    readings set each channel's spread) on windows sampled from ``[start, end)`` of the history."""
    from stream_ae.data.history import History
    from stream_ae.scoring import Scorer
    from stream_ae.thresholds import ThresholdSpec, build_threshold
    from stream_ae.training.sampling import sample_windows

    history, spread, out, sampled = History.open(history_uri, start=start, end=end), None, {}, {}
    for name, art in artifacts.items():
        key = (art.window, tuple(art.channels))   # the same windows: read them once
        if key not in sampled:
            parts = sample_windows(history, history.layout, art.window, art.channels, FAULT_WINDOWS, seed,
                                   start=start, end=end, val_fraction=0.5)[:2]
            sampled[key] = np.concatenate([w.windows for w in parts])   # (B, T, C) raw
        windows = sampled[key]
        if spread is None:
            spread = dict(zip(art.channels, robust_spread(windows.reshape(-1, windows.shape[2])).tolist()))
        threshold = build_threshold(ThresholdSpec.from_dict(art.threshold["spec"]))
        threshold.load_state_dict(art.threshold["state"])
        out[name] = detection_shares(Scorer(art, device), float(threshold.value), windows, spread)
    return out
