"""The detector's own cost per reading against the number of entities (``stream-ae bench detector``).

No broker: the same micro-batches the stream's poll thread sees (1024 records, time-interleaved
over E entities, hop 1) go through each stage the runner calls -- decode, batch, prepare
(replay check and windowing), score, finish (thresholds and alert lifecycles) -- and each is
timed. With many entities a micro-batch brings each a reading or two, so what a stage costs
*per entity* is what counts; the run measures it twice in one process: with the entities
windowed and thresholded together (the default) and one by one (``Detector(vectorised=False)``),
and prints the ratio.

The model and rules are the stream benchmark's (SKAB's configuration, ``presets.skab_preset``:
the conv preset, hop 1, the quantile threshold, an alert on the first flagged window). Entities
it was not trained on score higher, so more of their windows are flagged, each an alert to open
or update: the run reports that share (``flagged_share``) with the figures.
"""
from __future__ import annotations

import collections
import gc
import time
from pathlib import Path

import numpy as np

from stream_ae.bench import emit

DEFAULT_ENTITIES = (16, 256, 4096)
DEFAULT_N = 100_000
BATCH = 1024
PARTITIONS = 8
_Record = collections.namedtuple("_Record", "topic partition offset timestamp key value")


def _records(entities: int, n: int, length: int, channels: tuple[str, ...]) -> tuple[list, int]:
    """About ``n`` readings of ``entities`` units after ``length - 1`` each (before any window
    exists: returned as how many lead), time-interleaved as on a topic, as Kafka records."""
    from stream_ae.bench.stream import PLANT_SEED
    from stream_ae.data.synthetic import generate_plant
    from stream_ae.stream import codec

    per = length - 1 + -(-n // entities)
    df, _ = generate_plant(n_entities=entities, n_channels=len(channels), n_rows=per, seed=PLANT_SEED,
                           anomaly_rate=1e-3, start="2026-03-01")
    channels = list(channels)
    ents, ts = df["entity"].to_numpy(), df["timestamp"].astype("int64").to_numpy() // 1_000_000
    values = df.iloc[:, 2:].to_numpy(np.float64)  # ch_0 .. ch_{C-1}, named as the model's channels
    next_offset = [0] * PARTITIONS
    records = []
    for e, t, row in zip(ents, ts, values.tolist()):
        p = int(e.rsplit("_", 1)[1]) % PARTITIONS
        records.append(_Record("readings", p, next_offset[p], int(t), e.encode(),
                               codec.encode_reading(codec.Reading(e, int(t), dict(zip(channels, row))))))
        next_offset[p] += 1
    return records, entities * (length - 1)


def _stages(artifact, scorer, records: list, lead: int, vectorised: bool) -> dict:
    """Microseconds per reading of each stage over ``records[lead:]`` (the first ``lead`` warm up)."""
    from stream_ae.presets import skab_preset
    from stream_ae.stream import codec
    from stream_ae.stream.detector import build_detector
    from stream_ae.stream.settings import load_settings

    alert = skab_preset("conv").alert   # the service's defaults, with SKAB's alert rule
    detector = build_detector(load_settings(env={}, overrides=[f"alerts.k={alert.k}", f"alerts.n={alert.n}",
                                                               f"alerts.quiet_s={alert.quiet_s}"]), scorer)
    detector.vectorised = vectorised
    decoder = codec.ReadingDecoder()
    seconds = collections.Counter()
    windows = every = flagged = 0
    for lo in range(0, len(records), BATCH):
        timed = lo >= lead
        t0 = time.perf_counter()
        cols, _ = decoder.decode_columns(records[lo:lo + BATCH], detector.channels)
        t1 = time.perf_counter()
        batch, _ = cols.to_batch()
        t2 = time.perf_counter()
        prep = detector.prepare(batch)
        t3 = time.perf_counter()
        prep.score()
        t4 = time.perf_counter()
        out = detector.finish(prep)
        t5 = time.perf_counter()
        every += out.windows_scored
        flagged += int(out.flags.sum())
        if timed:
            for stage, a, b in (("decode", t0, t1), ("batch", t1, t2), ("prepare", t2, t3),
                                ("score", t3, t4), ("finish", t4, t5)):
                seconds[stage] += b - a
            windows += out.windows_scored
    n = len(records) - -(-lead // BATCH) * BATCH  # the readings of the timed batches
    us = {stage: round(s / n * 1e6, 2) for stage, s in seconds.items()}
    python = us["decode"] + us["batch"] + us["prepare"] + us["finish"]
    return {"us_per_reading": us, "python_us_per_reading": round(python, 2),
            "python_readings_per_s": round(1e6 / python), "windows": windows,
            "flagged_share": round(flagged / max(every, 1), 4), "checkpoint": _snapshots(detector)}


def _snapshots(detector) -> dict:
    """What a checkpoint asks of the detector when every entity changed since the last one (no
    checkpoint was taken here, so all did): their state records, snapshotted and encoded as
    the runner takes them (the poll loop waits for it; sending them is the producer's part)."""
    gc.collect()
    t = time.perf_counter()
    states = detector.table.take_dirty()
    ms = (time.perf_counter() - t) * 1e3
    size = sum(len(value) for _, value in states.values())
    return {"entities": len(states), "snapshot_ms": round(ms, 1),
            "state_bytes_per_entity": round(size / max(len(states), 1))}


def run_detector_bench(entities=DEFAULT_ENTITIES, n: int = DEFAULT_N, precision: str = "fp32",
                       json_path=None, artifact=None) -> dict:
    """Per entity count: each stage's microseconds per reading, together and one by one.
    ``artifact``: the model (default: the stream benchmark's, trained and cached in bench-out/)."""
    import torch

    from stream_ae.bench.stream import TORCH_THREADS, _artifact
    from stream_ae.scoring import Scorer

    from stream_ae.errors import ConfigError

    if n < 2 * BATCH:
        raise ConfigError(f"--n must be at least {2 * BATCH} readings (two micro-batches), got {n}")
    torch.set_num_threads(TORCH_THREADS)
    artifact = artifact or _artifact(Path("bench-out"))
    scorer = Scorer(artifact, device="cpu", precision=precision)
    result = {"benchmark": "detector", "readings": n, "batch": BATCH, "precision": precision,
              "model": artifact.version, "entities": {}}
    for e in entities:
        records, lead = _records(e, n, artifact.window.length, tuple(artifact.channels))
        together = _stages(artifact, scorer, records, lead, vectorised=True)
        alone = _stages(artifact, scorer, records, lead, vectorised=False)
        result["entities"][str(e)] = {
            "together": together, "one_by_one": alone,
            "prepare_plus_finish_speedup": round(
                (alone["us_per_reading"]["prepare"] + alone["us_per_reading"]["finish"])
                / (together["us_per_reading"]["prepare"] + together["us_per_reading"]["finish"]), 2)}
    return emit(result, json_path)
