"""Recovery protocol: entity state on a state topic, replay positions beside it.

Why not transactions or commit metadata: the embedded broker (Tansu) leaves aborted
records visible and drops offset-commit metadata (``../shared/KAFKA.md``), so exactly-once
output rests on the state topic and on deterministic event ids instead.

The state topic has as many partitions as the readings topic (compacted on real Kafka; a
reader keeps the last value per key, so an uncompacted topic works too). The snapshot of
an entity whose last reading came from readings partition ``p`` is written to state
partition ``p`` explicitly (not through the key hash), keyed by the entity id.

A checkpoint, between micro-batches (every ``checkpoint_interval_s``, counted from the last
checkpoint or restore; on revoke; on shutdown), once the batches in flight are finished:

1. on the poll loop, take a snapshot of every entity changed since the last checkpoint and one
   record per assigned readings partition, key ``__partition__/<p>``, holding the next
   readings offset, the alerts-topic and dead-letter-topic offsets (per partition of each)
   acknowledged so far and the consumer's drift watch (``drift_watch.py``; the same few hundred
   bytes in each of its partitions' records); the poll loop goes on;
2. on the checkpoint thread: flush the producer, so every alert and dead letter produced
   before the snapshot is acknowledged (if any failed, stop: no state goes out that assumes
   it published); then write the records, the entities' before the position records, which
   commit them (a restore sets aside entity records after a partition's last one), and flush;
3. back on the poll loop, once that is done, commit the readings offsets (asynchronously but
   for the last one: a partition resumes from its state record's offset, so the group's
   commit is only a fallback for a partition that has no checkpoint yet).

The stored output offsets are lower bounds on where anything produced after the snapshot
lands (an alert still in flight at the snapshot lands at or after them), so a restore that
reads the alerts topic from them finds every event the replay derives again, and perhaps a
few the state already holds. The shutdown and revoke checkpoints, which wait for their write
anyway, flush the producer before the snapshot, so they store the outputs' ends exactly. One
checkpoint is written at a time, from one thread, so each state partition receives the
records in checkpoint order.

A restored partition *holds* its stored output offsets (0 without a record) until its replay
has reached the readings high-watermark first seen after the restore: the previous owner may
have published events from any reading below it, events this owner only suppresses once its
replay derives them again. A checkpoint taken before then (periodic, revoke, shutdown) stores,
per output partition, the lower of the offset reached and the held one, so the next owner
reads those events too; without the hold, a second failover published them again.

On assignment, ``recovery.py`` reads all of this back, and *fences* the partition: it writes a
record with a higher epoch than any the state partition held (``Checkpointer.fence``), reads
up to it, and stamps every later record of its own with that epoch (record header
``stream_ae.epoch``). A reader drops any record whose epoch is below a fence before it. That is
how a checkpoint still in flight from a member the group evicted during a stall (a "zombie",
``membership.py``), landing after the new owner's restore, is ignored by every later restore
instead of taking the place of the new owner's newer records. The epoch is (one more than the
highest seen, the group generation): a zombie whose own fence lands late, after the new
owner's, took the same first number at an older generation, so its fence is dropped too.
"""

from __future__ import annotations

import json
import logging
import math
import struct
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

import msgspec
import numpy as np

from stream_ae.errors import StreamAEError
from stream_ae.stream.codec import RESERVED_ENTITY_PREFIX

log = logging.getLogger(__name__)

PARTITION_KEY = RESERVED_ENTITY_PREFIX  # the decoder refuses entity ids that start so
FENCE_PREFIX = f"{PARTITION_KEY}fence/".encode()  # + "<p>/<epoch hex>": a key of its own for each fence
EPOCH_HEADER = "stream_ae.epoch"
FORMAT = 1
_EPOCH = struct.Struct(">QQ")  # (takeover number, group generation); as bytes they sort as the pair


def epoch_after(top: bytes, generation: int) -> bytes:
    """The epoch a consumer taking a state partition over stamps its records with: one takeover
    more than ``top`` (the highest epoch the partition holds, ``b""``: none), at ``generation``.

    >>> a = epoch_after(b"", 5); b = epoch_after(a, 3); a < b, b < epoch_after(a, 4)
    (True, True)
    """
    return _EPOCH.pack((_EPOCH.unpack(top)[0] if top else 0) + 1, max(int(generation), 0))


