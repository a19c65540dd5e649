"""A reading the codec accepts but the model's float32 arithmetic cannot hold (~1e20 on a
standardised channel) is an anomaly like any other: its windows score the largest float32,
the channel is named, the alert event is valid on the wire and recognised after a restart."""

from __future__ import annotations

import numpy as np
import pytest
from test_stream_detector import make_artifact, plant

from stream_ae.scoring import SCORE_MAX, Scorer

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def scorer(one_torch_thread) -> Scorer:
    return Scorer(make_artifact(), device="cpu")


@pytest.mark.parametrize("reading, named", [(1e20, True), (3e38, False), (-3e38, False)])
def test_a_window_whose_error_overflows_scores_the_largest_float32_and_names_its_channel(scorer, reading, named):
    """``named``: at 1e20 only the reading's own channel overflows; at the float32 limit the
    convolution carries it into every channel's reconstruction, so all of them saturate."""
    _, _, rows = plant(n_rows=200, entities=("a",), anomaly=None)
    starts = np.arange(len(rows) - scorer.length + 1, dtype=np.int64)
    clean = scorer.score_rows(rows, starts)
    rows[100, 1] = reading
    got = scorer.score_rows(rows, starts)
    hit = (starts <= 100) & (100 < starts + scorer.length)  # the windows holding the reading
    assert np.isfinite(got.score).all() and np.isfinite(got.channel_error).all()
    assert (got.score[hit] == np.float32(SCORE_MAX)).all()
    if named:
        assert (got.channel_error[hit].argmax(axis=1) == 1).all()
    np.testing.assert_array_equal(got.score[~hit], clean.score[~hit])  # the other windows are untouched


def test_its_alert_is_a_valid_event_whose_id_is_read_back_from_the_topic(scorer):
    from test_stream_detector import alert_policy

    from stream_ae.stream.codec import alert_event_id, alert_message, decode_alert, encode_alert
    from stream_ae.stream.detector import Detector
    from stream_ae.stream.detector_io import ReadingBatch
    from stream_ae.thresholds import ThresholdSpec

    art = scorer.artifact
    det = Detector(scorer, ThresholdSpec.from_dict(art.threshold["spec"]), art.threshold["state"],
                   alert_policy(), art.window)
    entity, ts, values = plant(n_rows=300, anomaly=None)
    values[np.flatnonzero(entity == "pump-a")[200], 0] = 1e20
    events = []
    for lo in range(0, len(ts), 128):
        events += det.process(ReadingBatch.from_arrays(entity[lo:lo + 128], ts[lo:lo + 128],
                                                       values[lo:lo + 128])).events
    assert [e.state for e in events if e.entity == "pump-a"][:1] == ["open"]
    for e in events:
        wire = encode_alert(alert_message(e))
        assert alert_event_id(wire) == e.event_id  # what a restart reads back to suppress it
        decoded = decode_alert(wire)
        assert decoded.score == pytest.approx(float(e.score)) and decoded.score <= SCORE_MAX
    opened = next(e for e in events if e.entity == "pump-a")
    assert opened.score == pytest.approx(SCORE_MAX) and opened.top_channels[0][0] == "temp"
