"""The benchmarks' CPU accounting: which thread, which process, how many cores."""
from __future__ import annotations

import os
import threading
import time

import pytest

from stream_ae.bench import cpu

proc = pytest.mark.skipif(not os.path.exists("/proc/self/task"), reason="needs Linux /proc")


@proc
def test_a_busy_thread_is_counted_in_its_group_and_an_idle_one_is_not():
    stop, spun = threading.Event(), threading.Event()

    def spin():
        t = time.thread_time()
        while time.thread_time() - t < 0.4:  # 0.4 s of CPU, however long that takes
            pass
        spun.set()
        stop.wait()

    busy = threading.Thread(target=spin, name="busy-spin")
    idle = threading.Thread(target=stop.wait, name="idle-wait")
    busy.start(), idle.start()
    a = cpu.snapshot()
    try:
        assert spun.wait(60)
        b = cpu.snapshot()
    finally:
        stop.set()
        busy.join(), idle.join()
    wall = b.at - a.at
    usage = cpu.cpu_between(a, b, {"busy": lambda n: n == "busy-spin", "idle": lambda n: n == "idle-wait"})
    assert 0.3 <= usage["busy"] * wall <= 0.5 + 0.05  # CPU seconds, at the kernel's tick resolution
    assert usage["idle"] == 0.0
    # the machine saw at least that thread (both counters move in 10 ms ticks: a few % here)
    assert usage["machine_cores"] >= 0.85 * usage["busy"]


@proc
def test_child_processes_are_found_by_name_and_gone_ones_are_skipped():
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        name = open(f"/proc/{child.pid}/comm").read().strip()
        assert child.pid in cpu.child_pids(name)
        assert cpu.child_pids("no-such-command") == []
    finally:
        child.kill()
        child.wait()
    assert cpu.cpu_seconds(child.pid) is None
    assert cpu.snapshot(children=(child.pid,)).children == {}


@proc
@pytest.mark.kafka
def test_the_stream_bench_says_which_part_of_the_detector_used_the_cores(broker, tmp_path, one_torch_thread):
    """(b) of ``stream-ae bench stream`` on some thousands of readings: the poll loop, the model's
    thread and kafka-python's I/O are each seen working, the broker's processes beside them."""
    from stream_ae.bench import stream
    from stream_ae.bench.rates import detector_rate
    from stream_ae.stream.broker import delete_topics

    artifact = stream._artifact(tmp_path)
    # /proc counts 10 ms ticks: kafka-python's I/O thread uses ~0.07 of a core, so the run must last
    # well over half a second for it to show (12 k readings, ~0.1 s at 118 k/s, sometimes showed 0)
    n = stream.ENTITIES * (artifact.window.length - 1) + 80_000
    msgs = stream._messages(n)
    topics = stream._topics(broker.bootstrap, "cpu")
    try:
        stream._produce_all(broker.bootstrap, topics["readings_topic"], msgs)
        settings = stream._settings(broker, topics)
        rate, profile = detector_rate(settings, artifact, n, stream.ENTITIES,
                                      tuple(cpu.child_pids(cpu.BROKER_PROCESS)))
    finally:
        delete_topics(broker.bootstrap, list(topics.values()))
    cores = profile["cpu_cores"]
    assert rate > 0 and profile["batches"] >= 3
    assert profile["checkpoints"] >= 1   # (b) ends on a checkpoint that covers the last window
    assert cores["poll_loop"] > 0 and cores["model"] > 0 and cores["kafka_io"] > 0
    assert cores["model"] <= settings.batch.scoring_threads + 0.05  # one torch thread each
    assert ("broker" in cores) == (broker.kind == "embedded")
    assert 0 < cores["machine_cores"] <= (os.cpu_count() or 1) + 0.05
