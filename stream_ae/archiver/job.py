"""The archiver job: the readings topic -> the Parquet history that training reads.

One consumer group of its own (``archive.group_id``), offsets committed by hand. Per
topic-partition, valid readings are buffered and rolled into files at
``archive.file_rows`` rows or ``archive.max_file_age_s`` seconds (so memory is bounded by
``file_rows`` rows per assigned partition). Invalid readings go to the dead-letter topic
as in the stream: the codec's reasons, and ``duplicate`` / ``out_of_order`` per entity
(a backfill refuses an archive that goes back in time).

Nothing lost, nothing doubled, without transactions: the offsets are committed only after
the files holding the records are durable (see ``writer.py``), and the archive's own
marker, not the group's commit, says where to resume: a partition restarts at
``max(committed, last archived + 1)``, and the files of a flush a crash cut short are
deleted first. Dead letters are at least once (a crash can send one twice, as the stream).
"""
from __future__ import annotations

import contextlib
import logging
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from stream_ae.archiver.writer import ArchiveWriter, PartitionState, wide_table
from stream_ae.errors import StreamAEError
from stream_ae.stream import codec

log = logging.getLogger(__name__)

_REJECT_DETAIL = {  # the stream runner's wording
    "duplicate": "a reading with this entity and timestamp was already accepted",
    "out_of_order": "older than the entity's last accepted reading",
}


@dataclass
class ArchiveReport:
    """What a run did. Times are ``time.perf_counter()`` seconds (None until it happened)."""

    consumed: int = 0
    rows: int = 0
    dead_letters: dict[str, int] = field(default_factory=dict)
    files: int = 0
    flushes: int = 0
    assigned_at: float | None = None
    last_flush_at: float | None = None


class _Buffer:
    """Valid readings of one topic-partition since its last flush, and the offsets they span."""

    def __init__(self, state: PartitionState):
        self.first: int | None = None      # first offset consumed since the last flush
        self.last = state.through
        self.started = 0.0                 # monotonic time of the first record
        self.entity: list[str] = []
        self.ts: list[int] = []
        self.values: list[dict] = []
        self.channels = set(state.channels)
        self.last_ts = dict(state.last_ts)  # entity -> newest accepted ts (ns)


