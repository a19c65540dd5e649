"""Point-wise metrics and the NAB changepoint score against hand-computed values."""
import math

import numpy as np
import pytest

from stream_ae.errors import DataError
from stream_ae.evaluation.metrics import (
    NabTally, confusion, detection_windows, nab_score, nab_tally, predicted_changepoints)

S = 10**9  # ns per second


def test_pooled_counts_add_up_before_rates():
    a = confusion([1, 1, 0, 0], [1, 0, 0, 0])      # tp 1, fn 1, tn 2
    b = confusion([0] * 6 + [1, 1], [1] * 8)        # fp 6, tp 2
    pooled = a + b
    assert (pooled.tp, pooled.fp, pooled.tn, pooled.fn) == (3, 6, 2, 1)
    assert pooled.f1 == pytest.approx(3 / (3 + (6 + 1) / 2))
    assert pooled.far == pytest.approx(6 / 8)
    assert pooled.mar == pytest.approx(1 / 4)
    # pooling is not the mean of the per-file F1s
    assert pooled.f1 != pytest.approx((a.f1 + b.f1) / 2)


def test_flag_everything_baseline_has_full_false_alarm_rate():
    labels = np.r_[np.zeros(46), np.ones(54)]       # 54 % anomalous, like SKAB's test points
    c = confusion(labels, np.ones(100))
    assert c.f1 == pytest.approx(54 / (54 + 46 / 2))  # ~0.70, SKAB's "flag everything" figure
    assert c.far == 1.0 and c.mar == 0.0


def test_undefined_rates_are_nan_and_bad_input_raises():
    c = confusion([0, 0], [0, 0])
    assert math.isnan(c.f1) and math.isnan(c.mar) and c.far == 0.0
    with pytest.raises(DataError):
        confusion([0, 1, 0], [0, 1])


def test_predicted_changepoints_are_state_changes():
    assert predicted_changepoints([0, 1, 1, 0, 0]).astype(int).tolist() == [0, 1, 0, 1, 0]


def test_detection_windows_cut_the_right_window_on_overlap():
    assert detection_windows(np.array([100, 130]), 60) == [(100, 160), (160, 190)]


def test_nab_toy_case_by_hand():
    # changepoints at 100 s and 300 s, 60 s windows [100, 160] and [300, 360]
    t = np.arange(500) * S
    cp = np.zeros(500, bool)
    cp[[100, 300]] = True
    flags = np.zeros(500, bool)
    flags[115:200] = True        # rise at 115 s: TP at 15/60 of window 1; fall at 200 s: FP
    tally = nab_tally(t, cp, flags)
    assert (tally.n_windows, tally.fp, tally.fn) == (2, 1, 1)
    assert tally.tp_positions == [pytest.approx(0.25)]
    # SKAB's curve at index int(0.25 * 1000) = 250 of linspace(-pi/2, pi/2, 1000)
    x = -np.pi / 2 + 250 * np.pi / 999
    tp_std = (1 + 0.11) / 2 * (1 - np.tanh(x) / np.tanh(np.pi / 2)) - 0.11
    raw = tp_std - 0.11 - 1.0                       # one TP, one FP, one FN
    expected = 100 * (raw - (-2.0)) / (2.0 - (-2.0))
    assert nab_score(tally)["standard"] == pytest.approx(expected)


def test_nab_profiles_order_and_bounds():
    perfect = nab_score(NabTally(n_windows=3, tp_positions=[0.0, 0.0, 0.0]))
    assert all(v == pytest.approx(100.0) for v in perfect.values())
    assert all(v == pytest.approx(0.0) for v in nab_score(NabTally(n_windows=3, fn=3)).values())
    noisy = nab_score(NabTally(n_windows=2, fp=10, tp_positions=[0.0, 0.0]))
    assert noisy["low_fp"] < noisy["standard"]       # false positives cost double in low_fp
    late = nab_score(NabTally(n_windows=1, tp_positions=[0.99]))
    # a detection at the window's right edge earns ~A_fp: (-0.11 + 1) / 2 -> 44.5, above a miss
    assert late["standard"] == pytest.approx(44.5, abs=0.2)
    assert math.isnan(nab_score(NabTally())["standard"])


def test_nab_detection_at_window_edges_counts_inside():
    t = np.arange(200) * S
    cp = np.zeros(200, bool)
    cp[50] = True
    at_right_edge = np.zeros(200, bool)
    at_right_edge[110:] = True                       # rise exactly at 50 s + 60 s
    tally = nab_tally(t, cp, at_right_edge)
    assert (tally.fp, tally.fn, tally.tp_positions) == (0, 0, [1.0])
