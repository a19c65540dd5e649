"""The archiver's work without Kafka: decode, check, buffer and roll readings into Parquet.

:class:`ArchiveCore` takes the record values of one poll of one topic-partition, joined in
one buffer (cheap to hand to another process), and answers with an :class:`Outcome`: which
records to dead-letter and why (the Kafka side builds them from its own records, with
their exact source coordinates), and the partitions durable up to an offset. It runs in the
archiver's worker process (see ``job.py``) or inline.

Decoding gives exactly the codec's answer. A batch is first decoded in one call
(``decode_lines`` over the values joined by newlines, valid only when the lines are exactly
the values (``columns.lines_are_values``), none is null or oversized, every line decodes and
every value fits float32);
anything else sends the whole batch through :class:`codec.ReadingDecoder`, message by
message, which names the reason of each dead letter.
"""
from __future__ import annotations

import copy
import functools
import time
from collections import namedtuple
from dataclasses import dataclass, field, replace
from operator import itemgetter

import msgspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from stream_ae.archiver.writer import ArchiveWriter, PartitionState, entity_folder
from stream_ae.errors import DataError
from stream_ae.stream import codec
from stream_ae.stream.columns import lines_are_values

_TS_TYPE = pa.timestamp("ns", tz="UTC")
_Indexed = namedtuple("_Indexed", "value offset")   # offset: the record's index in its batch


class _LenientReading(codec.Reading, forbid_unknown_fields=False):
    """The codec's contract with unknown top-level fields ignored (``input.unknown_fields``)."""


@dataclass
class Outcome:
    """What one call did: records to dead-letter ``(index in the batch, reason, detail,
    entity)``, partitions durable up to (next offset), and counts."""

    dead_letters: list[tuple[int, str, str, str | None]] = field(default_factory=list)
    reasons: dict[str, int] = field(default_factory=dict)
    flushed: dict[int, int] = field(default_factory=dict)
    due: list[int] = field(default_factory=list)   # partitions with a file to write: ask flush(due_only=True)
    rows: int = 0
    files: int = 0
    flushes: int = 0


class _Buffer:
    """Valid readings of one topic-partition since its last flush (record batches)."""

    def __init__(self, state: PartitionState):
        self.first: int | None = None    # first offset consumed since the last flush
        self.last = state.through
        self.started = 0.0               # monotonic time of the first record
        self.tables: list[pa.Table] = []
        self.rows = 0
        self.channels: set[str] = set()   # this file's own: a retired sensor is no column of later files
        self.last_ts = dict(state.last_ts)  # entity -> newest accepted ts (ns), the newest max_entities
        self.floor = state.floor            # the newest ts of the entities let go (None: none)
        self.topic_id = state.topic_id
        self.sealed: list[tuple[_Buffer, PartitionState]] = []   # full files, with the state after each

    def state(self) -> PartitionState:
        """The partition's state once this buffer's file is written (the marker's record)."""
        return PartitionState(self.last, tuple(sorted(self.channels)), dict(self.last_ts), floor=self.floor,
                              topic_id=self.topic_id)

    def let_go(self, cap: int) -> None:
        """Keep the ``cap * 0.9`` entities with the newest readings; the floor rises to the newest of
        the rest, so the order of every entity, kept or not, still holds in the files."""
        keep = int(cap * 0.9)
        stamps = np.fromiter(self.last_ts.values(), np.int64, len(self.last_ts))
        cut = np.partition(stamps, len(stamps) - keep - 1)[len(stamps) - keep - 1]   # the newest let go
        self.last_ts = {e: t for e, t in self.last_ts.items() if t > cut}
        self.floor = max(int(cut), self.floor if self.floor is not None else int(cut))

    def aged(self, now: float, max_age_s: float) -> bool:
        """Whether its open file holds a record older than ``max_age_s`` (monotonic seconds)."""
        return self.first is not None and now - self.started >= max_age_s

    def seal(self) -> None:
        """Close the file at ``file_rows``: it waits for :meth:`ArchiveCore.flush`; a new one opens."""
        done = copy.copy(self)
        done.sealed = []
        self.sealed.append((done, self.state()))
        self.first, self.tables, self.rows, self.channels = None, [], 0, set()


