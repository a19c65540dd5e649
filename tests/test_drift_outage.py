"""After an outage longer than the horizon, the level is judged once a whole horizon has been
seen again: judged on the first hours after it, a plant's daily rhythm was reported as drift
(and triggered a retrain)."""

from __future__ import annotations

import numpy as np
import pytest

from stream_ae.drift import DriftMonitor
from test_drift import HOUR, feed


def plant(days: float, per_hour: int, seed: int):
    """Log-normal scores whose log level swings +/-0.3 over each day, ``per_hour`` a hour."""
    n = int(days * 24 * per_hour)
    ts = np.arange(n, dtype=np.int64) * (HOUR // per_hour)
    return np.exp(0.3 * np.sin(2 * np.pi * ts / (24 * HOUR))) * np.random.default_rng(seed).lognormal(0, 0.3, n), ts


@pytest.mark.parametrize("back", [5.0, 5.25], ids=["resumes at midnight", "resumes at 6 am"])
@pytest.mark.parametrize("per_hour", [20, 240])
def test_an_outage_then_the_same_daily_rhythm_is_not_drift(per_hour, back):
    scores, ts = plant(12, per_hour, seed=0)
    assert feed(DriftMonitor(reference=0.0), scores, ts) == []
    keep = (ts < 2 * 24 * HOUR) | (ts >= int(back * 24 * HOUR))   # nothing from day 2 to `back`
    assert feed(DriftMonitor(reference=0.0), scores[keep], ts[keep]) == []
