"""A flood of new entity ids that each open an alert keeps the silence bookkeeping bounded, with
or without a silence rule: the entries of entities whose state was dropped go with them."""
from __future__ import annotations

import numpy as np
import pytest

from stream_ae.alerts import AlertPolicy
from stream_ae.scoring import Scorer
from stream_ae.stream.detector import Detector
from stream_ae.stream.detector_io import ReadingBatch
from stream_ae.thresholds import ThresholdSpec
from test_stream_detector import C, STEP_NS, T0_NS, make_artifact

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def scorer():
    return Scorer(make_artifact(), device="cpu")


@pytest.mark.parametrize("silence_s", [0.0, None])
def test_open_alerts_of_dropped_entities_are_forgotten(scorer, silence_s):
    """Before: entries stayed for dropped ids, all of them with silence_s = 0 ("never"), some with the default."""
    art = scorer.artifact
    det = Detector(scorer, ThresholdSpec.from_dict(art.threshold["spec"]), art.threshold["state"],
                   AlertPolicy(k=2, n=4, update_interval_s=10.0, quiet_s=20.0, silence_s=silence_s), art.window,
                   max_entities=5)
    det.table.max_parked = 5
    rng, offset, n = np.random.default_rng(0), 0, 24
    for i in range(150):
        values = 10 + rng.normal(0, 0.2, (n, C)).astype(np.float32)
        values[-6:, 1] += 1e4                      # its last windows are anomalous: an alert opens
        ts = T0_NS + (i * 3 + np.arange(n)) * STEP_NS
        det.process(ReadingBatch.from_arrays([f"flood-{i}"] * n, ts, values, np.zeros(n), np.arange(offset, offset + n)))
        offset += n
        det.table.take_dirty()                     # a checkpoint wrote the evicted states
    assert det.table.dropped > 100
    not_held = [e for e in det.clocks.open if not det.table.holds(e)]
    assert len(det.clocks.open) <= 2 * (det.table.max_entities + det.table.max_parked) and len(not_held) <= 1
