"""The archiver job: the readings topic -> the Parquet history that training reads.

One consumer group of its own (``archive.group_id``), offsets committed by hand. Per
topic-partition, valid readings are buffered and rolled into files at
``archive.file_rows`` rows or ``archive.max_file_age_s`` seconds (memory is bounded by
``file_rows`` rows per assigned partition, plus a few polls in flight and a full file that
waits for them). Invalid readings go
to the archiver's own dead-letter topic (``archive.dead_letter_topic``) with the stream's
reasons: the codec's, and ``duplicate`` / ``out_of_order`` per entity (a backfill refuses
an archive that goes back in time).

Nothing lost, nothing doubled, without transactions: offsets are committed only after the
files holding the records are durable (see ``writer.py``), and the archive's own marker,
not the group's commit, says where to resume: a partition restarts at
``max(committed, last archived + 1)``, after the files of a flush a crash cut short are
deleted. Dead letters are at least once (a crash can send one twice, as in the stream): the
worker only writes a file, which moves the marker past its records, when this process asks,
after it has produced every dead letter of what the worker holds and had them acknowledged.
It asks only while it is still sure of its partitions (``membership.fresh()``), so polls
handed over before a stall that cost them write nothing; and while it is unsure, with a file
waiting, it fetches no more (the partitions are paused), so unwritten files do not pile up.

The Kafka client stays in this process; decoding and Parquet writing run in one worker
process (:class:`~stream_ae.archiver.core.ArchiveCore`), fed in poll order, so that they use
a second core instead of competing with kafka-python's own record parsing for the GIL.
The worker dies with this process.
"""
from __future__ import annotations

import collections
import concurrent.futures as cf
from concurrent.futures.process import BrokenProcessPool
import logging
import threading
import time
from dataclasses import dataclass, field

from stream_ae.archiver import worker
from stream_ae.archiver.core import Outcome
from stream_ae.errors import StreamAEError
from stream_ae.stream import codec, record_decoding
from stream_ae.stream.corrupt_batch import first_offset
from stream_ae.stream.rebalance import rebalance_listener
from stream_ae.stream.membership import GroupMembership
from stream_ae.stream.publisher import send_dead_letter

log = logging.getLogger(__name__)

MAX_IN_FLIGHT = 8           # polls handed to the worker and not yet answered
AGE_CHECK_S = 0.5


@dataclass
class ArchiveReport:
    """What a run did. Times are ``time.perf_counter()`` seconds (None until it happened)."""

    consumed: int = 0
    rows: int = 0
    dead_letters: dict[str, int] = field(default_factory=dict)
    files: int = 0
    flushes: int = 0
    lost: int = 0                   # partitions the group took away during a stall
    assigned_at: float | None = None
    last_flush_at: float | None = None


