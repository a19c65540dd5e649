"""The archiver: readings topic -> Parquet history that History.open reads back exactly.

Broker tests are marked ``kafka`` (fresh topics and group ids, short session timeouts,
topics deleted after). The crash proof kills the job with SIGKILL several times mid-stream.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from stream_ae.archiver import ArchiveWriter, PartitionState, run_archiver
from stream_ae.archiver.writer import MARKER_DIR, wide_table
from stream_ae.data.history import History
from stream_ae.errors import ConfigError
from stream_ae.stream import codec
from stream_ae.stream.settings import load_settings

REPO = Path(__file__).resolve().parents[1]
T0_MS = 1_767_225_600_000 - 3_600_000          # 2025-12-31T23:00Z: the stream crosses midnight
CHANNELS = ("flow", "pressure", "temp")


# ---- helpers ---------------------------------------------------------------------------------

def _reading(entity: str, ts_ms: int, values: dict) -> bytes:
    return codec.encode_reading(codec.Reading(entity, ts_ms, values))


def _stream(n_per_entity: int, entities: list[str], step_ms: int = 60_000, seed: int = 0):
    """Keyed readings (key, value) interleaved in time; every 7th lacks 'temp', every 11th has a null."""
    rng = np.random.default_rng(seed)
    msgs, expected = [], []
    for i in range(n_per_entity):
        for e in entities:
            values = {c: float(np.float32(rng.normal())) for c in CHANNELS}
            if i % 7 == 3:
                del values["temp"]
            if i % 11 == 5:
                values["flow"] = None
            ts_ms = T0_MS + i * step_ms
            msgs.append((e.encode(), _reading(e, ts_ms, values)))
            expected.append((e, ts_ms * 1_000_000, tuple(values.get(c) for c in CHANNELS)))
    return msgs, expected


def _produce(bootstrap: str, topic: str, msgs) -> None:
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    for key, value in msgs:
        producer.send(topic, key=key, value=value)
    producer.flush()
    producer.close()


def _archived(root) -> list[tuple]:
    """Every row History reads back, as (entity, ts_ns, values with None for NaN), in file order."""
    history = History.open(str(root))
    assert history.channels == CHANNELS
    out = []
    for rows in history.iter_rows():
        for e, t, v in zip(rows.entity, rows.ts, rows.values):
            out.append((str(e), int(t), tuple(None if np.isnan(x) else float(x) for x in v)))
    return out


def _overrides(broker, kafka_config, topic: str, dlq: str, root, **archive) -> list[str]:
    out = [f"kafka.bootstrap_servers={broker.bootstrap}", f"kafka.readings_topic={topic}",
           f"archive.dead_letter_topic={dlq}", f"kafka.session_timeout_ms={kafka_config['session_timeout_ms']}",
           f"archive.root={root}", f"archive.group_id=arch-{uuid.uuid4().hex[:10]}",
           "kafka.client.fetch_max_wait_ms=50"]
    return out + [f"archive.{k}={v}" for k, v in archive.items()]


def _archive(overrides: list[str], n: int, worker_process: bool = True):
    settings = load_settings(env={}, overrides=overrides)
    return run_archiver(settings, threading.Event(), max_records=n, worker_process=worker_process)


def _visible_temporaries(root) -> list[str]:
    return [str(p) for p in Path(root).rglob("*") if p.is_file() and p.name.startswith("_tmp-")
            and MARKER_DIR not in p.parts]


# ---- settings and writer (no broker) -----------------------------------------------------------

def test_archive_settings_defaults_and_validation():
    s = load_settings(env={})
    assert s.archive.partition_by == ("date",) and s.archive.group_id != s.kafka.group_id
    s = load_settings(env={}, overrides=["archive.partition_by=date,entity", "archive.file_rows=10"])
    assert s.archive.partition_by == ("date", "entity") and s.archive.file_rows == 10
    with pytest.raises(ConfigError, match="partition_by"):
        load_settings(env={}, overrides=["archive.partition_by=entity"])
    with pytest.raises(ConfigError, match="file_rows"):
        load_settings(env={}, overrides=["archive.file_rows=0"])
    with pytest.raises(ConfigError, match="archive.file_row"):
        load_settings(env={}, overrides=["archive.file_row=5"])


def test_job_refuses_a_bad_setting_with_one_line():
    done = subprocess.run([sys.executable, "-m", "jobs.archive", "--set", "archive.partition_by=hour"],
                          cwd=REPO, capture_output=True, timeout=60)
    assert done.returncode == 2
    assert "archive.partition_by" in done.stderr.decode().strip().splitlines()[-1]


def _table(entity, ts_ns):
    return wide_table(entity, np.array(ts_ns), [{"flow": 1.0, "pressure": 2.0, "temp": 3.0}] * len(ts_ns), CHANNELS)


def test_rewriting_a_flush_replaces_its_file_and_leaves_no_temporaries(tmp_path):
    w = ArchiveWriter(str(tmp_path / "arch"))
    w.recover("readings", 0)
    day = 86_400 * 10**9 * 20_000
    table = _table(["a", "b"], [day, day + 1])
    first = w.write("readings", 0, 0, 1, table, PartitionState(channels=CHANNELS))
    again = w.write("readings", 0, 0, 1, table, PartitionState(channels=CHANNELS))
    assert first == again == ["date=2024-10-04/part-readings-00000-00000000000000000000-00000000000000000001.parquet"]
    assert History.open(str(tmp_path / "arch")).count_rows() == 2
    assert not _visible_temporaries(tmp_path / "arch")
    assert ArchiveWriter(str(tmp_path / "arch")).recover("readings", 0).through == 1


def test_recover_deletes_the_files_of_a_flush_a_crash_cut_short(tmp_path):
    root = tmp_path / "arch"
    w = ArchiveWriter(str(root), partition_by=("date", "entity"))
    w.recover("r", 1)
    day = 86_400 * 10**9 * 20_000
    w.write("r", 1, 0, 9, _table(["a"] * 10, [day + i for i in range(10)]),
            PartitionState(channels=CHANNELS, last_ts={"a": day + 9}))
    # a crash mid-flush of offsets 10..19: the intent was written, one of two files landed
    pending = ("date=2024-10-04/entity=a/part-r-00001-00000000000000000010-00000000000000000019.parquet",
               "date=2024-10-04/entity=b/part-r-00001-00000000000000000010-00000000000000000019.parquet")
    w._put(w._marker("r", 1), PartitionState(9, CHANNELS, {"a": day + 9}, pending).to_json())
    w._write_parquet(str(root / pending[0]), _table(["a"], [day + 10]).drop_columns(["entity"]))
    (root / "date=2024-10-04/entity=b").mkdir(parents=True)
    (root / "date=2024-10-04/entity=b" / ("_tmp-" + Path(pending[1]).name)).write_bytes(b"half a file")
    assert History.open(str(root)).count_rows() == 10          # the orphan is not read (its marker: pending)

    state = ArchiveWriter(str(root), partition_by=("date", "entity")).recover("r", 1)
    assert (state.through, state.pending, state.last_ts) == (9, (), {"a": day + 9})
    assert History.open(str(root)).count_rows() == 10
    assert not (root / pending[0]).exists() and not list((root / "date=2024-10-04/entity=b").iterdir())


@pytest.mark.parametrize("hostile", [
    [b'{"entity": "q", "ts": 1, "values": {"flow": 1}} {"entity": "r", "ts": 2, "values": {"flow": 2}}', b""],
    [b'{"entity": "q", "ts": 1, "values": {"flow": 1}}\n', b"{}"],    # a trailing newline (valid alone)
    [b"{", b"}"],
])
def test_a_batch_is_archived_as_its_messages_decoded_one_by_one(tmp_path, hostile):
    """Two documents in one value and a blank one keep the line count: the one-call decode
    must still not take lines for records (each alone is malformed)."""
    from collections import namedtuple

    from stream_ae.archiver.core import ArchiveCore
    from stream_ae.archiver.worker import pack

    record = namedtuple("record", "offset value")
    values = [_reading("a", T0_MS, {"flow": 1.0}), *hostile, _reading("b", T0_MS, {"flow": 2.0})]
    core = ArchiveCore("t", str(tmp_path))
    core.recover(0)
    out = core.ingest(0, *pack([record(i, v) for i, v in enumerate(values)]))
    alone = [codec.ReadingDecoder().decode([v]) for v in values]   # (readings, dead letters) each
    assert core._buffers[0].rows == sum(len(ok) for ok, _ in alone)
    assert sorted((i, reason) for i, reason, _, _ in out.dead_letters) == \
        [(i, letter.reason) for i, (_, bad) in enumerate(alone) for letter in bad]


def test_a_lost_partition_drops_its_buffer_where_a_revoked_one_archives_it(tmp_path):
    """Revoked, a partition's buffered readings are archived before it goes (its next owner
    resumes after them). Lost (the group evicted this member during a stall, and the next owner
    may already be archiving them), they are dropped: archiving them too would double rows."""
    from collections import namedtuple
    from types import SimpleNamespace

    from kafka import TopicPartition

    from stream_ae.archiver import worker
    from stream_ae.archiver.job import Archiver

    record = namedtuple("record", "offset value")
    archiver = Archiver(load_settings(env={}, overrides=[f"archive.root={tmp_path}", "kafka.readings_topic=t"]),
                        worker_process=False)
    archiver._pool = worker.start(archiver._core_kwargs(), in_process=True)
    forgotten = []
    archiver.membership = SimpleNamespace(forget=forgotten.extend)
    archiver._producer = SimpleNamespace(flush=lambda: None)   # no dead letters here to acknowledge
    for p, entity in ((0, "kept"), (1, "dropped")):
        archiver._pool.submit(worker.call, "recover", p).result()
        archiver._owned.add(p)
        batch = [record(i, _reading(entity, T0_MS + i * 60_000, dict.fromkeys(CHANNELS, float(i)))) for i in range(5)]
        archiver._in_flight.append((archiver._pool.submit(worker.call, "ingest", p, *worker.pack(batch)), batch))
    archiver.on_revoked([TopicPartition("t", 0)])
    archiver.on_lost([TopicPartition("t", 1)])
    assert [row[0] for row in _archived(tmp_path)] == ["kept"] * 5
    assert archiver.report.lost == 1 and archiver._owned == set() and sorted(forgotten) == [0, 1]
    assert archiver._to_commit == {}                       # nothing committed for either any more


# ---- on the broker -------------------------------------------------------------------------------

@pytest.mark.kafka
def test_archive_reads_back_through_history_with_dead_letters(broker, topic_factory, kafka_config, tmp_path):
    topic, dlq = topic_factory(partitions=2), topic_factory(partitions=1)
    entities = ["pump-1", "pump-2", "fan/3"]
    msgs, expected = _stream(40, entities, step_ms=120_000)     # 120 readings over midnight
    entities.append("solo")
    bad = [(b"pump-1", b"{not json"),                           # malformed
           (b"pump-2", b'{"entity": "pump-2", "ts": 1, "values": {"flow": NaN}}'),       # non_finite
           (b"pump-1", b'{"entity": "pump-1", "ts": 1, "values": {}, "colour": "red"}'),  # unknown_field
           (b"pump-1", _reading("pump-1", T0_MS + 39 * 120_000, {"flow": 1.0})),          # duplicate
           (b"fan/3", _reading("fan/3", T0_MS, {"flow": 1.0})),                          # out_of_order
           (b"pump-2", None),                                                             # tombstone: malformed
           (b"pump-2", b'{"entity": "pump-2", "ts": 1, "values": {"flow": 1e39}}')]     # beyond float32
    # valid, but holding a newline: the batch decoder must not take lines for records
    pretty = json.dumps({"entity": "solo", "ts": T0_MS, "values": {"flow": 0.5, "pressure": 1.5, "temp": 2.5}},
                        indent=1).encode()
    msgs.append((b"solo", pretty))
    expected.append(("solo", T0_MS * 1_000_000, (0.5, 1.5, 2.5)))
    _produce(broker.bootstrap, topic, msgs + bad)
    root = tmp_path / "archive"
    report = _archive(_overrides(broker, kafka_config, topic, dlq, root, file_rows=25), len(msgs) + len(bad))

    assert report.rows == len(expected) and report.consumed == len(msgs) + len(bad)
    assert sorted(_archived(root)) == sorted(expected)
    for e in entities:   # per entity, file order is time order (what a backfill requires)
        ts = [t for name, t, _ in _archived(root) if name == e]
        assert ts == sorted(ts)
    history = History.open(str(root))
    assert {f.partition["date"] for f in history.fragments()} == {"2025-12-31", "2026-01-01"}
    assert str(history._dataset.schema.field("timestamp").type) == "timestamp[ns, tz=UTC]"
    assert not _visible_temporaries(root)

    letters = _read_all(broker.bootstrap, dlq, len(bad))
    by_reason = {d.reason: d for d in letters}
    assert sorted(d.reason for d in letters) == ["duplicate", "malformed", "malformed", "non_finite", "non_finite",
                                                 "out_of_order", "unknown_field"]
    assert report.dead_letters == {"duplicate": 1, "malformed": 2, "non_finite": 2, "out_of_order": 1,
                                   "unknown_field": 1}
    malformed = sorted((d.original, d.detail) for d in letters if d.reason == "malformed")
    assert malformed[0] == (b"", "record value is null (tombstone)") and malformed[1][0] == b"{not json"
    assert all(d.source_topic == topic and d.source_partition in (0, 1) for d in letters)
    assert by_reason["out_of_order"].entity == "fan/3" and by_reason["out_of_order"].source_offset is not None


def _read_all(bootstrap: str, topic: str, n: int, timeout_s: float = 15.0) -> list:
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=None,
                             auto_offset_reset="earliest", enable_auto_commit=False)
    out, deadline = [], time.monotonic() + timeout_s
    try:
        while len(out) < n and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=200).values():
                out += [codec.decode_dead_letter(r.value) for r in batch]
    finally:
        consumer.close()
    return out


@pytest.mark.kafka
def test_partition_by_date_and_entity_and_a_new_group_does_not_duplicate(broker, topic_factory, kafka_config,
                                                                          tmp_path):
    topic, dlq = topic_factory(partitions=2), topic_factory(partitions=1)
    msgs, expected = _stream(30, ["a", "b", "c", "d"], step_ms=30 * 60_000)   # 15 h: two dates
    _produce(broker.bootstrap, topic, msgs)
    root = tmp_path / "archive"
    overrides = _overrides(broker, kafka_config, topic, dlq, root, partition_by="date,entity", file_rows=1000)
    _archive(overrides, len(msgs), worker_process=False)      # decoding and writing in this process

    history = History.open(str(root))
    assert set(history.partition_keys) == {"date", "entity"}
    dirs = {(f.partition["date"], f.partition["entity"]) for f in history.fragments()}
    assert dirs == {(d, e) for d in ("2025-12-31", "2026-01-01") for e in "abcd"}
    assert sorted(_archived(root)) == sorted(expected)

    # another group on the same archive (no committed offsets) starts at the archive's marker
    again = _overrides(broker, kafka_config, topic, dlq, root, partition_by="date,entity")
    stop = threading.Event()
    threading.Timer(8.0, stop.set).start()
    report = run_archiver(load_settings(env={}, overrides=again), stop, idle_exit_s=2.0)
    assert report.rows == 0
    assert sorted(_archived(root)) == sorted(expected)


@pytest.mark.kafka
def test_kill_9_mid_stream_neither_loses_nor_duplicates(broker, topic_factory, kafka_config, tmp_path):
    topic, dlq = topic_factory(partitions=2), topic_factory(partitions=1)
    msgs, expected = _stream(500, ["a", "b", "c", "d", "e", "f"], step_ms=20_000)   # 3000 readings, 2 dates
    _produce(broker.bootstrap, topic, msgs)
    root = tmp_path / "archive"
    args = [sys.executable, "-m", "jobs.archive"]
    for item in _overrides(broker, kafka_config, topic, dlq, root, partition_by="date,entity", file_rows=30):
        args += ["--set", item]
    env = {**os.environ, "STREAM_AE_OPS__LOG_LEVEL": "WARNING"}

    kills = 0
    for fraction in (0.2, 0.45, 0.7):
        proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            _wait_for_progress(root, topic, int(fraction * len(msgs)), proc)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        kills += 1
    done = subprocess.run(args + ["--exit-when-idle", "2"], cwd=REPO, env=env, capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr.decode()[-2000:]

    got = _archived(root)
    assert kills == 3
    assert len(got) == len(set(got)) == len(expected)            # nothing doubled ...
    assert sorted(got) == sorted(expected)                        # ... nothing lost
    assert not _visible_temporaries(root)


def _archived_through(root, topic: str) -> int:
    total = 0
    for path in (Path(root) / MARKER_DIR / topic).glob("[0-9]*.json"):
        try:
            total += json.loads(path.read_text())["through"] + 1
        except (ValueError, OSError):    # replaced while read
            pass
    return total


def _wait_for_progress(root, topic: str, records: int, proc, timeout_s: float = 40.0) -> None:
    deadline = time.monotonic() + timeout_s
    while _archived_through(root, topic) < records:
        if proc.poll() is not None:
            raise AssertionError(f"the archiver exited early: {proc.stderr.read().decode()[-2000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"no progress to {records} records within {timeout_s} s")
        time.sleep(0.005)
