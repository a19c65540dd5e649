"""Scale-out benchmark: k detector processes in one consumer group over the same readings.

``stream-ae bench stream --consumers 1,2``. On one broker, N readings keyed by entity are
produced once to a topic of ``PARTITIONS`` partitions. For each k, k ``stream-ae serve``
processes (one torch thread each, a fresh group id, fresh state/alerts topics) consume
them; the benchmark scrapes every process's ``/metrics`` and ``/readyz`` and reports:

* the aggregate rate, N ÷ (first record consumed by any process → last window scored);
* per process: its share of the readings, its partitions, its CPU over that interval;
  the broker's and the whole machine's CPU beside them;
* correctness: the windows scored sum to the expected count (each window scored once),
  no alert event id appears twice on the alerts topic, and the alert event ids equal
  those of the first k;
* the raw kafka-python consume rate of one consumer on the same topic, for reference.

Processes, not threads: that is how replicas run, and it is the only way past the GIL.
``stream-ae serve`` rather than ``python -m stream_ae.stream.consumer_process`` because serve is the
entry point a deployment runs and the one that serves ``/metrics``. Figures are noisy and
machine-specific: compare the ratio between k values within one run.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from stream_ae.bench import cpu, emit
from stream_ae.errors import StreamAEError

ENTITIES = 256        # 16 entities hash 13:3 onto the two halves of 8 partitions; 256 give 134:122
PARTITIONS = 8
SCRAPE_S = 0.05       # metric scrape interval: the timing resolution of each run
RUN_TIMEOUT_S = 600.0


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.read().decode()
    except urllib.error.HTTPError as exc:          # /readyz answers 503 before assignment
        return exc.read().decode()
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return None                                # not listening yet


class _Member:
    """One ``stream-ae serve`` subprocess and what its endpoints say."""

    def __init__(self, index: int, overrides: list[str], log_path: Path):
        self.index, self.port = index, _free_port()
        args = [sys.executable, "-m", "stream_ae.cli", "serve"]
        for o in overrides + [f"ops.metrics_port={self.port}", f"ops.health_port={self.port}",
                              "ops.log_level=WARNING", "batch.torch_threads=1"]:
            args += ["--set", o]
        env = {k: v for k, v in os.environ.items() if not k.startswith("STREAM_AE_")}
        env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.proc = subprocess.Popen(args, env=env, stdin=subprocess.DEVNULL, stdout=self._log,
                                     stderr=subprocess.STDOUT)
        self.consumed = self.windows = self.dead = 0.0
        self.assignments: list[tuple[int, ...]] = []     # assignments seen, in order

    def scrape(self) -> None:
        if self.proc.poll() is not None:
            raise StreamAEError(f"consumer {self.index} exited with status {self.proc.returncode}; "
                                f"its log: {self.log_path}\n{self.log_path.read_text()[-2000:]}")
        text = _get(f"http://127.0.0.1:{self.port}/metrics")
        if text is None:
            return
        dead = 0.0
        for line in text.splitlines():
            if line.startswith("stream_ae_messages_consumed_total "):
                self.consumed = float(line.split()[-1])
            elif line.startswith("stream_ae_windows_scored_total "):
                self.windows = float(line.split()[-1])
            elif line.startswith("stream_ae_dead_letters_total"):
                dead += float(line.split()[-1])
        self.dead = dead
        body = _get(f"http://127.0.0.1:{self.port}/readyz")
        if body:
            parts = tuple(json.loads(body).get("assigned_partitions") or ())
            # every change once assigned, an empty one included: a rebalance to the same partitions shows
            if (parts or self.assignments) and (not self.assignments or self.assignments[-1] != parts):
                self.assignments.append(parts)

    def stop(self, grace_s: float = 30.0) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)     # graceful: finish, checkpoint, commit
            try:
                self.proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


def _alert_ids(bootstrap: str, topic: str) -> list[str]:
    from kafka import KafkaConsumer, TopicPartition

    from stream_ae.stream import codec
    from stream_ae.stream.recovery import read_to_end

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    try:
        parts = consumer.partitions_for_topic(topic) or set()
        records = read_to_end(consumer, {TopicPartition(topic, p): None for p in sorted(parts)})
        return [codec.decode_alert(r.value).event_id for r in records]
    finally:
        consumer.close()


def _snapshot(members, broker_pids) -> dict:
    return {"t": time.perf_counter(), "machine": cpu.machine_busy(),
            "members": [cpu.cpu_seconds(m.proc.pid) for m in members],
            "broker": sum(cpu.cpu_seconds(p) or 0.0 for p in broker_pids), "self": time.process_time()}


def consumer_group_run(broker, artifact_path: Path, readings_topic: str, k: int, n: int,
                       expected_windows: int, out_dir: Path) -> dict:
    """k serve processes in one fresh group until every window of the topic is scored."""
    from stream_ae.bench.stream import _overrides, _topics
    from stream_ae.stream.broker import delete_topics

    topics = _topics(broker.bootstrap, f"scale{k}", partitions=PARTITIONS)
    own_readings = topics["readings_topic"]
    topics["readings_topic"] = readings_topic              # shared by every k; the rest are fresh
    overrides = _overrides(broker, topics) + [f"model.artifact={artifact_path}"]
    broker_pids = cpu.child_pids(cpu.BROKER_PROCESS)
    members = [_Member(i, overrides, out_dir / f"scaleout-k{k}-member{i}.log") for i in range(k)]
    try:
        first = last = all_in = None
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while time.monotonic() < deadline:
            for m in members:
                m.scrape()
            if first is None and sum(m.consumed for m in members) > 0:
                first = _snapshot(members, broker_pids)
            if first is not None and all_in is None and all(m.consumed > 0 for m in members):
                all_in = time.perf_counter()
            if first is not None and sum(m.windows for m in members) >= expected_windows:
                last = _snapshot(members, broker_pids)
                break
            time.sleep(SCRAPE_S)
        if last is None:
            raise StreamAEError(f"{k} consumer(s) did not score the {n} readings within {RUN_TIMEOUT_S:.0f} s; "
                                f"logs in {out_dir}")
        time.sleep(2.0)                                     # a late duplicate would show up here
        for m in members:
            m.scrape()
    finally:
        for m in members:
            m.stop()
    ids = _alert_ids(broker.bootstrap, topics["alerts_topic"])
    delete_topics(broker.bootstrap, [own_readings] + [v for key, v in topics.items() if key != "readings_topic"])
    elapsed = last["t"] - first["t"]
    busy = (last["machine"][0] - first["machine"][0]) / max(last["machine"][1] - first["machine"][1], 1.0)
    windows = sum(m.windows for m in members)
    cores = os.cpu_count() or 1
    per = []
    for i, m in enumerate(members):
        c0, c1 = first["members"][i], last["members"][i]
        used = (c1 - c0) if c0 is not None and c1 is not None else None
        per.append({"readings_consumed": int(m.consumed), "share": round(m.consumed / max(n, 1), 3),
                    "windows_scored": int(m.windows), "assignments_seen": [list(a) for a in m.assignments],
                    "cpu_seconds": round(used, 2) if used is not None else None,
                    "cpu_cores": round(used / elapsed, 2) if used is not None else None,
                    "readings_per_cpu_second": round(m.consumed / used, 1) if used else None})
    return {
        "consumers": k, "readings_per_s": round(n / elapsed, 1), "seconds": round(elapsed, 2),
        "per_process": per,
        "broker_cpu_cores": round((last["broker"] - first["broker"]) / elapsed, 2) if broker_pids else None,
        "bench_process_cpu_cores": round((last["self"] - first["self"]) / elapsed, 2),
        "machine_cpu_busy": round(busy, 3), "machine_cores": cores,
        # busy cores not accounted for by the members, the broker or this process: other work on the machine
        "other_cpu_cores": round(busy * cores - sum(p["cpu_cores"] or 0.0 for p in per)
                                 - ((last["broker"] - first["broker"]) / elapsed if broker_pids else 0.0)
                                 - (last["self"] - first["self"]) / elapsed, 2),
        "all_members_consuming_after_s": round(all_in - first["t"], 2) if all_in else None,
        "rebalanced_during_run": any(len(m.assignments) > 1 for m in members),
        "expected_windows": expected_windows, "windows_scored": int(windows),
        "every_window_scored_once": int(windows) == expected_windows,
        "readings_consumed": int(sum(m.consumed for m in members)),
        "dead_letters": int(sum(m.dead for m in members)),
        "alert_events": len(ids), "duplicate_event_ids": len(ids) - len(set(ids)),
        "_event_ids": sorted(set(ids)),
    }


def run_scaleout_bench(n: int = 200_000, consumers=(1, 2), json_path=None, out_dir="bench-out") -> dict:
    """Aggregate readings/s of k detector processes in one group, for each k; print and return."""
    from stream_ae.bench.rates import raw_consume_rate
    from stream_ae.bench.stream import (CHANNELS, SETTINGS, _artifact_path, _crc32c_native, _messages,
                                        _produce_all, _settings, _topics)
    from stream_ae.presets import PRESETS
    from stream_ae.stream.broker import delete_topics, running_broker

    consumers = tuple(int(k) for k in consumers)
    if not consumers or min(consumers) < 1 or max(consumers) > PARTITIONS:
        raise StreamAEError(f"consumers must be between 1 and {PARTITIONS} (the partitions), got {consumers}")
    load_before = os.getloadavg()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    artifact_path = _artifact_path(out_dir).resolve()
    msgs = _messages(n, ENTITIES)
    length = PRESETS["conv"].window.length
    expected = len(msgs) - ENTITIES * (length - 1)          # hop 1: every reading after the first L-1
    runs = []
    with running_broker() as broker:
        topics = _topics(broker.bootstrap, "scale", partitions=PARTITIONS)
        try:
            produce_rate = _produce_all(broker.bootstrap, topics["readings_topic"], msgs)
            raw = raw_consume_rate(_settings(broker, topics), len(msgs))
            for k in consumers:
                runs.append(consumer_group_run(broker, artifact_path, topics["readings_topic"], k, len(msgs),
                                               expected, out_dir))
        finally:
            delete_topics(broker.bootstrap, list(topics.values()))
        kind = broker.kind
    base_ids = runs[0].pop("_event_ids")
    for r in runs[1:]:
        r["alert_ids_equal_to_first_run"] = r.pop("_event_ids") == base_ids
    base = runs[0]["readings_per_s"]
    result = {
        "bench": "stream-scaleout", "n": len(msgs), "entities": ENTITIES, "channels": CHANNELS,
        "partitions": PARTITIONS, "broker": kind, "machine_cores": os.cpu_count(),
        "load_average_1m": {"before": round(load_before[0], 2), "after": round(os.getloadavg()[0], 2)},
        "kafka_crc32c": _crc32c_native(), "artifact": artifact_path.name,
        "settings": {**SETTINGS, "batch.torch_threads": 1}, "scrape_interval_s": SCRAPE_S,
        "produce_msgs_per_s": round(produce_rate, 1), "raw_consume_msgs_per_s": round(raw, 1),
        "runs": runs,
        "speedup_vs_first": {str(r["consumers"]): round(r["readings_per_s"] / base, 3) for r in runs},
        "notes": ["rate = N / (first record consumed by any member -> last window scored), group join "
                  "excluded, scraped every scrape_interval_s",
                  "raw_consume_msgs_per_s: one bare kafka-python consumer on the same topic, same run",
                  "the broker, the members and this process share the machine's cores"],
    }
    return emit(result, json_path)