def fence_key(p: int, epoch: bytes) -> bytes:
    """Key of the fence of ``epoch`` in state partition ``p`` (unique, so compaction keeps it)."""
    return FENCE_PREFIX + f"{p}/{epoch.hex()}".encode()


def fence_value() -> bytes:
    """A fence's value: a position record of partition -1, which releases before fences (they
    read every ``__partition__/`` key as a position record of the partition it names) skip, so
    a rollback still restores.

    >>> PartitionRecord.decode(fence_value()).partition
    -1
    """
    return PartitionRecord(-1, 0, written_at=time.time()).encode()


def _numpy_scalar(obj):
    """msgspec's hook for what it does not encode itself: a numpy scalar becomes its Python value."""
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"a snapshot holds a {type(obj).__name__}, which cannot be encoded")


_ENCODER = msgspec.msgpack.Encoder(enc_hook=_numpy_scalar)


def encode_state(d: dict) -> bytes:
    """MessagePack bytes of a snapshot; NaN and inf (forward-fill state) survive the round trip.

    A checkpoint encodes every changed entity on the poll loop, so the codec matters: for the
    16 entities of the stream benchmark (~20 KB of JSON each, mostly the windower's tail and
    the threshold's peaks), ``json.dumps`` took 8.6 ms a checkpoint and msgspec's MessagePack
    0.1 ms, at half the bytes.

    >>> decode_state(encode_state({"last": [float("nan"), 1.0]}))["last"][1]
    1.0
    """
    return _ENCODER.encode(d)


def decode_state(data: bytes) -> dict:
    """Inverse of :func:`encode_state`; also reads the JSON snapshots of earlier versions
    (a JSON object starts with ``{``, which no MessagePack map does).

    >>> decode_state(b'{"windows": 3, "last": NaN}')["windows"]
    3
    """
    if data[:1] == b"{":
        return json.loads(data)
    return msgspec.msgpack.decode(data)


def partition_key(p: int) -> bytes:
    """Key of the replay-position record of readings partition ``p``.

    >>> partition_key(3)
    b'__partition__/3'
    """
    return f"{PARTITION_KEY}{p}".encode()


@dataclass
class PartitionRecord:
    """Replay positions of one readings partition as of a checkpoint."""

    partition: int
    next_offset: int  # next readings offset not in the state
    alerts_offsets: dict[int, int] = field(default_factory=dict)  # alerts partition -> offset
    written_at: float = 0.0
    drift: dict | None = None  # the writer's DriftWatch.state() (records before it: none)
    dead_letter_offsets: dict[int, int] = field(default_factory=dict)  # dead-letter partition -> offset
    clock: int | None = None  # the partition's event time (silence.py; records before it: none)

    def encode(self) -> bytes:
        return encode_state({"format": FORMAT, "partition": self.partition, "next_offset": self.next_offset,
                             "alerts_offsets": {str(k): v for k, v in self.alerts_offsets.items()},
                             "written_at": self.written_at, "drift": self.drift,
                             "dead_letter_offsets": {str(k): v for k, v in self.dead_letter_offsets.items()},
                             "clock": self.clock})

    @classmethod
    def decode(cls, data: bytes) -> "PartitionRecord":
        d = decode_state(data)
        return cls(int(d["partition"]), int(d["next_offset"]),
                   {int(k): int(v) for k, v in d["alerts_offsets"].items()}, float(d.get("written_at", 0.0)),
                   d.get("drift"), {int(k): int(v) for k, v in d.get("dead_letter_offsets", {}).items()},
                   None if d.get("clock") is None else int(d["clock"]))


