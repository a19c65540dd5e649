"""The whole loop on a broker: stream readings -> archive -> retrain -> promote -> the running
consumer reloads and its alerts name the new version; a worse challenger is refused; a
rollback is picked up by the same running consumer.

One settings object drives every part, as one settings file would in a deployment:
``kafka`` and ``model`` for the detector, ``archive`` for the archiver, ``retrain`` for the job.
"""
from __future__ import annotations

import time
import uuid

import numpy as np
import pandas as pd
import pytest

from stream_ae.stream import codec
from stream_service import Producer, Running, overrides_for, read_alerts, stream_topics, wait_for

DEPLOYMENT = "prod"
STEP_S = 1
PART_ROWS = (3000, 400, 400)     # archived and trained on; then scored by the new model; then after rollback
SHIFT = ("unit_1", 150, 210)     # rows (within parts 2 and 3) of a level shift on ch_1


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def plant_parts():
    """Three consecutive parts of a clean 2-entity, 3-channel plant at 1 Hz; parts 2 and 3 hold a shift."""
    from stream_ae.data.synthetic import generate_plant

    df, _ = generate_plant(n_entities=2, n_channels=3, n_rows=sum(PART_ROWS), season_period=300,
                           anomalies=False, seed=11)
    row = np.repeat(np.arange(sum(PART_ROWS)), 2)                       # time-major: 2 entities per step
    cuts = np.cumsum((0, *PART_ROWS))
    parts = []
    for lo, hi in zip(cuts[:-1], cuts[1:]):
        part = df[(row >= lo) & (row < hi)].copy()
        if lo > 0:
            local = row[(row >= lo) & (row < hi)] - lo
            hit = (part.entity.to_numpy() == SHIFT[0]) & (local >= SHIFT[1]) & (local < SHIFT[2])
            part.loc[hit, "ch_1"] += 8.0 * df["ch_1"].std()
        parts.append(part)
    return parts


def messages(part: pd.DataFrame) -> list[tuple[bytes, bytes]]:
    ts_ms = part.timestamp.to_numpy("datetime64[ms]").view(np.int64)
    values = part[["ch_0", "ch_1", "ch_2"]].to_numpy(np.float64)
    return [(e.encode(), codec.encode_reading(codec.Reading(e, int(t), dict(zip(("ch_0", "ch_1", "ch_2"), v)))))
            for e, t, v in zip(part.entity, ts_ms, values.tolist())]


def opened(alerts, lo: pd.Timestamp, hi: pd.Timestamp) -> set[str]:
    """Model versions named by the alerts opened in [lo, hi)."""
    return {a.model_version for a in alerts if a.state == "open"
            and lo.value <= codec.datetime_to_ns(a.started_at) < hi.value}


@pytest.mark.kafka
def test_stream_archive_retrain_promote_reload_refuse_rollback(broker, topic_factory, kafka_config, tmp_path):
    from stream_ae.archiver import run_archiver
    from stream_ae.registry import Registry
    from stream_ae.retraining import run_retrain
    from stream_ae.stream.runner import StreamRunner
    from stream_ae.stream.serve import ModelWatcher
    from stream_ae.stream.settings import load_settings
    import threading

    topics = stream_topics(topic_factory, 2)
    base = overrides_for(kafka_config, topics, **{
        "model.registry": tmp_path / "models", "model.deployment": DEPLOYMENT, "model.reload_interval_s": 0.2,
        "archive.root": tmp_path / "archive", "archive.group_id": f"arch-{uuid.uuid4().hex[:10]}",
        "kafka.client.fetch_max_wait_ms": 50, "retrain.report_dir": tmp_path / "reports",
        "retrain.train_span": "35m", "retrain.holdout_span": "15m", "retrain.align": "1s",
        "retrain.window": 16, "retrain.device": "cpu",
        # The deliberately poor first model never alerts on this clean plant; a good model's
        # calibrated threshold flags ~2 % of clean windows. The slack is the false-alarm budget
        # a challenger may spend beyond the champion's rate.
        "retrain.alert_rate_slack": 0.05})
    good = load_settings(env={}, overrides=base + ["retrain.epochs=8", "retrain.max_windows=3000"])
    poor = load_settings(env={}, overrides=base + ["retrain.epochs=1", "retrain.max_windows=500"])
    registry = Registry(tmp_path / "models")
    parts = plant_parts()
    starts = [p.timestamp.min() for p in parts] + [parts[-1].timestamp.max() + pd.Timedelta(seconds=STEP_S)]
    now = starts[1]

    # 1. readings -> the archiver -> the Parquet history
    producer = Producer(broker.bootstrap, topics["readings_topic"])
    first = messages(parts[0])
    producer.send(first)
    archived = run_archiver(good, threading.Event(), max_records=len(first))
    assert archived.rows == len(first) and not archived.dead_letters

    # 2. the first retrain on the archive: no champion yet, a (poor) first model is promoted
    v1 = run_retrain(poor, now=now - pd.Timedelta(minutes=1)).challenger["version"]
    assert registry.current(DEPLOYMENT) == v1

    # 3. the detector runs on the deployment, reading part 1 with v1
    watcher = ModelWatcher(good)
    runner = StreamRunner(good, watcher.initial(), reload=watcher, checkpoint_interval_s=1.0)
    watcher.on_ready = runner.swap_scorer
    running = Running(runner)
    try:
        wait_for(lambda: running.sample("stream_ae_messages_consumed_total") >= len(first), 60, "part 1 scored")
        assert runner.metrics.model_version == v1

        # 4. retrain -> a better challenger is promoted -> the running consumer reloads it
        better = run_retrain(good, now=now)
        v2 = better.challenger["version"]
        assert better.decision == "promoted", better.reasons
        wait_for(lambda: runner.metrics.model_version == v2, 15, "the runner to swap in the promoted model")
        producer.send(messages(parts[1]))
        wait_for(lambda: running.sample("stream_ae_messages_consumed_total") >= len(first) + len(parts[1]) * 1,
                 60, "part 2 scored")

        # 5. a deliberately worse challenger is refused: the consumer keeps v2
        worse = run_retrain(poor, now=now - pd.Timedelta(minutes=2))
        assert worse.decision == "kept_champion", worse.reasons
        assert registry.current(DEPLOYMENT) == v2

        # 6. an operator rolls back: the same running consumer picks it up
        registry.rollback(DEPLOYMENT)
        wait_for(lambda: runner.metrics.model_version == v1, 15, "the runner to pick up the rollback")
        producer.send(messages(parts[2]))
        wait_for(lambda: running.sample("stream_ae_messages_consumed_total") >= sum(map(len, parts)), 60,
                 "part 3 scored")
        time.sleep(0.5)
    finally:
        producer.close()
        running.stop()
    assert [h["version"] for h in registry.history(DEPLOYMENT)] == [v1, v2, v1]
    assert running.sample("stream_ae_checkpoints_total") >= 1          # one runner throughout, never restarted
    alerts = read_alerts(broker.bootstrap, topics["alerts_topic"])
    assert opened(alerts, starts[2], starts[3]) == {v1}                # after the rollback: v1 found the shift
    after_promotion = opened(alerts, starts[1], starts[2])
    assert after_promotion == {v2}, [(a.state, a.started_at, a.model_version) for a in alerts]
