"""(c) of ``stream-ae bench stream``: latency at a paced load, and the broker's own share of it.

Both runs read the same readings, paced from another process (``loadgen.paced_producer``) at
the same rate for ``LATENCY_SECONDS``:

* **alerts** (the target): a fresh StreamRunner consumes; every alert event's latency, from
  the reading's Kafka CreateTime (stamped when it was sent) to the alert's acknowledgement;
* **broker floor**: a bare kafka-python consumer (same client settings, record decoder,
  process settings and records per poll as the runner, no processing); every reading's
  latency, from its CreateTime to the poll that returned it. What the alerts' figures add
  over it is the detector's: batching, scoring, thresholds, the alert's produce and
  acknowledgement.

Each run also reports its two halves apart (``halves``: by when the reading was sent), with
the cores each part of the machine used then (``cpu_cores``: the runner's threads by group or
the bare consumer, the embedded broker, the load generator, the whole machine). On Tansu the
cost of serving fetches grows with the topic: at a steady 57 k msg/s the broker used 0.18 of a
core throughout 20 s with no consumer, and 0.31 -> 0.55 with one consumer reading along; on
the 2-core machine the detector then shares less. The halves show how much of a p99 is that.

Both runs also hand back a ``_timeline`` (each alert event's latency and the cores over time;
the floor's p50 and p99 per half second) that ``latency_plot`` draws; it is not in the JSON.
"""
from __future__ import annotations

import math
import multiprocessing
import time
from pathlib import Path

import numpy as np

from stream_ae.bench import cpu
from stream_ae.bench.loadgen import paced_producer

LATENCY_SECONDS = 20.0  # length of each paced run


def paced_readings(rate: float) -> int:
    """How many readings a paced run sends at ``rate`` per second."""
    return int(rate * LATENCY_SECONDS)


class _LatencyTap:
    """Records every observation of the runner's latency histogram (and when), and forwards it."""

    def __init__(self, histogram):
        self.histogram, self.values, self.at = histogram, [], []

    def observe(self, seconds: float) -> None:
        self.values.append(seconds)
        self.at.append(time.time())
        self.histogram.observe(seconds)


class _CpuTrack:
    """Cores used as a run goes: this process's threads by group, the embedded broker and the
    load generator, and the whole machine; sampled at most every ``every_s``."""

    def __init__(self, groups: dict, every_s: float = 0.5):
        self.groups, self.every_s = groups, every_s
        self.broker = tuple(cpu.child_pids(cpu.BROKER_PROCESS))
        self.generator: tuple[int, ...] = ()
        self.samples: list[tuple[float, cpu.Snapshot]] = []  # (wall time, snapshot)

    def watch_generator(self, pid: int | None) -> None:
        if pid is not None:
            self.generator = (pid,)

    def sample(self) -> None:
        now = time.time()
        if not self.samples or now - self.samples[-1][0] >= self.every_s:
            self.samples.append((now, cpu.snapshot(self.broker + self.generator)))

    def cores(self, start: float, end: float) -> dict | None:
        """Cores used between the samples nearest inside [start, end]; None without two. A child
        process counts between the first and last samples that saw it (the generator exits at
        the end of its run)."""
        inside = [snap for at, snap in self.samples if start <= at <= end]
        if len(inside) < 2 or inside[-1].at <= inside[0].at:
            return None
        out = cpu.cpu_between(inside[0], inside[-1], self.groups)
        out.pop("children", None)
        for label, pids in (("broker", self.broker), ("load_generator", self.generator)):
            seen = [snap for snap in inside if all(p in snap.children for p in pids)]
            if pids and len(seen) >= 2 and seen[-1].at > seen[0].at:
                used = sum(seen[-1].children[p] - seen[0].children[p] for p in pids)
                out[label] = round(used / (seen[-1].at - seen[0].at), 3)
        return out

    def series(self, t0: float) -> dict:
        """:meth:`cores` between consecutive samples, for the plot: the interval's middle (seconds
        after ``t0``, wall clock), the machine, the broker and the load generator (NaN where unseen)."""
        out: dict[str, list] = {"t_s": [], "machine": [], "broker": [], "load_generator": []}
        for (w0, _), (w1, _) in zip(self.samples, self.samples[1:]):
            cores = self.cores(w0, w1)
            if cores is None:
                continue
            out["t_s"].append((w0 + w1) / 2 - t0)
            for label, key in (("machine", "machine_cores"), ("broker", "broker"),
                               ("load_generator", "load_generator")):
                out[label].append(cores.get(key, math.nan))
        return out