class Checkpointer:
    """Writes checkpoints through the runner's producer and tracks the output positions.

    ``alerts_offsets`` (``dead_letter_offsets``) is a lower bound, per partition of the alerts
    (dead-letter) topic, on where anything produced after the current moment can land: the end
    seen on restore, raised by every acknowledged alert (letter). ``output_failed`` says whether
    an alert or dead letter failed to be produced (``Publisher.failed``).
    """

    def __init__(self, producer, state_topic: str, interval_s: float, clock=time.monotonic,
                 output_failed: Callable[[], bool] = lambda: False):
        self.producer = producer
        self.state_topic = state_topic
        self.interval_s = float(interval_s)
        self.alerts_offsets: dict[int, int] = {}
        self.dead_letter_offsets: dict[int, int] = {}
        self.output_failed = output_failed
        self._clock = clock
        self._last = clock()
        self._thread: ThreadPoolExecutor | None = None
        self._holds: dict[int, _Hold] = {}  # restored readings partition -> its stored output offsets
        self._epochs: dict[int, bytes] = {}  # owned readings partition -> the epoch its records carry
        self.count = 0

    def due(self) -> bool:
        return self._clock() - self._last >= self.interval_s

    def ask(self) -> None:
        """Make the next checkpoint due now, from any thread (``bench/stream.py``'s (b) ends on one)."""
        self._last = -math.inf

    def alert_acked(self, partition: int, offset: int) -> None:
        """Called from the producer's delivery callback for every alert."""
        _advance(self.alerts_offsets, partition, offset + 1)

    def letter_acked(self, partition: int, offset: int) -> None:
        """Called from the producer's delivery callback for every dead letter."""
        _advance(self.dead_letter_offsets, partition, offset + 1)

    def restored(self, ends: dict[int, int], letter_ends: dict[int, int] | None = None) -> None:
        """After a restore: the alerts topic was read to ``ends`` (the dead-letter topic to
        ``letter_ends``), and the interval starts over. The state was just read back, so the
        next checkpoint is due an interval from now rather than at once (the interval would
        otherwise count from start-up, before the group join)."""
        for p, o in ends.items():
            _advance(self.alerts_offsets, p, o)
        for p, o in (letter_ends or {}).items():
            _advance(self.dead_letter_offsets, p, o)
        self._last = self._clock()

    def hold(self, partition: int, positions: PartitionRecord | None) -> None:
        """At the restore of readings ``partition`` from ``positions`` (None: no record): its
        checkpoints store no output offset past the restored ones until its replay reaches the
        readings high-watermark (module docstring)."""
        self._holds[partition] = _Hold(dict(positions.alerts_offsets) if positions else {},
                                       dict(positions.dead_letter_offsets) if positions else {})

    def holding(self) -> bool:
        """Whether a restored partition's replay has yet to pass its previous owner's reach."""
        return bool(self._holds)

    def replaying(self, partitions) -> bool:
        """Whether one of ``partitions`` (those read from) is held: its replay may not have passed
        its previous owner yet. A partition never read from replays nothing. A hold is let go by
        the first checkpoint past it (``output_offsets``)."""
        return any(p in self._holds for p in partitions)

    def release(self, partitions) -> None:
        """The partitions are no longer this consumer's."""
        for p in partitions:
            self._holds.pop(p, None)
            self._epochs.pop(p, None)

    def fence(self, tops: dict[int, bytes], generation: int, timeout_s: float = 30.0) -> dict[int, int]:
        """Take state partitions over (``recovery.read_state``): write to each a fence with an
        epoch above ``tops[p]``, the highest it holds, and stamp this consumer's later records
        for it so. Returns each fence's offset once acknowledged."""
        epochs = {p: epoch_after(top, generation) for p, top in tops.items()}
        value = fence_value()
        sent = {p: self.producer.send(self.state_topic, key=fence_key(p, e), value=value, partition=p,
                                      headers=[(EPOCH_HEADER, e)]) for p, e in epochs.items()}
        self.producer.flush(timeout=timeout_s)
        offsets = {p: f.get(timeout=0).offset for p, f in sent.items()}
        self._epochs.update(epochs)
        return offsets

    def output_offsets(self, partition: int, next_offset: int,
                       highwater: Callable[[int], int | None]) -> tuple[dict[int, int], dict[int, int]]:
        """The alerts and dead-letter offsets a record of ``partition`` at ``next_offset`` stores.

        >>> c = Checkpointer(None, "state", 5.0)
        >>> c.alerts_offsets = {0: 40, 1: 12}
        >>> c.hold(3, PartitionRecord(3, 100, {0: 25}))
        >>> c.output_offsets(3, 150, lambda p: None)  # high-watermark not fetched yet: held
        ({0: 25, 1: 0}, {})
        >>> c.output_offsets(3, 150, lambda p: 180)  # the replay is not there yet
        ({0: 25, 1: 0}, {})
        >>> c.output_offsets(3, 180, lambda p: 500)  # passed the first high-watermark seen: released
        ({0: 40, 1: 12}, {})
        """
        alerts, letters = dict(self.alerts_offsets), dict(self.dead_letter_offsets)  # acks raise them meanwhile
        held = self._holds.get(partition)
        if held is None:
            return alerts, letters
        if held.target is None:
            held.target = highwater(partition)
        if held.target is not None and next_offset >= held.target:
            del self._holds[partition]
            return alerts, letters
        return ({q: min(o, held.alerts.get(q, 0)) for q, o in alerts.items()},
                {q: min(o, held.letters.get(q, 0)) for q, o in letters.items()})

    def begin(self, table, next_offsets: dict[int, int], drift: dict | None = None,
              highwater: Callable[[int], int | None] = lambda p: None,
              clocks: dict[int, int] | None = None, settle: bool = False) -> tuple[float, Future]:
        """Step 1 on the calling thread (the poll loop): the snapshot of the entities ``table``
        (``EntityTable``) holds changed and of the positions (with ``drift``, the drift watch's
        state; ``highwater(p)``: the readings partition's fetch high-watermark, or None; ``clocks``:
        each partition's event time, ``silence.py``; ``settle``: wait for the alerts and dead letters
        produced so far to be acknowledged first, so the records store the outputs' ends rather than
        a lower bound, for the shutdown and revoke checkpoints, which wait for the write anyway);
        step 2 on the checkpoint thread. The caller commits once the future is done.

        Returns how long the snapshot held the caller (with thousands of entities, a tenth of
        a second) and the write's future: ``(seconds from the snapshot until every record was
        acknowledged, entity states written)``, or the producer's error. Call it again only
        once the previous future is done (the caller waits: records must land in order)."""
        started = time.perf_counter()
        if settle:
            self.producer.flush()
        states = table.take_dirty()  # entity -> (readings partition or -1, encoded snapshot)
        now = time.time()
        positions = {}
        for p, offset in next_offsets.items():
            alerts, letters = self.output_offsets(p, offset, highwater)
            positions[p] = PartitionRecord(p, offset, alerts, now, drift, letters, (clocks or {}).get(p)).encode()
        self._last = self._clock()
        if self._thread is None:
            self._thread = ThreadPoolExecutor(1, thread_name_prefix="stream-ae-checkpoint")
        write = self._thread.submit(self._write, states, positions, started)
        return time.perf_counter() - started, write

    def _write(self, states: dict[str, tuple[int, bytes]], positions: dict[int, bytes],
               started: float) -> tuple[float, int]:
        """Step 2, on the checkpoint thread."""
        self.producer.flush()  # everything produced before the snapshot is acknowledged (callbacks ran)
        if self.output_failed():
            raise StreamAEError("an alert or dead letter could not be produced; no state is written "
                                "after it (a restart replays from the last checkpoint)")
        top = max(self._epochs.values(), default=b"")
        stamp = lambda p: [(EPOCH_HEADER, self._epochs.get(p, top))]  # noqa: E731  (fence above)
        futures = [self.producer.send(self.state_topic, key=entity.encode(), value=value,
                                      partition=p if p >= 0 else None, headers=stamp(p))
                   for entity, (p, value) in states.items()]
        futures += [self.producer.send(self.state_topic, key=partition_key(p), value=value, partition=p,
                                       headers=stamp(p))
                    for p, value in positions.items()]
        self.producer.flush()
        for f in futures:  # raises the producer's error: the caller must not commit
            f.get(timeout=0)
        self.count += 1
        log.debug("checkpoint %d: %d entities, partitions %s", self.count, len(states), sorted(positions))
        return time.perf_counter() - started, len(states)

    def close(self) -> None:
        """Wait for a write in progress and stop the checkpoint thread (before the producer closes)."""
        if self._thread is not None:
            self._thread.shutdown(wait=True)
            self._thread = None


@dataclass
class _Hold:
    """A restored partition's stored output offsets, and the readings offset that releases them."""

    alerts: dict[int, int]
    letters: dict[int, int]
    target: int | None = None  # the first readings high-watermark seen after the restore


def _advance(offsets: dict[int, int], partition: int, offset: int) -> None:
    """Raise ``offsets[partition]`` to ``offset`` (a lower bound on where the next record lands)."""
    if offset > offsets.get(partition, 0):
        offsets[partition] = offset