class Archiver:
    """Consume readings and archive them; :meth:`run` until a stop event.

    Parameters
    ----------
    settings : Settings
        Service settings; uses ``kafka``, ``input`` and ``archive``.
    """

    def __init__(self, settings):
        self.settings = settings
        a = settings.archive
        self.writer = ArchiveWriter(a.root, a.partition_by, a.compression)
        self.decoder = codec.ReadingDecoder(settings.input.max_message_bytes, settings.input.unknown_fields)
        self.report = ArchiveReport()
        self._buffers: dict[int, _Buffer] = {}
        self._to_recover: set[int] = set()
        self._consumer = self._producer = None
        self._closing = False
        self._failed: BaseException | None = None
        self._lock = threading.RLock()  # the rebalance listener may run on the client's thread

    def run(self, stop: threading.Event, *, max_records: int | None = None,
            idle_exit_s: float | None = None) -> ArchiveReport:
        """Archive until ``stop`` is set (or ``max_records`` consumed, or nothing arrived for
        ``idle_exit_s``); then flush everything, commit and close."""
        from kafka import KafkaConsumer, KafkaProducer

        s, a = self.settings, self.settings.archive
        with contextlib.ExitStack() as stack:
            self._producer = KafkaProducer(**{**s.kafka_client_kwargs("producer"), "acks": "all",
                                              "enable_idempotence": True, "linger_ms": 5})
            stack.callback(self._producer.close, 10)
            self._consumer = KafkaConsumer(**{**s.kafka_client_kwargs("consumer"), "group_id": a.group_id,
                                              "auto_offset_reset": "earliest", "enable_auto_commit": False})
            stack.callback(self._close_consumer)
            self._consumer.subscribe([s.kafka.readings_topic], listener=_Listener(self))
            last_record = time.monotonic()
            while not stop.is_set():
                got = self.step()
                now = time.monotonic()
                if got or self.report.assigned_at is None:  # idle counts from the assignment
                    last_record = now
                if max_records is not None and self.report.consumed >= max_records:
                    break
                if idle_exit_s is not None and self.report.assigned_at is not None \
                        and now - last_record >= idle_exit_s:
                    break
            with self._lock:
                self._flush(list(self._buffers), commit=True)
        return self.report

    def _close_consumer(self) -> None:
        with self._lock:
            self._closing = True
        self._consumer.close(autocommit=False)

    def step(self) -> int:
        """One poll; archive what came, roll what is full or old. Returns records consumed."""
        records = self._consumer.poll(timeout_ms=200, max_records=self.settings.batch.max_size)
        with self._lock:
            if self._failed is not None:
                raise StreamAEError(f"the archiver stopped: {self._failed}") from self._failed
            if self._to_recover:
                records = self._recover(records)
            n = 0
            for tp, batch in records.items():
                if tp.partition in self._buffers:
                    n += len(batch)
                    self._ingest(tp.partition, batch)
            max_age = self.settings.archive.max_file_age_s
            now = time.monotonic()
            self._flush([p for p, b in self._buffers.items()
                         if b.first is not None and now - b.started >= max_age], commit=True)
        self.report.consumed += n
        return n

    # -- one batch of records ---------------------------------------------------------------
    def _ingest(self, partition: int, records: list) -> None:
        file_rows = self.settings.archive.file_rows
        start = 0
        while start < len(records):
            buf = self._buffers[partition]  # a new one after each flush
            # cut the batch so that no file holds more than file_rows readings
            chunk = records[start:start + file_rows - len(buf.ts)]
            start += len(chunk)
            if buf.first is None:
                buf.first, buf.started = chunk[0].offset, time.monotonic()
            buf.last = chunk[-1].offset
            ok, bad = self.decoder.decode(chunk)
            for letter in bad:
                self._dead_letter(letter)
            self._accept(buf, ok)
            if len(buf.ts) >= file_rows:
                self._flush([partition], commit=True)

    def _accept(self, buf: _Buffer, readings: list) -> None:
        last_ts, late = buf.last_ts, self.settings.input.late_policy
        entity, ts, values, channels = buf.entity, buf.ts, buf.values, buf.channels
        for r in readings:
            prev = last_ts.get(r.entity)
            if prev is not None and r.ts_ns <= prev:
                reason = "duplicate" if r.ts_ns == prev else "out_of_order"
                if late == "dead_letter":
                    self._dead_letter(codec.dead_letter(r, reason, _REJECT_DETAIL[reason]))
                else:
                    self.report.dead_letters[reason] = self.report.dead_letters.get(reason, 0) + 1
                continue
            last_ts[r.entity] = r.ts_ns
            entity.append(r.entity)
            ts.append(r.ts_ns)
            values.append(r.values)
            if not channels.issuperset(r.values):
                channels.update(r.values)

    def _dead_letter(self, letter: codec.DeadLetter) -> None:
        self.report.dead_letters[letter.reason] = self.report.dead_letters.get(letter.reason, 0) + 1
        self._producer.send(self.settings.kafka.dead_letter_topic, key=letter.original_key,
                            value=codec.encode_dead_letter(letter)).add_errback(self._send_failed)

    def _send_failed(self, exc) -> None:
        log.error("a dead letter could not be produced: %r; not committing", exc)
        self._failed = exc

    # -- flush, commit, recover ---------------------------------------------------------------
    def _flush(self, partitions: list[int], *, commit: bool) -> None:
        """Write the buffers of ``partitions`` durably, then (optionally) commit their offsets."""
        from kafka import TopicPartition
        from kafka.structs import OffsetAndMetadata

        topic = self.settings.kafka.readings_topic
        done = {}
        for p in partitions:
            buf = self._buffers[p]
            if buf.first is None:
                continue
            channels = tuple(sorted(buf.channels))
            table = wide_table(buf.entity, np.array(buf.ts, np.int64), buf.values, channels) if buf.ts else None
            files = self.writer.write(topic, p, buf.first, buf.last, table,
                                      PartitionState(buf.last, channels, dict(buf.last_ts)))
            self.report.rows += len(buf.ts)
            self.report.files += len(files)
            self.report.flushes += 1
            self._buffers[p] = _Buffer(self.writer.state(topic, p))
            done[p] = buf.last + 1
        if not done:
            return
        self.report.last_flush_at = time.perf_counter()
        if not commit:  # the marker alone is enough to resume exactly
            return
        self._producer.flush()  # dead letters of these records are acknowledged before the commit
        if self._failed is not None:
            raise StreamAEError(f"a dead letter could not be produced ({self._failed!r}); the files are "
                                f"written, the offsets not committed: a restart resumes from the archive")
        from kafka.errors import KafkaError
        try:
            self._consumer.commit({TopicPartition(topic, p): OffsetAndMetadata(o, None, -1) for p, o in done.items()})
        except KafkaError as exc:   # partitions moved meanwhile: the next owner resumes from the marker
            log.warning("commit of %s failed (%r); the archive marker holds the position", done, exc)

    def _recover(self, records: dict) -> dict:
        """Start newly assigned partitions at max(committed, last archived + 1); their records
        from this poll are dropped and fetched again from there."""
        from kafka import TopicPartition

        topic = self.settings.kafka.readings_topic
        parts, self._to_recover = sorted(self._to_recover), set()
        for p in parts:
            tp = TopicPartition(topic, p)
            state = self.writer.recover(topic, p)
            committed = self._consumer.committed(tp)
            dropped = records.pop(tp, None)
            starts = [o for o in (committed, state.through + 1 if state.through >= 0 else None) if o is not None]
            if starts:
                self._consumer.seek(tp, max(starts))
            elif dropped:
                self._consumer.seek(tp, dropped[0].offset)
            self._buffers[p] = _Buffer(state)
            log.info("partition %d: archived through offset %d, committed %s; resuming at %s",
                     p, state.through, committed, max(starts) if starts else "the earliest offset")
        if self.report.assigned_at is None:
            self.report.assigned_at = time.perf_counter()
        return records

    def on_revoked(self, revoked) -> None:
        """Listener: archive what the revoked partitions hold (the marker is the position)."""
        with self._lock:
            if self._closing:
                return
            parts = [tp.partition for tp in revoked if tp.partition in self._buffers]
            try:
                self._flush(parts, commit=False)
            except Exception as exc:  # raised in the poll loop; the next owner resumes from the marker
                self._failed = exc
            for p in parts:
                self._buffers.pop(p, None)
            self._to_recover -= set(parts)

    def on_assigned(self, assigned) -> None:
        """Listener: note the partitions; the poll loop recovers them before using their records."""
        with self._lock:
            self._to_recover |= {tp.partition for tp in assigned}


class _Listener:
    """kafka-python ConsumerRebalanceListener adapter."""

    def __new__(cls, archiver: Archiver):
        from kafka import ConsumerRebalanceListener

        class Listener(ConsumerRebalanceListener):
            def on_partitions_revoked(self, revoked):
                archiver.on_revoked(revoked)

            def on_partitions_assigned(self, assigned):
                archiver.on_assigned(assigned)

        return Listener()


def run_archiver(settings, stop_event: threading.Event, *, max_records: int | None = None,
                 idle_exit_s: float | None = None) -> ArchiveReport:
    """Run one archiver until ``stop_event`` is set (``stream-ae job archive``, ``jobs.archive``).

    ``max_records`` stops after that many records, ``idle_exit_s`` once nothing arrived for
    that long (a one-shot run from a scheduler); either way the buffers are flushed and
    committed first. Returns the :class:`ArchiveReport`.
    """
    return Archiver(settings).run(stop_event, max_records=max_records, idle_exit_s=idle_exit_s)