class Archiver:
    """Consume readings and archive them; :meth:`run` until a stop event.

    Parameters
    ----------
    settings : Settings
        Service settings; uses ``kafka``, ``input``, ``batch.max_size`` and ``archive``.
    worker_process : bool
        Decode and write in a worker process (default) or in this one.
    """

    def __init__(self, settings, *, worker_process: bool = True):
        self.settings = settings
        self.worker_process = worker_process
        self.report = ArchiveReport()
        self._owned: set[int] = set()
        self._to_recover: set[int] = set()
        self._topic_id: str | None = None   # the readings topic's id the worker last checked (None: none yet)
        self._in_flight: collections.deque[tuple[cf.Future, list | None]] = collections.deque()  # (answer, records)
        self._to_commit: dict[int, int] = {}
        self._consumer = self._producer = self._pool = self.membership = None
        self._closing = False
        self._failed: BaseException | None = None
        self._due = False   # the worker holds a file to write (a full one, or one past max_file_age_s)
        self._holding = False   # partitions paused by _hold_while_unconfirmed
        self._lock = threading.RLock()  # the rebalance listener runs on threads of its own (rebalance.py)

    def _core_kwargs(self) -> dict:
        s, a = self.settings, self.settings.archive
        return dict(topic=s.kafka.readings_topic, root=a.root, partition_by=a.partition_by,
                    compression=a.compression, file_rows=a.file_rows, max_file_age_s=a.max_file_age_s,
                    max_message_bytes=s.input.max_message_bytes, unknown_fields=s.input.unknown_fields,
                    late_policy=s.input.late_policy, max_future_s=s.input.future_limit_s(),
                    max_entities=s.input.max_entities)

    def run(self, stop: threading.Event, *, max_records: int | None = None,
            idle_exit_s: float | None = None) -> ArchiveReport:
        """Archive until ``stop`` is set (or ``max_records`` consumed, or nothing arrived for
        ``idle_exit_s`` after the assignment); then flush everything, commit and close."""
        import contextlib

        from kafka import KafkaConsumer, KafkaProducer

        s, a = self.settings, self.settings.archive
        with contextlib.ExitStack() as stack:
            self._pool = worker.start(self._core_kwargs(), in_process=not self.worker_process)
            stack.callback(self._pool.shutdown)
            self._producer = KafkaProducer(**{"linger_ms": 5, **s.kafka_client_kwargs("producer"), "acks": "all",
                                              "enable_idempotence": True})
            stack.callback(self._producer.close, 10)
            self._consumer = KafkaConsumer(**{**s.kafka_client_kwargs("consumer"), "group_id": a.group_id,
                                              "auto_offset_reset": "earliest", "enable_auto_commit": False})
            stack.callback(self._close_consumer)
            self.membership = GroupMembership(self._consumer, s.kafka.readings_topic)
            record_decoding.install(self._consumer, s.kafka.record_decoder)
            self._consumer.subscribe([s.kafka.readings_topic], listener=rebalance_listener(self))
            last_record = next_age_check = time.monotonic()
            while not stop.is_set():
                got = self.step(age_check=time.monotonic() >= next_age_check)
                now = time.monotonic()
                if now >= next_age_check:
                    next_age_check = now + AGE_CHECK_S
                if got or self.report.assigned_at is None:   # idle counts from the assignment
                    last_record = now
                if max_records is not None and self.report.consumed >= max_records:
                    break
                if idle_exit_s is not None and now - last_record >= idle_exit_s:
                    break
            if self.membership.confirm():  # not after a stall that cost the partitions
                with self._lock:
                    self._write_files(None, due_only=False)
                self._commit()
        return self.report

    def _close_consumer(self) -> None:
        with self._lock:
            self._closing = True
        self._consumer.close(autocommit=False)

    def step(self, age_check: bool = False) -> int:
        """One poll handed to the worker; answers applied; durable offsets committed."""
        self.membership.confirm()  # after a stall, before more files are written (membership.py)
        self._hold_while_unconfirmed()
        records = self._consumer.poll(timeout_ms=200, max_records=self.settings.batch.max_size)
        seeks = {}
        n = 0
        with self._lock:
            if self._failed is not None:
                raise StreamAEError(f"the archiver stopped: {self._failed}") from self._failed
            if self._to_recover:
                seeks = self._recover(records)
            topic_id = _topic_id(self._consumer, self.settings.kafka.readings_topic) if records else None
            if topic_id is not None and topic_id != self._topic_id:  # recreated while running: no rebalance
                _result(self._pool.submit(worker.call, "adopt_topic_id", topic_id))  # raises on another id
                self._topic_id = topic_id
            for tp, batch in records.items():
                if tp.partition in self._owned:
                    n += len(batch)
                    fut = self._pool.submit(worker.call, "ingest", tp.partition, *worker.pack(batch))
                    self._in_flight.append((fut, batch))
            if age_check:   # answered in order, as the polls: which files are due
                self._in_flight.append((self._pool.submit(worker.call, "due"), None))
            while self._in_flight and (self._in_flight[0][0].done() or len(self._in_flight) > MAX_IN_FLIGHT):
                self._apply(*self._pop())
            if self._due and self.membership.fresh():
                self._write_files(None, due_only=True)
        self._seek(seeks)
        self._commit()
        self.report.consumed += n
        return n

    def _hold_while_unconfirmed(self) -> None:
        """While a file waits to be written and the membership is still unconfirmed after a stall
        (a probe the coordinator does not answer), fetch nothing more for the owned partitions:
        no file can be written then, so every ``file_rows`` readings would seal one more in memory.
        They are resumed once the membership is confirmed (or the files are written); a lost
        partition is forgotten, and a reassigned one starts unpaused."""
        from kafka import TopicPartition

        with self._lock:
            hold = self._due and not self.membership.fresh()
            owned = {TopicPartition(self.settings.kafka.readings_topic, p) for p in self._owned}
        if not (hold or self._holding):
            return
        self._holding = hold
        owned &= set(self._consumer.assignment())  # pause() refuses a partition no longer assigned
        paused = set(self._consumer.paused())  # of the partitions assigned now
        if hold and owned - paused:
            self._consumer.pause(*(owned - paused))
            log.warning("a file waits to be written but the group membership is unconfirmed since a stall: "
                        "partitions %s are paused until it is", sorted(tp.partition for tp in owned - paused))
        elif not hold and paused:
            self._consumer.resume(*paused)
            log.info("partitions %s resumed", sorted(tp.partition for tp in paused))

    def _pop(self) -> tuple[Outcome, list | None]:
        fut, batch = self._in_flight.popleft()
        return _result(fut), batch

    def _apply(self, out: Outcome, batch: list | None = None) -> None:
        r = self.report
        reasons = dict(out.reasons)
        for i, reason, detail, entity in out.dead_letters:
            letter = codec.dead_letter(batch[i], reason, detail, entity=entity)
            if letter.reason != reason:  # the worker saw the bytes of an unreadable batch's stand-in only
                reasons[reason] -= 1
                reasons[letter.reason] = reasons.get(letter.reason, 0) + 1
            send_dead_letter(self._producer, self.settings.archive.dead_letter_topic, letter).add_errback(
                self._send_failed)
        for reason, count in reasons.items():
            if count:
                r.dead_letters[reason] = r.dead_letters.get(reason, 0) + count
        self._due = self._due or bool(out.due)
        r.rows, r.files, r.flushes = r.rows + out.rows, r.files + out.files, r.flushes + out.flushes
        if out.flushed:
            r.last_flush_at = time.perf_counter()
            self._to_commit.update({p: o for p, o in out.flushed.items() if p in self._owned})

    def _drain(self) -> None:
        while self._in_flight:
            self._apply(*self._pop())

    def _write_files(self, parts: list[int] | None, due_only: bool, forget: bool = False) -> None:
        """Have the worker write files (moving the marker past their records) once every dead letter
        of what it holds is produced and acknowledged: a crash then cannot resume past an unsent one."""
        self._drain()
        self._producer.flush()
        if self._failed is not None:
            raise StreamAEError(f"a dead letter could not be produced ({self._failed!r}); no file was written "
                                "past it: a restart reads its record again")
        if parts is None:   # all partitions' due files: nothing is due after this
            self._due = False
        self._apply(_result(self._pool.submit(worker.call, "flush", parts, due_only, forget)))

    def _send_failed(self, exc) -> None:
        log.error("a dead letter could not be produced: %r; not committing", exc)
        self._failed = exc

    def _commit(self) -> None:
        """Commit the offsets the worker reported durable (main thread, outside the lock)."""
        with self._lock:
            done, self._to_commit = self._to_commit, {}
        if not done:
            return
        self._producer.flush()   # the dead letters of these records are acknowledged first
        if self._failed is not None:
            raise StreamAEError(f"a dead letter could not be produced ({self._failed!r}); the files are "
                                "written, the offsets not committed: a restart resumes from the archive")
        self.membership.commit(done, blocking=True)   # a failure is logged: the archive marker holds the position
        self.report.last_flush_at = time.perf_counter()

    # -- rebalance ---------------------------------------------------------------------------------
    def _recover(self, records: dict) -> dict:
        """Take newly assigned partitions on; their records from this poll are dropped and
        fetched again from where the archive ends. Returns {tp: last archived offset}."""
        from kafka import TopicPartition

        topic = self.settings.kafka.readings_topic
        parts, self._to_recover = sorted(self._to_recover), set()
        seeks = {}
        topic_id = self._topic_id = _topic_id(self._consumer, topic)
        for p in parts:
            tp = TopicPartition(topic, p)
            through = _result(self._pool.submit(worker.call, "recover", p, topic_id))   # after the polls before it
            dropped = records.pop(tp, None)
            seeks[tp] = (through, first_offset(dropped[0]) if dropped else None)
            self._owned.add(p)
        if self.report.assigned_at is None:
            self.report.assigned_at = time.perf_counter()
        return seeks

    def _seek(self, seeks: dict) -> None:
        """Start each at max(committed, last archived + 1) (outside the lock: needs the IO thread)."""
        resume = {}
        for tp, (through, dropped_at) in seeks.items():
            committed = self._consumer.committed(tp)
            starts = [o for o in (committed, through + 1 if through >= 0 else None) if o is not None]
            start = max(starts) if starts else dropped_at
            if start is not None:
                self._consumer.seek(tp, start)
                resume[tp.partition] = start
            log.info("partition %d: archived through offset %d, committed %s; resuming at %s",
                     tp.partition, through, committed, max(starts) if starts else "the earliest offset")
        self.membership.assigned([tp.partition for tp in seeks], resume)

    def on_revoked(self, revoked) -> None:
        """Listener (off the client's event loop): archive what the revoked partitions hold (the marker: position)."""
        with self._lock:
            parts = [tp.partition for tp in revoked if tp.partition in self._owned]
            if self._closing or not parts:
                return
            try:
                self._write_files(parts, due_only=False, forget=True)
            except Exception as exc:  # raised in the poll loop; the next owner resumes from the marker
                self._failed = exc
            self._forget(parts)

    def on_lost(self, lost) -> None:
        """Listener (off the client's event loop): the group evicted this member after a stall. What the lost
        partitions hold is dropped, not archived, and nothing is committed for them: the next
        owner resumes at the archive's end and reads it again."""
        with self._lock:
            parts = [tp.partition for tp in lost if tp.partition in self._owned]
            if self._closing or not parts:
                return
            try:
                self._drain()   # the polls already handed over (their dead letters are at least once)
                _result(self._pool.submit(worker.call, "drop", parts))
            except Exception as exc:  # raised in the poll loop
                self._failed = exc
            self._forget(parts)
            self.report.lost += len(parts)
            log.warning("partitions %s lost to a rebalance this member missed (a stall): their buffered "
                        "readings are dropped for the next owner to archive", parts)

    def _forget(self, parts: list[int]) -> None:
        self._owned -= set(parts)
        self._to_recover -= set(parts)
        for p in parts:
            self._to_commit.pop(p, None)
        self.membership.forget(parts)

    def on_assigned(self, assigned) -> None:
        """Listener (IO thread): note the partitions; the poll loop recovers them before use."""
        with self._lock:
            self._to_recover |= {tp.partition for tp in assigned}


