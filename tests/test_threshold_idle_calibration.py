"""A rule started on a few values (an idle machine's constant score) locks: it flags every
higher score, learns none and never moves.

Session 29 guarded the EVT warm-up; the quantile rule's warm-up and both rules' calibration
(``fit``, what training runs on the validation scores) had no guard. A review measured the
quantile rule (0.99 x 1.2) after a constant warm-up flagging 100 % of the running windows.
"""

from __future__ import annotations

import numpy as np
import pytest

from stream_ae.errors import DataError
from stream_ae.thresholds import EvtThreshold, QuantileThreshold, ThresholdSpec, build_threshold

SPEC = ThresholdSpec(kind="quantile", quantile=0.99, factor=1.2, warmup=100)


def running(n=20_000, seed=0):
    return 0.2 + 0.02 * np.random.default_rng(seed).exponential(size=n)


@pytest.mark.parametrize("window", [None, 1_000], ids=["p2", "rolling"])
@pytest.mark.parametrize("idle", [np.full(300, 0.0123), np.r_[np.full(299, 0.0123), 0.0124]],
                         ids=["constant", "constant-then-one-running"])
def test_a_quantile_warm_up_of_an_idle_machine_waits_for_distinct_scores(idle, window):
    import dataclasses

    th = QuantileThreshold(dataclasses.replace(SPEC, window=window))
    flags, values = th.step_many(idle)
    assert not th.ready and not flags.any() and np.isnan(values).all()
    flags, _ = th.step_many(running())
    assert th.ready and flags[-10_000:].mean() < 0.01   # was 100 %


def test_a_warm_up_saved_halfway_goes_on_where_it_stopped():
    scores = np.r_[np.full(150, 0.0123), running(5_000)]
    whole = QuantileThreshold(SPEC)
    expected, _ = whole.step_many(scores)
    first = QuantileThreshold(SPEC)
    head, _ = first.step_many(scores[:158])       # idle, then 8 running scores (9 values): warming up
    state = first.state_dict()
    assert not first.ready and 0 < len(state["warm"]) <= SPEC.warmup
    second = QuantileThreshold(SPEC)
    second.load_state_dict(state)
    tail, _ = second.step_many(scores[158:])
    np.testing.assert_array_equal(np.r_[head, tail], expected)
    assert second.value == whole.value


def test_a_state_saved_before_the_guard_loads_as_it_ran():
    th = QuantileThreshold(SPEC)
    th.step_many(running(200))
    state = th.state_dict()
    del state["started"], state["warm"]           # what a state written before session 30 holds
    again = QuantileThreshold(SPEC)
    again.load_state_dict(state)
    assert again.ready and again.value == th.value


@pytest.mark.parametrize("kind", ["evt", "quantile"])
def test_a_calibration_on_equal_scores_is_refused(kind):
    th = build_threshold(ThresholdSpec(kind=kind))
    with pytest.raises(DataError, match=r"at least 10 distinct scores, got 1 among 5000.*idle"):
        th.fit(np.full(5000, 0.05))
    th.fit(np.r_[np.full(4990, 0.05), 0.05 + np.arange(1, 11) / 1000])   # ten more values: enough
    assert th.ready


def test_the_evt_warm_up_still_starts_on_distinct_scores():
    th = EvtThreshold(ThresholdSpec())
    flags, _ = th.step_many(running(5_000))
    assert th.ready and flags.mean() < 0.01
