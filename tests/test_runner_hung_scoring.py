"""A scoring thread that never returns (a hung CUDA kernel, a deadlock) while a checkpoint is due:
the loop waits for the model once the batcher is full, so it stops polling and /healthz turns
"stalled" (a liveness probe restarts the pod). Before session 31 it went on polling a record at a
time, holding ever more records, with /healthz and /readyz both 200."""
from __future__ import annotations

import threading
import time
from collections import namedtuple
from concurrent.futures import Future
from types import SimpleNamespace

from stream_ae.stream.batcher import InFlight
from stream_ae.stream.ops import liveness
from stream_ae.stream.runner import StreamRunner
from stream_ae.stream.settings import load_settings
from tests.test_stream_detector import make_artifact

Record, Partition = namedtuple("Record", "offset"), namedtuple("Partition", "partition")


def test_a_hung_scoring_thread_stops_the_polls_and_liveness_says_stalled():
    runner = StreamRunner(load_settings(env={}, overrides=["batch.max_size=8", "model.device=cpu"]), make_artifact())
    polls, offset = [], [0]

    def poll(timeout_ms, max_records):   # steady traffic: the client always has records buffered
        polls.append(max_records)
        out = [Record(offset[0] + i) for i in range(min(max_records, 4))]
        offset[0] += len(out)
        return {Partition(0): out}

    runner._consumer = SimpleNamespace(poll=poll)
    runner._checkpointer = SimpleNamespace(due=lambda: True)
    runner.metrics.update_lag = lambda consumer: None
    runner.membership = SimpleNamespace(confirm=lambda: True, fresh=lambda: True)
    runner._assigned = {0}
    hung = Future()
    for _ in range(runner.max_in_flight):   # every scoring thread hung
        runner._inflight.append(InFlight({0: 0}, None, None, hung))

    def loop():
        for _ in range(3000):
            runner.step()

    threading.Thread(target=loop, daemon=True).start()
    time.sleep(1.0)
    assert len(polls) < 20, f"{len(polls)} polls while the model hung"
    assert len(runner.batcher) <= 2 * runner.batcher.max_records
    alive, body = liveness(runner.metrics, time.time() - 10, stale_after_s=0.5)
    assert not alive and body["status"] == "stalled"