class ArchiveCore:
    """Buffers and archives the readings of the partitions it is given (no Kafka, no threads)."""

    def __init__(self, topic: str, root: str, partition_by=("date",), compression: str = "zstd",
                 file_rows: int = 250_000, max_file_age_s: float = 300.0, max_message_bytes: int = 65_536,
                 unknown_fields: str = "reject", late_policy: str = "dead_letter",
                 max_future_s: float | None = None, max_entities: int = 100_000):
        self.topic = topic
        self.max_entities = int(max_entities)   # per partition, in the ordering check (input.max_entities)
        self.writer = ArchiveWriter(root, partition_by, compression)
        self.by_entity = "entity" in partition_by   # each entity id is then a folder name
        self.file_rows, self.max_file_age_s = int(file_rows), float(max_file_age_s)
        self.late_policy = late_policy
        self.max_bytes = max_message_bytes
        self.decoder = codec.ReadingDecoder(max_message_bytes, unknown_fields, max_future_s)
        self._lines = msgspec.json.Decoder(codec.Reading if unknown_fields == "reject" else _LenientReading)
        self._buffers: dict[int, _Buffer] = {}

    def recover(self, partition: int, topic_id: str | None = None) -> int:
        """Take a partition on: clean up a cut-short flush; returns its last archived offset (-1: none).

        ``topic_id``: the topic's id now (None: the broker gives none). One other than the marker's
        means the topic was deleted and created again: its offsets start at 0 again, so resuming
        after the marker would skip its records and their files would take the old ones' names."""
        state = self.writer.recover(self.topic, partition)
        self._check_topic_id(partition, state.topic_id, state.through, topic_id)
        self._buffers[partition] = _Buffer(replace(state, topic_id=topic_id or state.topic_id))
        return state.through

    def adopt_topic_id(self, topic_id: str) -> None:
        """The topic's id seen now, while the partitions are held (a topic deleted and created again
        with as many partitions causes no rebalance): raises as :meth:`recover` on another id."""
        for partition, buf in self._buffers.items():
            self._check_topic_id(partition, buf.topic_id, buf.last, topic_id)
            buf.topic_id = topic_id

    def _check_topic_id(self, partition: int, kept: str | None, through: int, topic_id: str | None) -> None:
        if topic_id is None or kept in (None, topic_id):
            return
        raise DataError(
            f"topic {self.topic!r} partition {partition}: the archive holds offsets through {through} of topic id "
            f"{kept}, but the topic now has id {topic_id}: it was deleted and created again, and its offsets started "
            "again at 0. Archiving it here would skip its first records and give its files the names of the old "
            f"topic's. Archive it under another archive path, or move {self.writer.marker_dir(self.topic)} aside "
            "together with the old topic's files. If the topic was moved to another cluster with its offsets kept "
            "(a mirror that keeps them), the archive is right: remove \"topic_id\" from those markers to go on")

    def ingest(self, partition: int, offsets: bytes, lengths: bytes, joined: bytes) -> Outcome:
        """Archive one batch of a recovered partition, in offset order.

        ``offsets`` and ``lengths`` are int64 arrays as bytes; ``joined`` is the values joined
        by ``b"\\n"``; a null value (tombstone) has length -1 and adds nothing but the separator.
        """
        offsets, lengths = np.frombuffer(offsets, np.int64), np.frombuffer(lengths, np.int64)
        starts = np.concatenate([[0], np.cumsum(np.maximum(lengths, 0) + 1)[:-1]])  # (N,)
        out, a = Outcome(), 0
        while a < len(offsets):
            buf = self._buffers[partition]
            b = min(len(offsets), a + self.file_rows - buf.rows)   # no file above file_rows
            if buf.first is None:
                buf.first, buf.started = int(offsets[a]), time.monotonic()
            buf.last = int(offsets[b - 1])
            batch = _Batch(joined, starts[a:b], lengths[a:b], a)
            self._accept(buf, batch, out)
            if buf.rows >= self.file_rows:
                buf.seal()
                out.due.append(partition)
            a = b
        return out

    def due(self) -> Outcome:
        """Which partitions have a file to write: a full one, or one older than ``max_file_age_s``."""
        now = time.monotonic()
        return Outcome(due=[p for p, buf in self._buffers.items() if buf.sealed or buf.aged(now, self.max_file_age_s)])

    def flush(self, partitions: list[int] | None = None, due_only: bool = False, forget: bool = False) -> Outcome:
        """Write the buffers durably: the full files, then the open one (always, or when older than
        ``max_file_age_s`` with ``due_only``). The caller has produced (and had acknowledged) the
        dead letters of every record ingested so far: the marker moves past them here."""
        out, now = Outcome(), time.monotonic()
        for p in list(self._buffers) if partitions is None else partitions:
            buf = self._buffers.get(p)
            if buf is not None:
                for done, state in buf.sealed:
                    self._write(p, done, state, out)
                buf.sealed = []
                if buf.first is not None and (not due_only or buf.aged(now, self.max_file_age_s)):
                    self._flush(p, out)
            if forget:
                self._buffers.pop(p, None)
        return out

    def drop(self, partitions: list[int]) -> None:
        """Forget the buffers of partitions the group took away (written by their next owner)."""
        for p in partitions:
            self._buffers.pop(p, None)

    # -- one chunk ------------------------------------------------------------------------------
    def _accept(self, buf: _Buffer, batch: "_Batch", out: Outcome) -> None:
        decoded = self._decode_fast(batch)
        if decoded is None:
            decoded = self._decode_slow(batch, out)
        if decoded is None:
            return
        entity, ts, columns, index = decoded
        keep = np.ones(len(ts), bool)
        last_ts = buf.last_ts
        for i, (e, t) in enumerate(zip(entity, ts.tolist())):
            prev = last_ts.get(e, buf.floor)   # an entity let go: no older than the newest let go
            if prev is not None and t <= prev:
                keep[i] = False
                reason = "duplicate" if t == prev and e in last_ts else "out_of_order"
                if self.late_policy == "dead_letter":
                    out.dead_letters.append((batch.first + int(index[i]), reason, codec.REJECT_DETAIL[reason], e))
                out.reasons[reason] = out.reasons.get(reason, 0) + 1
            else:
                last_ts[e] = t
        if len(last_ts) > self.max_entities:
            buf.let_go(self.max_entities)
        table = pa.table({"entity": pa.array(entity, pa.string()),
                          "timestamp": pa.array(ts, pa.int64()).view(_TS_TYPE),
                          **{c: col.cast(pa.float32()) for c, col in columns.items()}})
        if not keep.all():
            table = table.filter(pa.array(keep))
        if table.num_rows:
            buf.tables.append(table)
            buf.rows += table.num_rows   # a channel only rejected rows carried is no column of the file
            buf.channels.update(c for c in columns if table.column(c).null_count < table.num_rows)

    def _decode_fast(self, batch: "_Batch"):
        n = len(batch.lengths)
        if batch.lengths.min() < 0 or batch.lengths.max() > self.max_bytes:
            return None
        joined = batch.joined[batch.starts[0]:batch.starts[-1] + batch.lengths[-1]]
        if not lines_are_values(joined, batch.lengths):   # else lines are not records
            return None
        try:
            readings = self._lines.decode_lines(joined)
        except msgspec.MsgspecError:
            return None
        if len(readings) != n:
            return None
        try:
            ts = np.array([r.ts for r in readings], np.int64) * 1_000_000   # epoch ms -> ns
        except TypeError:   # some are RFC 3339 datetimes
            ns = [codec.reading_ts_ns(r.ts) for r in readings]
            if None in ns:   # outside 1970-2262: the slow path dead-letters it, as the stream does
                return None
            ts = np.array(ns, np.int64)
        horizon = self.decoder.horizon_ns()
        if horizon is not None and ts.max() > horizon:   # stamped ahead of this clock: the slow path says so
            return None
        if any(r.entity.startswith(codec.RESERVED_ENTITY_PREFIX) for r in readings):
            return None
        if self.by_entity and any(map(entity_folder_too_long, {r.entity for r in readings})):
            return None
        columns = _columns([r.values for r in readings])
        if RESERVED.intersection(columns):   # the slow path dead-letters those readings
            return None
        for col in columns.values():
            top = pc.max(pc.abs(col)).as_py()
            if top is not None and top >= codec.F32_LIMIT:   # the codec calls it non_finite: let it say so
                return None
        return [r.entity for r in readings], ts, columns, np.arange(n)

    def _decode_slow(self, batch: "_Batch", out: Outcome):
        ok, bad = self.decoder.decode(batch.values())
        for letter in bad:
            out.dead_letters.append((batch.first + letter.source_offset, letter.reason, letter.detail, letter.entity))
            out.reasons[letter.reason] = out.reasons.get(letter.reason, 0) + 1
        kept = []
        for r in ok:
            clash = RESERVED.intersection(r.values)
            if clash:
                reason, detail = "unknown_channel", (f"channel {min(clash)!r} is a column of the history "
                                                     f"({', '.join(sorted(RESERVED))}); rename the channel")
            elif self.by_entity and entity_folder_too_long(r.entity):
                reason, detail = "malformed", (
                    f"entity id of {len(r.entity)} characters is over {FOLDER_NAME_MAX_BYTES} bytes as the folder name "
                    "entity=<id, percent-encoded> of archive.partition_by = date,entity; shorten the id or "
                    "partition by date only")
            else:
                kept.append(r)
                continue
            out.dead_letters.append((batch.first + r.message.offset, reason, detail, r.entity))
            out.reasons[reason] = out.reasons.get(reason, 0) + 1
        ok = kept
        if not ok:
            return None
        ts = np.array([r.ts_ns for r in ok], np.int64)
        index = np.array([r.message.offset for r in ok], np.int64)
        return [r.entity for r in ok], ts, _columns([r.values for r in ok]), index

    def _flush(self, partition: int, out: Outcome) -> None:
        buf = self._buffers[partition]
        self._write(partition, buf, buf.state(), out)
        self._buffers[partition] = _Buffer(self.writer.state(self.topic, partition))

    def _write(self, partition: int, buf: _Buffer, state: PartitionState, out: Outcome) -> None:
        table = None
        if buf.tables:
            table = pa.concat_tables(buf.tables, promote_options="default")   # a chunk's missing: null
            table = table.select(["entity", "timestamp", *state.channels])
        files = self.writer.write(self.topic, partition, buf.first, buf.last, table, state)
        out.rows += buf.rows
        out.files += len(files)
        out.flushes += 1
        out.flushed[partition] = buf.last + 1


