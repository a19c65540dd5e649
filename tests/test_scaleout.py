"""Scale-out across processes: two `stream-ae serve` processes in one consumer group split the
readings partitions; together they score every window exactly once and publish no alert
event twice. (tests/test_stream_ops.py covers a rebalance between two runners in threads of
one process; this is the deployment shape, separate processes.)"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error

import pytest

from test_stream_detector import T, make_artifact, plant
from stream_service import (REPO, Producer, free_port, http_get, messages, overrides_for, read_alerts,
                             stream_topics, wait_for)

pytestmark = pytest.mark.kafka


class Member:
    """One `stream-ae serve` subprocess with /metrics and /readyz on one port."""

    def __init__(self, overrides: list[str], log_path):
        self.port = free_port()
        args = [sys.executable, "-m", "stream_ae.cli", "serve"]
        for o in overrides + [f"ops.metrics_port={self.port}", f"ops.health_port={self.port}", "ops.log_format=text"]:
            args += ["--set", o]
        env = {k: v for k, v in os.environ.items() if not k.startswith("STREAM_AE_")}
        self.log_path, self._log = log_path, open(log_path, "wb")
        self.proc = subprocess.Popen(args, cwd=REPO, env={**env, "OMP_NUM_THREADS": "1"},
                                     stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT)

    def _get(self, path: str) -> tuple[int, str] | None:
        if self.proc.poll() is not None:
            raise AssertionError(f"serve exited with {self.proc.returncode}: {self.log_path.read_text()[-3000:]}")
        try:
            return http_get(f"http://127.0.0.1:{self.port}{path}")
        except (urllib.error.URLError, ConnectionError):
            return None                                   # not listening yet

    def assigned(self) -> list[int]:
        got = self._get("/readyz")
        return json.loads(got[1])["assigned_partitions"] if got and got[0] == 200 else []

    def sample(self, name: str) -> float:
        got = self._get("/metrics")
        if not got:
            return 0.0
        return sum(float(line.split()[-1]) for line in got[1].splitlines()
                   if line.startswith(name + " ") or line.startswith(name + "{"))

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


def test_two_processes_in_one_group_score_every_window_once(broker, topic_factory, kafka_config, tmp_path):
    from stream_ae.artifact import save_artifact

    topics = stream_topics(topic_factory, 4)
    artifact = save_artifact(make_artifact(seed=0), tmp_path / "models")
    names = tuple(f"pump-{c}" for c in "abcdefgh")           # over 4 partitions: both halves hold entities
    entity, ts, values = plant(n_rows=300, entities=names, anomaly=("pump-b", 150, 200))
    overrides = overrides_for(kafka_config, topics)
    overrides = [o for o in overrides if not o.startswith("ops.")] + [f"model.artifact={artifact}",
                                                                      "batch.torch_threads=1"]
    members = [Member(overrides, tmp_path / f"member{i}.log") for i in range(2)]
    producer = Producer(broker.bootstrap, topics["readings_topic"])
    try:
        wait_for(lambda: all(m.assigned() for m in members)
                 and sorted(members[0].assigned() + members[1].assigned()) == [0, 1, 2, 3],
                 45, "two processes to split the four partitions")
        producer.send(messages(entity, ts, values))           # keyed by entity, after the split
        expected = len(names) * (300 - T + 1)
        windows = lambda: sum(m.sample("stream_ae_windows_scored_total") for m in members)  # noqa: E731
        wait_for(lambda: windows() >= expected, 30, "every window to be scored", interval=0.2)
        time.sleep(1.0)                                        # a window scored twice would show by now
        per_member = [m.sample("stream_ae_windows_scored_total") for m in members]
        dead = sum(m.sample("stream_ae_dead_letters_total") for m in members)
    finally:
        producer.close()
        codes = [m.stop() for m in members]
    assert codes == [0, 0], "a member did not stop gracefully on SIGTERM"
    assert all(w > 0 for w in per_member), f"one process took no share: {per_member}"
    assert sum(per_member) == expected, f"windows scored {per_member}, expected {expected} in all"
    assert dead == 0
    alerts = read_alerts(broker.bootstrap, topics["alerts_topic"])
    ids = [a.event_id for a in alerts]
    assert len(ids) == len(set(ids)), "an alert event was published twice"
    assert [a.state for a in alerts if a.entity == "pump-b"] == ["open", "resolved"]
