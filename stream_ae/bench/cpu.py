"""Where the CPU went during a benchmark: per thread of this process, per child process, per machine.

Read from ``/proc`` (Linux), so a run can say what bounds it: a model thread busy all the time,
a poll loop that holds the GIL, a broker competing for the same cores. Everything here reads
counters; nothing is timed by sampling. On a system without ``/proc`` the readings are empty and
the benchmarks leave the figures out.

Examples
--------
>>> a = Snapshot(at=10.0, threads={1: ("MainThread", 3.0), 2: ("kafka-io-x", 1.0)}, children={9: 5.0})
>>> b = Snapshot(at=12.0, threads={1: ("MainThread", 4.0), 2: ("kafka-io-x", 1.5), 3: ("late", 0.2)},
...              children={9: 6.0})
>>> cpu_between(a, b, {"main": lambda n: n == "MainThread", "io": lambda n: n.startswith("kafka-io")},
...             children_label="broker")
{'main': 0.5, 'io': 0.25, 'other': 0.1, 'broker': 0.5}
"""
from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
BROKER_PROCESS = "tansu"  # the embedded broker's command name (stream_ae.stream.broker)


def cpu_seconds(pid: int, tid: int | None = None) -> float | None:
    """User + system CPU seconds of a live process (or one of its threads); None once it is gone."""
    path = f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat"
    try:
        fields = Path(path).read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK   # utime, stime: fields 14, 15 of stat


def machine_busy() -> tuple[float, float]:
    """(busy, total) jiffies of all cores together, from /proc/stat; (0, 0) without /proc."""
    try:
        values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except OSError:
        return 0.0, 0.0
    idle = values[3] + values[4]                               # idle + iowait
    return float(sum(values) - idle), float(sum(values))


def child_pids(name: str) -> list[int]:
    """Children of this process whose command is ``name`` (the embedded broker)."""
    pids = []
    try:
        tasks = list(Path(f"/proc/{os.getpid()}/task").iterdir())
    except OSError:
        return []
    for task in tasks:
        try:
            pids += [int(p) for p in (task / "children").read_text().split()]
        except OSError:
            continue
    out = []
    for p in pids:
        try:
            if Path(f"/proc/{p}/comm").read_text().strip() == name:
                out.append(p)
        except OSError:
            continue
    return out


@dataclass
class Snapshot:
    """CPU counters at one instant."""

    at: float                                                  # perf_counter seconds
    threads: dict[int, tuple[str, float]] = field(default_factory=dict)   # native id -> (name, cpu s)
    children: dict[int, float] = field(default_factory=dict)              # pid -> cpu s
    machine: tuple[float, float] = (0.0, 0.0)


def snapshot(children: tuple[int, ...] = ()) -> Snapshot:
    """This process's threads (by their Python names), the given child processes, the machine."""
    pid = os.getpid()
    threads = {}
    for t in threading.enumerate():
        tid = t.native_id
        seconds = None if tid is None else cpu_seconds(pid, tid)
        if seconds is not None:
            threads[tid] = (t.name, seconds)
    kids = {p: s for p in children if (s := cpu_seconds(p)) is not None}
    return Snapshot(time.perf_counter(), threads, kids, machine_busy())


def cpu_between(a: Snapshot, b: Snapshot, groups: dict[str, Callable[[str], bool]],
                children_label: str = "children") -> dict[str, float]:
    """Cores used between two snapshots (CPU seconds / wall seconds), per group of threads.

    ``groups`` maps a label to a test on the thread's Python name; the first that matches takes
    the thread, the rest go to ``other``. A thread born after ``a`` counts from zero; one gone by
    ``b`` is not seen (its last interval is lost, so keep the threads of interest alive).
    ``machine_cores``: all cores' busy time over the interval, every process included. Empty
    when there is nothing to read (no /proc).
    """
    wall = b.at - a.at
    if wall <= 0 or not b.threads:
        return {}
    out = {label: 0.0 for label in groups}
    out["other"] = 0.0
    for tid, (name, seconds) in b.threads.items():
        used = seconds - a.threads.get(tid, (name, 0.0))[1]
        label = next((g for g, test in groups.items() if test(name)), "other")
        out[label] += used
    if b.children:
        out[children_label] = sum(s - a.children.get(p, 0.0) for p, s in b.children.items())
    result = {k: round(v / wall, 3) for k, v in out.items()}
    busy, total = b.machine[0] - a.machine[0], b.machine[1] - a.machine[1]
    if total > 0:
        result["machine_cores"] = round(busy / total * (os.cpu_count() or 1), 3)
    return result
