"""Memory over a long run (``stream-ae bench soak``): the detector must not grow with what it has seen.

A service that runs for months must hold the same memory after a billion readings as after a
million. No broker: the stream's micro-batches (1024 readings, time-interleaved, hop 1) go
through what the runner calls per batch -- prepare (replay check, windowing), score, finish
(thresholds, alert lifecycles), the drift watch -- and every ``CHECKPOINT_EVERY`` batches a
checkpoint's take of the changed entities' state records (what the runner sends to the state
topic). Every ``RELOAD_EVERY`` passes a hot reload builds the model again as a new version and
swaps it in (each entity's threshold restarts from that version's calibration). One stretch
of the plant (``PASS`` readings) repeats with its timestamps and offsets moved on, so each
entity's stream goes on in order (the seam between two passes is a jump in the values: alerts
open and resolve there, which exercises their lifecycle too).

Two phases, ``n`` readings each, in one process under the runner's process settings:

* **steady**: the same ``entities`` ids throughout;
* **churn**: each pass gives a quarter of the ids a new name, so new entities keep arriving
  past ``input.max_entities`` (set to ``entities``): the least recently seen are evicted and
  parked, and the parked beyond the cap dropped, as in a flood of new ids.

Reported per phase, after each pass: resident memory (``/proc/self/statm``); the C heap in use
(glibc's ``mallinfo2``: the resident size alone would hide a leak inside the free memory
:mod:`stream_ae.allocator` keeps); Python's allocated blocks; the live and parked entities.
Then each one's growth from the end of the first pass and the slope of memory over the
second half (KiB per million readings, least squares), the objects the garbage collector
tracks (the start-up heap is frozen, as in the runner), and a picture, ``soak.png``.
Decoding keeps no state and is left out (the stream benchmark covers it).
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import sys
import time
import types
from pathlib import Path

import numpy as np

from stream_ae.allocator import heap_in_use_bytes
from stream_ae.bench import emit

DEFAULT_N = 10_000_000      # readings per phase
DEFAULT_ENTITIES = 256
PASS = 100_000              # readings of the plant stretch that repeats
CHECKPOINT_EVERY = 50       # batches between two checkpoints' takes of the changed entities
CHURN_GROUPS = 4            # churn: each pass renames one in this many entities
RELOAD_EVERY = 10           # passes between two hot reloads (a new model version built and swapped in)


def rss_mib() -> float:
    """This process's resident memory, MiB (Linux ``/proc``; NaN elsewhere)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return float("nan")
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def slope_kib_per_m(readings: list[int], mib: list[float]) -> float | None:
    """Least-squares slope of memory against readings over the second half: KiB per million."""
    half = len(readings) // 2
    x, y = np.asarray(readings[half:], float) / 1e6, np.asarray(mib[half:], float) * 1024
    if len(x) < 3 or np.ptp(x) == 0 or not np.isfinite(y).all():
        return None
    return round(float(np.polyfit(x, y, 1)[0]), 1) + 0.0  # + 0.0: no "-0.0"


def _stretch(artifact, entities: int, readings: int) -> tuple[list, int, int]:
    """One pass of about ``readings`` decoded micro-batches; the time it spans (ns) and its readings."""
    from stream_ae.bench.detector import BATCH, _records
    from stream_ae.stream import codec

    records, _ = _records(entities, readings, artifact.window.length, tuple(artifact.channels))
    decoder = codec.ReadingDecoder()
    batches = [decoder.decode_columns(records[lo:lo + BATCH], tuple(artifact.channels))[0].to_batch()[0]
               for lo in range(0, len(records), BATCH)]
    ts = np.concatenate([b.ts for b in batches])
    step = int(np.diff(np.unique(ts))[:1].sum() or 10**9)  # the plant's sampling step
    return batches, int(ts.max() - ts.min()) + step, len(records)


def _moved(batch, k: int, span_ns: int, per_pass: int, names: dict | None):
    """``batch`` in pass ``k``: later times and offsets, renamed entities (churn)."""
    from stream_ae.stream.detector_io import ReadingBatch

    entity = batch.entity if names is None else np.array([names[e] for e in batch.entity], dtype=object)
    return ReadingBatch(entity=entity, ts=batch.ts + k * span_ns, values=batch.values,
                        partition=batch.partition, offset=batch.offset + k * per_pass)


def _names(base: list[str], k: int) -> dict:
    """Pass ``k``'s name for each base id: entity i is renamed every CHURN_GROUPS passes, a
    different quarter each pass."""
    return {e: f"{e}.{(k + i % CHURN_GROUPS) // CHURN_GROUPS}" for i, e in enumerate(base)}


