"""Thresholds that used to settle where they flag most normal windows, and never leave.

- the quantile rule at factor 1 (its default): flagged scores are never learned, so its
  learned sample is cut at the threshold and the threshold keeps falling;
- `--set threshold.kind=quantile` on an EVT artifact took the artifact's unused factor (1.0);
- an EVT warm-up of an idle machine's constant score, then its first running scores, fitted
  a tail of one peak: every later running score flagged, none learned;
- equal peaks of ~1e-9 made libspot return sigma -0.0, which put the threshold on `t`.
"""

from __future__ import annotations

import types

import msgspec
import numpy as np
import pytest

from stream_ae.errors import ConfigError
from stream_ae.stream.detector import calibrated_threshold
from stream_ae.stream.settings import load_settings
from stream_ae.thresholds import EvtThreshold, ThresholdSpec, build_threshold, threshold_to_dict


def exp_scores(n, seed=1):
    return np.random.default_rng(seed).exponential(size=n)


def test_the_quantile_rule_refuses_a_factor_that_cannot_hold_and_its_default_holds():
    with pytest.raises(ConfigError, match="factor must exceed 1 for the quantile rule"):
        ThresholdSpec(kind="quantile", factor=1.0)
    th = build_threshold(ThresholdSpec(kind="quantile"))
    flags, _ = th.step_many(exp_scores(200_000))
    assert flags[100:].mean() < 0.01   # 1.2 x the 0.99 quantile of Exp(1) is a 0.4 % tail


def test_switching_the_rule_in_settings_takes_that_rules_defaults():
    cal = EvtThreshold(ThresholdSpec(factor=1.0)); cal.fit(exp_scores(5000, seed=0))   # as older artifacts hold
    artifact = types.SimpleNamespace(threshold=threshold_to_dict(cal), version="v1")
    settings = load_settings(env={}, overrides=["threshold.kind=quantile"])
    overrides = {k: v for k, v in msgspec.structs.asdict(settings.threshold).items() if v is not None}
    spec, state = calibrated_threshold(artifact, overrides)
    assert (spec.kind, spec.quantile, spec.factor, state) == ("quantile", 0.99, 1.2, None)
    flags, _ = build_threshold(spec).step_many(exp_scores(200_000))
    assert flags[100:].mean() < 0.01   # was 67 %


@pytest.mark.parametrize("idle", [np.full(200, 0.0123), np.r_[np.full(199, 0.0123), 0.0124]],
                         ids=["constant", "constant-then-one-running"])
def test_an_evt_warm_up_of_an_idle_machine_does_not_lock_onto_its_first_running_scores(idle):
    th = EvtThreshold(ThresholdSpec())
    th.step_many(idle)
    assert not th.ready
    running = 0.2 + 0.02 * np.random.default_rng(0).exponential(size=20_000)
    flags, _ = th.step_many(running)
    assert th.ready and flags[-10_000:].mean() < 0.01   # was 100 %


@pytest.mark.parametrize("size", [1e-9, 1e-12])
def test_a_tail_of_equal_tiny_peaks_falls_back_to_the_quantile_not_onto_t(size):
    # the level (0.98) quantile falls between 0.5 and 0.5 + size: 100 equal peaks of ~size
    scores = np.r_[np.linspace(0.1, 0.4, 4890), np.full(10, 0.5), np.full(100, 0.5 + size)]
    th = EvtThreshold(ThresholdSpec())
    th.fit(scores)
    assert th.state_dict()["method"] == "quantile"
    assert th.value >= np.quantile(scores, 1 - th.spec.q)
    assert not th.step(0.5 + size)   # a calibration score is not an anomaly