def _halves(ms: np.ndarray, sent: np.ndarray, span: tuple[float, float], track: _CpuTrack) -> dict:
    """Percentiles of the readings sent in each half of the generator's span, and the cores used then."""
    first, last = span
    mid = (first + last) / 2
    out = {}
    # the outer bounds get 1 s of slack: CreateTime is the producer's stamp, the span the generator's clock
    for name, lo, hi in (("first", first - 1.0, mid), ("second", mid, last + 1.0)):
        sel = ms[(sent >= lo) & (sent < hi)]
        out[name] = {"count": int(sel.size), **_percentiles(sel, ""), "cpu_cores": track.cores(lo, hi)}
    return out


class _PacedLoad:
    """The load generator in a child process: ``count`` of ``msgs`` at ``rate`` per second."""

    def __init__(self, bootstrap: str, topic: str, warm_topic: str, msgs, rate: float, out_dir: Path):
        import msgspec

        self.count = min(len(msgs), paced_readings(rate))
        self.path = Path(out_dir) / "stream-bench-paced.msgpack"
        self.path.write_bytes(msgspec.msgpack.encode(msgs[:self.count]))
        ctx = multiprocessing.get_context("spawn")
        self.span = ctx.Array("d", 2, lock=False)  # the generator's first send, last acknowledgement
        self.child = ctx.Process(target=paced_producer,
                                 args=(bootstrap, topic, str(self.path), rate, warm_topic, self.span))

    def start(self) -> None:
        if self.child.pid is None:
            self.child.start()

    def running(self) -> bool:
        return self.child.pid is None or self.child.is_alive()

    def finish(self) -> float:
        """Wait for the generator; the rate its readings were delivered at (its start-up excluded)."""
        self.child.join(60)
        self.path.unlink(missing_ok=True)
        first, last = self.sent_span()
        if self.child.exitcode != 0 or not last > first > 0:
            raise RuntimeError(f"the load generator failed (exit code {self.child.exitcode})")
        return self.count / (last - first)

    def sent_span(self) -> tuple[float, float]:
        """The generator's first send and last acknowledgement (wall clock), once it has ended."""
        return float(self.span[0]), float(self.span[1])


def _percentiles(ms: np.ndarray, prefix: str) -> dict:
    def q(p):
        return round(float(np.percentile(ms, p)), 1) if ms.size else None

    return {f"{prefix}p50_ms": q(50), f"{prefix}p99_ms": q(99),
            f"{prefix}max_ms": round(float(ms.max()), 1) if ms.size else None}


def latency_run(broker, artifact, msgs, rate: float, out_dir: Path, precision: str = "fp32") -> dict:
    """(c) Offered load ``rate`` for ``LATENCY_SECONDS`` (as many of ``msgs`` as that takes);
    every alert event's ingest-to-ack latency."""
    from stream_ae.bench.rates import CPU_GROUPS, _run
    from stream_ae.bench.stream import _settings, _topics
    from stream_ae.stream.broker import delete_topics
    from stream_ae.stream.runner import StreamRunner

    topics = _topics(broker.bootstrap, "lat")
    try:
        settings = _settings(broker, topics, precision)
        load = _PacedLoad(broker.bootstrap, settings.kafka.readings_topic, settings.kafka.dead_letter_topic,
                          msgs, rate, out_dir)
        runner = StreamRunner(settings, artifact)
        tap = _LatencyTap(runner.metrics.latency)
        runner.metrics.latency = tap
        m = runner.metrics
        track = _CpuTrack(CPU_GROUPS)

        def done() -> bool:
            if m.assigned and m.running:  # not after the runner stopped: its threads are gone
                load.start()
                track.watch_generator(load.child.pid)
                track.sample()
            return (m.sample("stream_ae_messages_consumed_total") or 0) >= load.count and not load.running()

        _run(runner, done)
        achieved = load.finish()
    finally:
        delete_topics(broker.bootstrap, list(topics.values()))
    lat = np.asarray(tap.values) * 1000
    sent = np.asarray(tap.at) - np.asarray(tap.values)  # each event's reading's CreateTime
    first = load.sent_span()[0]
    return {"offered_load_msgs_per_s": round(rate, 1), "readings": load.count,
            "achieved_msgs_per_s": round(achieved, 1), "alert_events": int(lat.size),
            **_percentiles(lat, "latency_"), "latency_halves": _halves(lat, sent, load.sent_span(), track),
            "_timeline": {"sent_s": sent - first, "ms": lat, "cores": track.series(first)}}  # for the plot