def _topic_id(consumer, topic: str) -> str | None:
    """The topic's id in the consumer's metadata (kafka-python 3.0 keeps it on its cluster
    metadata); None when the broker gives none (before Kafka 2.8) or the client keeps none."""
    try:
        tid = consumer._client.cluster.topic_id(topic)
    except Exception:  # noqa: BLE001 - another client version: no check, as with an old broker
        return None
    return None if tid is None or str(tid).strip("0-") == "" else str(tid)  # the all-zero id: none


def _result(fut: cf.Future):
    try:
        return fut.result()
    except BrokenProcessPool as exc:
        raise StreamAEError("the archiver's worker process died (out of memory?); nothing after the last "
                            "archived offset was committed: a restart resumes from the archive") from exc


def run_archiver(settings, stop_event: threading.Event, *, max_records: int | None = None,
                 idle_exit_s: float | None = None, worker_process: bool = True) -> ArchiveReport:
    """Run one archiver until ``stop_event`` is set (``stream-ae job archive``, ``jobs.archive``).

    ``max_records`` stops after that many records, ``idle_exit_s`` once nothing arrived for
    that long (a one-shot run from a scheduler); either way the buffers are flushed and
    committed first. ``worker_process=False`` decodes and writes in this process.
    Returns the :class:`ArchiveReport`.
    """
    return Archiver(settings, worker_process=worker_process).run(
        stop_event, max_records=max_records, idle_exit_s=idle_exit_s)