FOLDER_NAME_MAX_BYTES = 255   # a file or folder name, on every common local and network file system


@functools.lru_cache(maxsize=65_536)
def entity_folder_too_long(entity: str) -> bool:
    """Whether ``entity=<id>`` (the hive folder, percent-encoded as the writer does) is too long a name.

    >>> entity_folder_too_long("pump-7"), entity_folder_too_long("泵" * 27), entity_folder_too_long("泵" * 28)
    (False, False, True)
    """
    return len("entity=") + len(entity_folder(entity)) > FOLDER_NAME_MAX_BYTES


#: Columns of the history besides the channels: a channel of one of these names would replace
#: the entity or time column, or clash with a partition key, and make the archive unreadable.
RESERVED = frozenset({"entity", "timestamp", "date"})


def _columns(dicts: list[dict]) -> dict[str, pa.Array]:
    """Channel name -> float64 column (null where a reading lacks it), names sorted.

    >>> {c: a.to_pylist() for c, a in _columns([{"b": 1.0, "a": None}, {"b": 2.0}]).items()}
    {'a': [None, None], 'b': [1.0, 2.0]}
    """
    names = sorted(set().union(*dicts))
    if not names:
        return {}
    try:   # the usual case, every reading has every channel: one C call per reading
        get = itemgetter(*names)
        rows = list(map(get, dicts)) if len(names) > 1 else [(v,) for v in map(get, dicts)]
        cols = list(zip(*rows))
    except KeyError:
        cols = [[d.get(c) for d in dicts] for c in names]
    return {c: pa.array(col, pa.float64()) for c, col in zip(names, cols)}


class _Batch:
    """A slice of a joined batch: value i is ``joined[starts[i]:starts[i] + lengths[i]]``."""

    def __init__(self, joined: bytes, starts: np.ndarray, lengths: np.ndarray, first: int):
        self.joined, self.starts, self.lengths, self.first = joined, starts, lengths, first

    def values(self) -> list[_Indexed]:
        """Each value (None for a tombstone) with its index in this slice, for the codec."""
        return [_Indexed(None if n < 0 else self.joined[s:s + n], i)
                for i, (s, n) in enumerate(zip(self.starts.tolist(), self.lengths.tolist()))]
