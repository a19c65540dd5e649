"""A Scorer with a batch size under the padding step (32 windows) pads a call to its batch
size, not to 32. Before, one window at ``batch_size=1`` ran 32 forward passes of one padded
window each (13.2 ms against 1.1 ms at 32): lowering the backfill's ``score_batch`` to cut
latency made scoring up to 12x slower."""

from __future__ import annotations

import numpy as np
import pytest

from stream_ae.scoring import Scorer
from test_scoring import _rows, artifact  # noqa: F401


@pytest.mark.parametrize("batch_size, windows, calls", [(1, 1, 1), (1, 3, 3), (8, 1, 1), (8, 9, 2), (64, 5, 1)])
def test_forward_passes_are_the_windows_over_the_batch_size(artifact, batch_size, windows, calls):  # noqa: F811
    scorer = Scorer(artifact, device="cpu", batch_size=batch_size)
    graph, seen = scorer._graph, []

    def counting(rows, starts):
        seen.append(len(starts))
        return graph(rows, starts)

    scorer._graph = counting
    rows = _rows()
    starts = np.arange(windows, dtype=np.int64) * 3
    got = scorer.score_rows(rows, starts).score
    assert len(seen) == calls and max(seen) <= max(batch_size, 32)
    reference = Scorer(artifact, device="cpu").score_rows(rows, starts).score
    np.testing.assert_allclose(got, reference, rtol=1e-5)
