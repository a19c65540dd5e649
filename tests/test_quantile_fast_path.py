"""The quantile rule's inlined P² loop (``QuantileThreshold._step_p2``) takes the same steps as
``step``, score by score: in chunks of any size, past saturated scores, before and after a
state round trip."""
import json

import numpy as np
import pytest

from stream_ae.scoring import SCORE_MAX
from stream_ae.thresholds import QuantileThreshold, ThresholdSpec


@pytest.mark.parametrize("chunk", [1, 7, 128, 5000])
def test_chunks_of_step_many_take_the_steps_of_step(chunk):
    spec = ThresholdSpec(kind="quantile", quantile=0.75, factor=1.75, warmup=20)
    rng = np.random.default_rng(chunk)
    x = rng.exponential(size=5000)
    x[rng.choice(5000, 40, replace=False)] = SCORE_MAX   # saturated: flagged once ready, never learned
    x[:3] = SCORE_MAX                                     # ... and skipped while warming up
    a, b = QuantileThreshold(spec), QuantileThreshold(spec)
    flags, values, tripped = [], [], False
    for lo in range(0, len(x), chunk):
        f, v = a.step_many(x[lo:lo + chunk])
        flags.append(f)
        values.append(v)
        if lo >= 2500 and not tripped:   # a checkpoint's round trip in the middle
            a.load_state_dict(json.loads(json.dumps(a.state_dict())))
            tripped = True
    loop_values, loop_flags = [], []
    for s in x:
        loop_values.append(b.value)
        loop_flags.append(b.step(s))
    np.testing.assert_array_equal(np.concatenate(flags), loop_flags)
    np.testing.assert_array_equal(np.concatenate(values), loop_values)
    assert a.state_dict() == b.state_dict()
    assert 0.05 < np.mean(loop_flags) < 0.3