def _phase(scorer, batches, span_ns: int, per_pass: int, n: int, entities: int, churn: bool, progress) -> dict:
    import gc

    from prometheus_client import CollectorRegistry, Counter, Gauge

    from stream_ae.drift import artifact_reference
    from stream_ae.scoring import Scorer
    from stream_ae.stream.detector import build_detector
    from stream_ae.stream.drift_watch import DriftWatch
    from stream_ae.stream.settings import load_settings

    settings = load_settings(env={}, overrides=[f"input.max_entities={entities}"])
    detector = build_detector(settings, scorer)
    registry = CollectorRegistry()
    drift = DriftWatch(settings, types.SimpleNamespace(
        drift=Counter("soak_drift_events", "", ["direction"], registry=registry),
        drift_shift=Gauge("soak_drift_shift", "", registry=registry)))
    base = sorted({e for b in batches for e in b.entity.tolist()})
    out = {"readings": [], "rss_mib": [], "heap_mib": [], "py_blocks": [], "live": [], "parked": []}
    seen = windows = events = drifts = reloads = 0
    version = scorer.version
    objects = None
    t0 = time.perf_counter()
    for k in range(max(1, -(-n // per_pass))):
        names = _names(base, k) if churn else None
        if k and k % RELOAD_EVERY == 0:  # a hot reload: a new version of the model, built and swapped in
            scorer = Scorer(dataclasses.replace(scorer.artifact, version=f"{version}-reload{k}"), device="cpu")
            detector.swap_scorer(scorer)
            reloads += 1
        for i, batch in enumerate(batches):
            result = detector.finish(detector.prepare(_moved(batch, k, span_ns, per_pass, names)).score())
            drifts += len(drift.observe(result, scorer.version, artifact_reference(scorer.artifact)))
            windows += result.windows_scored
            events += len(result.events)
            if (i + 1) % CHECKPOINT_EVERY == 0:
                detector.table.take_dirty()  # what a checkpoint sends; the runner then drops them
        seen += per_pass
        if k == 0:
            gc.collect()
            objects = len(gc.get_objects())
        out["readings"].append(seen)
        out["rss_mib"].append(round(rss_mib(), 1))
        heap = heap_in_use_bytes()
        out["heap_mib"].append(round(heap / 2**20, 2) if heap is not None else float("nan"))
        out["py_blocks"].append(sys.getallocatedblocks())
        out["live"].append(len(detector.table))
        out["parked"].append(len(detector.table._parked))
        progress.update(per_pass)
    names_seen = len(set().union(*(_names(base, k).values() for k in range(len(out["readings"]))))) \
        if churn else len(base)
    gc.collect()
    return {"churn": churn, "readings": seen, "seconds": round(time.perf_counter() - t0, 1),
            "windows_scored": windows, "alert_events": events, "drift_events": drifts, "hot_reloads": reloads,
            "evictions": detector.table.evictions,
            "rss_mib_after_first_pass": out["rss_mib"][0], "rss_mib_end": out["rss_mib"][-1],
            "rss_growth_mib": round(out["rss_mib"][-1] - out["rss_mib"][0], 1),
            "slope_kib_per_million_readings": slope_kib_per_m(out["readings"], out["rss_mib"]),
            "heap_in_use_mib_after_first_pass": out["heap_mib"][0], "heap_in_use_mib_end": out["heap_mib"][-1],
            "heap_slope_kib_per_million_readings": slope_kib_per_m(out["readings"], out["heap_mib"]),
            "python_blocks_after_first_pass": out["py_blocks"][0], "python_blocks_end": out["py_blocks"][-1],
            "gc_objects_after_first_pass": objects, "gc_objects_end": len(gc.get_objects()),
            "live_entities_end": out["live"][-1], "parked_entities_end": out["parked"][-1],
            "entity_names_seen": names_seen,
            "series": out}


def run_soak_bench(n: int | None = None, entities: int | None = None, json_path=None, out_dir="bench-out",
                   artifact=None, pass_readings: int = PASS) -> dict:
    """Both phases; print and return the figures (the per-pass series go to the picture only).
    ``artifact``: the model (default: the stream benchmark's, trained and cached in ``out_dir``)."""
    from stream_ae.bench.stream import TORCH_THREADS, _artifact
    from stream_ae.errors import ConfigError
    from stream_ae.progress import progress_bar
    from stream_ae.scoring import Scorer
    from stream_ae.stream.tuning import tune_process

    n, entities = int(n or DEFAULT_N), int(entities or DEFAULT_ENTITIES)
    if n < 3 * pass_readings or entities < CHURN_GROUPS:
        raise ConfigError(f"--n must be at least {3 * pass_readings} readings a phase and --entities at least "
                          f"{CHURN_GROUPS}, got {n} and {entities}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    artifact = artifact or _artifact(out_dir)
    scorer = Scorer(artifact, device="cpu")
    batches, span_ns, per_pass = _stretch(artifact, entities, pass_readings)
    result = {"benchmark": "soak", "readings_per_phase": n, "entities": entities, "pass_readings": per_pass,
              "checkpoint_every_batches": CHECKPOINT_EVERY, "model": artifact.version,
              "rss_mib_start": round(rss_mib(), 1)}
    with contextlib.ExitStack() as stack:
        tune_process(stack, TORCH_THREADS)
        # each seam between passes moves the scores: drift events are counted, not logged
        drift_log = logging.getLogger("stream_ae.stream.drift_watch")
        stack.callback(drift_log.setLevel, drift_log.level)
        drift_log.setLevel(logging.ERROR)
        with progress_bar(total=2 * n, desc="soak", unit="reading") as bar:
            phases = {name: _phase(scorer, batches, span_ns, per_pass, n, entities, churn, bar)
                      for name, churn in (("steady", False), ("churn", True))}
    from stream_ae.bench.soak_plot import plot_soak

    result["plot"] = str(plot_soak(out_dir / "soak.png", {k: v["series"] for k, v in phases.items()},
                                   f"stream-ae bench soak: {entities} entities, model {artifact.version}"))
    result["phases"] = {k: {key: v for key, v in p.items() if key != "series"} for k, p in phases.items()}
    return emit(result, json_path)
