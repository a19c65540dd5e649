"""Offline detection for the demo: the backfill over the history after the training span.

The backfill's flagged windows go through the same alert rule as the streaming demo's
(:data:`~stream_ae.demo.summary.ALERTS`, an :class:`AlertTracker`), so both demos count a
detection and a false alert alike: an alert, not a run of flagged windows.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyarrow.dataset as ds

from stream_ae.demo.summary import ALERTS, alerts_to_detections


def detect_offline(out: Path, history: Path, artifact_path: Path, df, train_end: int):
    from stream_ae.alerts import AlertPolicy, AlertTracker
    from stream_ae.backfill import run_backfill

    scores_dir = out / "scores"
    shutil.rmtree(scores_dir, ignore_errors=True)
    start = np.datetime64(train_end, "ns").astype(str)
    report = run_backfill(str(history), str(artifact_path), str(scores_dir), start=start)
    print(f"backfill: {report.windows_scored:,} windows scored, {report.anomalies:,} anomalous, "
          f"{report.windows_per_s:,.0f} windows/s")
    table = ds.dataset(scores_dir, format="parquet").to_table().to_pandas()
    channels = [c for c in df.columns if c not in ("entity", "timestamp")]
    tracker = AlertTracker(AlertPolicy(**ALERTS))
    frames, alerts, last_ts = {}, [], {}
    for entity, g in table.groupby("entity"):
        g = g.sort_values("window_end")
        end_ns = g["window_end"].astype("int64").to_numpy()
        raw = df[(df["entity"] == entity) & (df["timestamp"].astype("int64") >= train_end)]
        frames[entity] = dict(ts=raw["timestamp"].astype("int64").to_numpy(), values=raw[channels].to_numpy(),
                              channels=channels, score_ts=end_ns, score=g["score"].to_numpy(),
                              threshold=g["threshold"].to_numpy())
        # the scores table names each window's top channels, not its per-channel errors: the
        # events' top channels are left out, which the detections do not use
        alerts += tracker.observe_many(entity, end_ns, g["score"].to_numpy(), g["threshold"].to_numpy(),
                                       g["anomaly"].to_numpy(), np.zeros((len(g), 0)), (), report.model_version)
        last_ts[entity] = int(end_ns[-1])   # a group of the scores table has at least one window
    return frames, alerts_to_detections(alerts, last_ts)
