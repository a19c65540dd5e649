"""A threshold that warms up on a constant score (an idle machine) used to fit its fallback
at that score and flag every higher one for good: flagged scores are never learned."""

from __future__ import annotations

import numpy as np
import pytest

from stream_ae.thresholds import ThresholdSpec, build_threshold


@pytest.mark.parametrize("spec", [ThresholdSpec(kind="evt", warmup=100),
                                  ThresholdSpec(kind="evt", depth=20, warmup=100)], ids=["evt", "dspot"])
def test_a_warm_up_of_one_repeated_score_waits_for_scores_that_vary(spec):
    th = build_threshold(spec)
    flags, _ = th.step_many(np.full(150, 0.05))
    assert not th.ready and not flags.any()   # still warming up: nothing to fit a tail to
    normal = 0.06 + np.random.default_rng(0).exponential(0.01, 20_000)
    flags, _ = th.step_many(normal)
    assert th.ready
    assert flags[-5000:].mean() < 0.01, flags[-5000:].mean()   # stuck: 100 %
