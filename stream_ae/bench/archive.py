"""Archiver benchmark, one run, one broker, the same N readings (``python -m stream_ae.bench.archive``).

(a) raw kafka-python consume rate of the N readings (a consumer group, the same client
    settings, no processing), measured before and after (b) and averaged, since the machine
    is shared;
(b) the archiver's rate on the same topic: decode, dead-letter checks, wide rows, Parquet
    files rolled at ``file_rows``, fsync, rename, marker, commit; from its partitions being
    assigned to the last file durable and committed.

Each run is its own process (spawn); its peak RSS is the sum of the peak RSS (VmHWM) of
that process and of its children (the archiver's worker), sampled from /proc. Rates are measured from
partition assignment, so the group join is excluded from both. Compare ratios within one
run, never absolute rates across runs.
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import tempfile
import uuid
from pathlib import Path
from queue import Empty

from stream_ae.bench import emit

ENTITIES = 16
CHANNELS = 8
PARTITIONS = 4
DEFAULT_N = 200_000
FILE_ROWS = 25_000
TARGET_RATIO = 0.8
SETTINGS = {"batch.max_size": 1024, "kafka.client.fetch_max_wait_ms": 20}


def _messages(n: int) -> list[tuple[bytes, bytes]]:
    """N readings, 16 entities x 8 channels at 1 s, time-interleaved, keyed by entity."""
    import numpy as np

    from stream_ae.stream import codec

    rng = np.random.default_rng(0)
    values = rng.normal(size=(n, CHANNELS)).astype(np.float32).astype(np.float64)
    names = [f"ch_{i}" for i in range(CHANNELS)]
    t0 = 1_772_323_200_000   # 2026-03-01T00:00Z, ms
    out = []
    for i in range(n):
        e = f"unit-{i % ENTITIES:02d}"
        out.append((e.encode(), codec.encode_reading(
            codec.Reading(e, t0 + (i // ENTITIES) * 1000, dict(zip(names, values[i].tolist()))))))
    return out


def _settings(bootstrap: str, kind: str, topic: str, dlq: str, root: str):
    from stream_ae.stream.settings import load_settings

    session_ms = 3000 if kind == "embedded" else 6000
    overrides = [f"kafka.bootstrap_servers={bootstrap}", f"kafka.group_id=bench-raw-{uuid.uuid4().hex[:8]}",
                 f"kafka.session_timeout_ms={session_ms}", f"kafka.readings_topic={topic}",
                 f"archive.dead_letter_topic={dlq}", f"archive.root={root}",
                 f"archive.group_id=bench-arch-{uuid.uuid4().hex[:8]}", f"archive.file_rows={FILE_ROWS}"]
    return load_settings(env={}, overrides=overrides + [f"{k}={v}" for k, v in SETTINGS.items()])


def _sample_peak_rss(pid: int, seen: dict[int, int]) -> None:
    """Record VmHWM (KiB) of ``pid`` and its descendants into ``seen`` (Linux /proc)."""
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            status = Path(f"/proc/{p}/status").read_text()
            hwm = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:"))
            seen[p] = max(seen.get(p, 0), hwm)
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, StopIteration, ValueError):   # gone meanwhile
            continue


def _raw_run(bootstrap, kind, topic, dlq, root, n, queue) -> None:
    """Child: (a) records/s of a bare consumer group; its peak RSS."""
    from stream_ae.bench.rates import raw_consume_rate

    rate = raw_consume_rate(_settings(bootstrap, kind, topic, dlq, root), n)
    queue.put({"msgs_per_s": rate})


def _archive_run(bootstrap, kind, topic, dlq, root, n, queue) -> None:
    """Child: (b) the archiver over the same records; its rate, counts and peak RSS."""
    import threading

    from stream_ae.archiver import run_archiver

    report = run_archiver(_settings(bootstrap, kind, topic, dlq, root), threading.Event(), max_records=n)
    elapsed = report.last_flush_at - report.assigned_at
    queue.put({"msgs_per_s": report.consumed / elapsed, "seconds": elapsed, "consumed": report.consumed,
               "rows": report.rows, "files": report.files, "flushes": report.flushes,
               "dead_letters": report.dead_letters})


def _in_child(target, *args) -> dict:
    """Run ``target`` in a fresh process; its result plus the peak RSS of its process tree."""
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=target, args=(*args, queue))
    proc.start()
    seen: dict[int, int] = {}
    try:
        while True:
            _sample_peak_rss(proc.pid, seen)
            try:
                result = queue.get(timeout=0.05)
                _sample_peak_rss(proc.pid, seen)   # the high-water mark only grows: this is the peak
                break
            except Empty:
                if not proc.is_alive():
                    raise RuntimeError(f"{target.__name__} exited with {proc.exitcode}") from None
    finally:
        proc.join(30)
    return {**result, "peak_rss_mb": sum(seen.values()) / 1024,
            "peak_rss_mb_by_process": sorted(round(v / 1024, 1) for v in seen.values())}


def run_archive_bench(n: int = DEFAULT_N, json_path=None) -> dict:
    """Measure (a), (b), (a) in one run on one broker; print and return the figures as JSON."""
    from stream_ae.bench.stream import _crc32c_native, _produce_all
    from stream_ae.data.history import History
    from stream_ae.stream.broker import create_topics, delete_topics, running_broker

    n = int(n)
    load_before = os.getloadavg()
    msgs = _messages(n)
    with running_broker() as broker, tempfile.TemporaryDirectory(prefix="archive-bench-") as tmp:
        s = uuid.uuid4().hex[:8]
        topic, dlq = f"bench-archive-{s}", f"bench-archive-dlq-{s}"
        create_topics(broker.bootstrap, {topic: PARTITIONS, dlq: 1})
        try:
            produce_rate = _produce_all(broker.bootstrap, topic, msgs)
            del msgs
            args = (broker.bootstrap, broker.kind, topic, dlq, str(Path(tmp) / "archive"), n)
            raw1 = _in_child(_raw_run, *args)
            arch = _in_child(_archive_run, *args)
            raw2 = _in_child(_raw_run, *args)
        finally:
            delete_topics(broker.bootstrap, [topic, dlq])
        root = Path(tmp) / "archive"
        archived_rows = History.open(str(root)).count_rows()
        files = [p for p in root.rglob("*.parquet") if not p.name.startswith("_")]
        size = sum(p.stat().st_size for p in files)
        kind = broker.kind
    raw = (raw1["msgs_per_s"] + raw2["msgs_per_s"]) / 2
    result = {
        "bench": "archive", "n": n, "entities": ENTITIES, "channels": CHANNELS, "partitions": PARTITIONS,
        "broker": kind, "kafka_crc32c": _crc32c_native(), "settings": {**SETTINGS, "archive.file_rows": FILE_ROWS},
        "load_average_1m": {"before": round(load_before[0], 2), "after": round(os.getloadavg()[0], 2)},
        "produce_msgs_per_s": round(produce_rate, 1),
        "raw_consume_msgs_per_s": {"before": round(raw1["msgs_per_s"], 1), "after": round(raw2["msgs_per_s"], 1),
                                   "mean": round(raw, 1)},
        "archiver_msgs_per_s": round(arch["msgs_per_s"], 1), "ratio": round(arch["msgs_per_s"] / raw, 3),
        "archiver": {k: (round(v, 2) if isinstance(v, float) else v) for k, v in arch.items()},
        "peak_rss_mb": {"raw_consumer": round(max(raw1["peak_rss_mb"], raw2["peak_rss_mb"]), 1),
                        "archiver": round(arch["peak_rss_mb"], 1)},
        "memory_bound": f"about file_rows={FILE_ROWS} buffered readings per assigned partition, plus the polls "
                        "in flight and a full file waiting for them",
        "archive": {"rows_read_back_by_history": archived_rows, "files": len(files),
                    "mean_file_mb": round(size / max(len(files), 1) / 2**20, 2)},
        "target_ratio": TARGET_RATIO,
    }
    result["meets_target"] = bool(result["ratio"] >= TARGET_RATIO and archived_rows == n)
    return emit(result, json_path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stream_ae.bench.archive")
    parser.add_argument("--n", type=int, default=DEFAULT_N)
    parser.add_argument("--json", dest="json_path", default=None)
    args = parser.parse_args(argv)
    run_archive_bench(n=args.n, json_path=args.json_path)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
