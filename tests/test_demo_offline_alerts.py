"""``demo --offline`` counts alerts under the streaming demo's rule, not runs of flagged windows:
a lone flagged window opens no alert in the stream, so it is no false alert offline either."""

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest


@pytest.fixture
def backfill_writing(monkeypatch):
    """Stand in for the backfill: write ``flags`` for entity "u" (a window every 10 s) as its scores."""
    import stream_ae.backfill as backfill

    def install(flags):
        end = np.arange(len(flags), dtype=np.int64) * 10_000_000_000 + 1_000_000_000_000

        def run_backfill(history, artifact, out, start=None):
            scores = pd.DataFrame({"entity": "u", "window_end": pd.to_datetime(end, utc=True),
                                   "score": np.where(flags, 3.0, 0.5), "threshold": 1.0, "anomaly": flags})
            Path(out).mkdir(parents=True)
            scores.to_parquet(Path(out) / "part-0.parquet")
            return SimpleNamespace(windows_scored=len(flags), anomalies=int(flags.sum()), windows_per_s=1.0,
                                   model_version="v1")

        monkeypatch.setattr(backfill, "run_backfill", run_backfill)
        return end
    return install


def test_a_lone_flagged_window_is_no_detection_and_an_alert_spans_open_to_resolve(tmp_path, backfill_writing):
    from stream_ae.demo.offline import detect_offline
    from stream_ae.demo.summary import ALERTS

    flags = np.zeros(200, bool)
    flags[20] = True              # 1 of 5: no alert under k=3 of n=5
    flags[60:66] = True           # an alert opens at the third, started at the first (window 60)
    end = backfill_writing(flags)
    df = pd.DataFrame({"entity": "u", "timestamp": pd.to_datetime(end, utc=True), "ch_0": 0.0})
    _, detections = detect_offline(tmp_path, tmp_path / "history", tmp_path / "model", df, int(end[0]))
    assert [(d.entity, d.start_ts) for d in detections] == [("u", int(end[60]))]
    resolved = int(end[65]) + int(ALERTS["quiet_s"] * 1e9)   # the first window quiet_s past the last flag
    assert detections[0].end_ts == int(end[np.searchsorted(end, resolved)])