def broker_latency_run(broker, msgs, rate: float, out_dir: Path, timeout_s: float = 300.0) -> dict:
    """The broker floor under (c): the same paced readings read by a bare consumer; every
    reading's latency from its CreateTime to the poll that returned it."""
    from stream_ae.bench.rates import bare_consumer
    from stream_ae.bench.stream import _settings, _topics
    from stream_ae.stream.batcher import MicroBatcher
    from stream_ae.stream.broker import delete_topics

    topics = _topics(broker.bootstrap, "floor")
    parts, sent, got = [], [], 0
    try:
        settings = _settings(broker, topics)
        load = _PacedLoad(broker.bootstrap, settings.kafka.readings_topic, settings.kafka.dead_letter_topic,
                          msgs, rate, out_dir)
        # a poll may bring what the runner's may: its batcher's room when empty (two batches)
        max_records = MicroBatcher(settings.batch.max_size, settings.batch.max_wait_ms / 1000).room()
        with bare_consumer(settings, compiled=settings.kafka.record_decoder == "compiled") as (consumer, _):
            track = _CpuTrack({"consumer": lambda name: True})
            load.start()
            track.watch_generator(load.child.pid)
            deadline = time.monotonic() + timeout_s
            while got < load.count and time.monotonic() < deadline:
                polled = consumer.poll(timeout_ms=settings.batch.max_wait_ms, max_records=max_records)
                now_ms = time.time() * 1000
                track.sample()
                for batch in polled.values():
                    got += len(batch)
                    created = np.fromiter((r.timestamp for r in batch), np.float64, len(batch))
                    parts.append(now_ms - created)
                    sent.append(created / 1000)
        achieved = load.finish()
    finally:
        delete_topics(broker.bootstrap, list(topics.values()))
    if got < load.count:
        raise RuntimeError(f"the bare consumer read {got} of {load.count} paced readings in {timeout_s:.0f} s")
    lat = np.concatenate(parts) if parts else np.zeros(0)
    created = np.concatenate(sent) if sent else np.zeros(0)
    return {"offered_load_msgs_per_s": round(rate, 1), "readings": load.count,
            "achieved_msgs_per_s": round(achieved, 1), **_percentiles(lat, ""),
            "halves": _halves(lat, created, load.sent_span(), track),
            "_timeline": binned_percentiles(lat, created - load.sent_span()[0])}  # for the plot


def binned_percentiles(ms: np.ndarray, sent_s: np.ndarray, bin_s: float = 0.5) -> dict:
    """p50 and p99 of ``ms`` per ``bin_s`` of sending time: {"t_s" (bin middles), "p50", "p99"}."""
    if not ms.size:
        return {"t_s": [], "p50": [], "p99": []}
    bins = np.floor(sent_s / bin_s).astype(np.int64)  # (n,)
    order = np.argsort(bins, kind="stable")
    keys, starts = np.unique(bins[order], return_index=True)
    groups = np.split(ms[order], starts[1:])
    return {"t_s": ((keys + 0.5) * bin_s).tolist(), "p50": [float(np.percentile(g, 50)) for g in groups],
            "p99": [float(np.percentile(g, 99)) for g in groups]}
