"""`stream-ae bench drift`: what the stream's drift watch reports over a week of a plant with a daily rhythm.

For each seed, a synthetic plant of 4 entities, one reading a minute for 10 days, whose
channels follow a daily season (``generate_plant``, no injected anomaly). A conv autoencoder is
trained on days 1-3 (the demo's preset, ``demo_preset``); days 4-10 are scored through the backfill (the one
scoring path) and fed, in event-time order and in micro-batches of 256 windows, to the stream's
:class:`~stream_ae.stream.drift_watch.DriftWatch` with the default ``[drift]`` settings and the
model's stored starting level. Two cases per seed, both from the same model:

* ``as_generated``: the plant as it is (its channels also trend, so a model trained on three
  days may well see its scores creep);
* ``gain_from_day_6``: channel ``ch_0`` reads 1.3 times its value from day 6 on (a sensor swap).

It prints, per case, the model's reference level, each day's mean log score of the windows the
calibrated threshold calls normal and its share of windows flagged, the spread of the hourly
means over the first scored day (the rhythm a drift rule must not take for drift) and the
events. Nothing is asserted.
"""
from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import numpy as np

DAY_ROWS = 1440          # one reading a minute
DAYS, TRAIN_DAYS, CHANGE_DAY = 10, 3, 6
GAIN = 1.3
BATCH = 256


def _scores(history: Path, artifact_path: Path, start_ns: int, out: Path):
    """(score, anomaly flag, window end ns) of the backfill after ``start_ns``, in event-time order."""
    import pyarrow.dataset as ds

    from stream_ae.backfill import run_backfill

    run_backfill(str(history), str(artifact_path), str(out), start=np.datetime64(start_ns, "ns").astype(str))
    t = ds.dataset(out, format="parquet", partitioning="hive").to_table().to_pandas().sort_values("window_end")
    return t["score"].to_numpy(), t["anomaly"].to_numpy(), t["window_end"].astype("int64").to_numpy()


def _watch(scores, flags, ts, version: str, reference: float | None) -> list:
    from stream_ae.stream.detector_io import DetectorOutput
    from stream_ae.stream.drift_watch import DriftWatch
    from stream_ae.stream.metrics import StreamMetrics
    from stream_ae.stream.settings import load_settings

    watch = DriftWatch(load_settings(env={}), StreamMetrics())
    found = []
    for i in range(0, len(scores), BATCH):
        out = DetectorOutput(scores=scores[i:i + BATCH].astype(np.float32), flags=flags[i:i + BATCH],
                             end_ts=ts[i:i + BATCH])
        found += watch.observe(out, version, reference)
    return found


def _case(scores, flags, ts, t0: int, version: str, reference: float | None) -> dict:
    from stream_ae.drift import FLOOR

    day_ns, hour_ns = 86_400 * 10**9, 3_600 * 10**9
    logs = np.log(np.maximum(scores, FLOOR))
    normal = ~flags
    day = (ts - t0) // day_ns
    hour = (ts - t0) // hour_ns
    first = int(day.min())
    hourly = [logs[normal & (hour == h)].mean() for h in range(first * 24, first * 24 + 24)]
    events = _watch(scores, flags, ts, version, reference)
    return {
        "windows": int(len(scores)),
        "daily_mean_log_score": {f"day_{d + 1}": round(float(logs[normal & (day == d)].mean()), 3)
                                 for d in range(first, int(day.max()) + 1)},
        "daily_flagged_percent": {f"day_{d + 1}": round(100 * float(flags[day == d].mean()), 2)
                                  for d in range(first, int(day.max()) + 1)},
        "first_day_hourly_mean_range": round(float(max(hourly) - min(hourly)), 3),
        "events": [{"day": round((e.ts - t0) / day_ns + 1, 2), "direction": e.direction,
                    "shift": None if e.mean_before is None else round(e.mean_after - e.mean_before, 3),
                    "flagged_share": round(e.flagged_share, 3)} for e in events],
    }


def run_drift_bench(seeds=(7, 8), json_path=None) -> dict:
    from stream_ae.artifact import save_artifact
    from stream_ae.bench import emit
    from stream_ae.data.layout import Layout
    from stream_ae.data.synthetic import generate_plant, write_history
    from stream_ae.demo import demo_preset
    from stream_ae.drift import artifact_reference
    from stream_ae.training import train

    preset = demo_preset()
    drift_log = logging.getLogger("stream_ae.stream.drift_watch")
    level, result = drift_log.level, {"settings": "[drift] defaults", "gain": GAIN, "seeds": {}}
    drift_log.setLevel(logging.ERROR)  # the events are in the figures
    try:
        for seed in seeds:
            with tempfile.TemporaryDirectory(prefix="stream-ae-bench-drift-") as tmp:
                tmp = Path(tmp)
                df, _ = generate_plant(n_entities=4, n_channels=6, n_rows=DAYS * DAY_ROWS, freq_s=60, seed=seed,
                                       anomalies=False, season_period=DAY_ROWS)
                t0 = int(df["timestamp"].min().value)
                train_end = t0 + TRAIN_DAYS * DAY_ROWS * 60 * 10**9
                print(f"seed {seed}: training on days 1-{TRAIN_DAYS} ...")
                write_history(df, tmp / "plain", partition_by=("date",))
                artifact = train(str(tmp / "plain"), Layout(), preset.window, preset.model, preset.train,
                                 preset.threshold, end=np.datetime64(train_end, "ns").astype(str))
                path = save_artifact(artifact, tmp / "models")
                reference = artifact_reference(artifact)
                changed = df.copy()
                late = changed["timestamp"].astype("int64") >= t0 + (CHANGE_DAY - 1) * DAY_ROWS * 60 * 10**9
                changed.loc[late, "ch_0"] *= GAIN
                write_history(changed, tmp / "changed", partition_by=("date",))
                cases = {"reference": round(reference, 3)}
                for name, history in (("as_generated", "plain"), (f"gain_from_day_{CHANGE_DAY}", "changed")):
                    s, f, ts = _scores(tmp / history, path, train_end, tmp / f"scores-{history}")
                    cases[name] = _case(s, f, ts, t0, artifact.version, reference)
                result["seeds"][str(seed)] = cases
    finally:
        drift_log.setLevel(level)
    return emit(result, json_path)
