"""The Parquet side of the archiver: wide tables, hive paths, atomic files, per-partition markers.

Layout written under the archive root (what :meth:`History.open` reads)::

    date=2026-03-01/[entity=pump-1/]part-<topic>-<partition>-<first offset>-<last offset>.parquet
    _archiver/<topic>/<partition>.json      # the marker: last archived offset, pending files

A file name is a pure function of the Kafka records it holds, so writing the same flush
again replaces the file instead of adding a second copy. Every file is written as
``_tmp-<name>`` in its final directory, fsynced and renamed (pyarrow.dataset skips names
that start with ``_``). The marker is the archive's own record of progress:

1. before a flush: the marker lists the files about to be written (``pending``);
2. each file: temporary name, fsync, rename, fsync of the directory;
3. after the flush: the marker moves ``through`` to the flush's last offset, no pending.

:meth:`ArchiveWriter.recover` deletes the files of a flush that did not finish, so a
re-run that cuts its flushes at other offsets never leaves a stale copy of a row behind.
"""
from __future__ import annotations

import errno
import json
import posixpath
import urllib.parse
from dataclasses import dataclass, field, replace

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from stream_ae import durable
from stream_ae.backfill.output import resolve_filesystem
from stream_ae.data.archive_markers import MARKER_DIR  # the readers of the archive skip its pending files
from stream_ae.errors import DataError

TMP_PREFIX = "_tmp-"
_DAY_NS = 86_400 * 1_000_000_000
_TS_TYPE = pa.timestamp("ns", tz="UTC")


@dataclass
class PartitionState:
    """What the archive knows about one topic-partition (kept in its marker file).

    ``through`` is the last offset whose record is archived (or dead-lettered), -1 for
    none; ``last_ts`` is each entity's newest archived timestamp (ns), which keeps the
    ordering check exact across restarts; ``channels`` are the last file's (for a person reading
    the marker: a file holds only the channels its own rows carry). ``floor`` is the newest
    timestamp of the entities no longer in ``last_ts`` (at most ``input.max_entities`` are: a flood
    of ids), which a reading of an entity not in it must pass; None while none was let go.
    ``topic_id`` is the Kafka topic id the offsets belong to (None: the broker gave none, or the
    marker predates it): a topic deleted and created again has a new one, and offsets from 0.
    """

    through: int = -1
    channels: tuple[str, ...] = ()
    last_ts: dict[str, int] = field(default_factory=dict)
    pending: tuple[str, ...] = ()
    floor: int | None = None
    topic_id: str | None = None

    def to_json(self) -> bytes:
        return json.dumps({"format": 1, "through": self.through, "channels": list(self.channels),
                           "last_ts": self.last_ts, "pending": list(self.pending), "floor": self.floor,
                           "topic_id": self.topic_id},
                          separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes, where: str) -> "PartitionState":
        try:
            d = json.loads(data)
            floor = d.get("floor")   # a marker written before entities were let go has none
            return cls(int(d["through"]), tuple(d["channels"]), {str(k): int(v) for k, v in d["last_ts"].items()},
                       tuple(d["pending"]), None if floor is None else int(floor), d.get("topic_id"))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise DataError(f"{where}: archiver marker is unreadable ({exc!r}); delete it only if the "
                            f"files of this topic-partition are deleted too") from None


def wide_table(entity: list[str], ts: np.ndarray, values: list[dict], channels: tuple[str, ...]) -> pa.Table:
    """Readings as one wide table: entity, timestamp[ns, UTC], one float32 column per channel.

    A channel a reading does not carry, or carries as ``null``, is null.

    >>> t = wide_table(["a", "b"], np.array([1, 2]), [{"x": 1.5}, {"y": None}], ("x", "y"))
    >>> t.column_names, t.column("x").to_pylist(), t.column("y").null_count
    (['entity', 'timestamp', 'x', 'y'], [1.5, None], 2)
    """
    columns = {"entity": pa.array(entity, pa.string()),
               "timestamp": pa.array(np.asarray(ts, np.int64), pa.int64()).view(_TS_TYPE)}
    for c in channels:
        columns[c] = pa.array([v.get(c) for v in values], pa.float32())
    return pa.table(columns)


def hive_groups(table: pa.Table, partition_by: tuple[str, ...]) -> list[tuple[str, pa.Table]]:
    """Split a wide table into (hive directory, rows) groups; arrival order kept inside a group.

    The ``date`` (UTC day of the timestamp) is only in the directory name; so is the
    entity when partitioning by it, as ``ds.write_dataset`` would write it.

    >>> t = wide_table(["a", "b", "a"], np.array([0, 1, 86_400 * 10**9]), [{"x": 1.0}] * 3, ("x",))
    >>> [(d, g.num_rows) for d, g in hive_groups(t, ("date",))]
    [('date=1970-01-01', 2), ('date=1970-01-02', 1)]
    >>> [d for d, _ in hive_groups(t, ("date", "entity"))]
    ['date=1970-01-01/entity=a', 'date=1970-01-01/entity=b', 'date=1970-01-02/entity=a']
    """
    days = table.column("timestamp").cast(pa.int64()).to_numpy() // _DAY_NS  # (N,)
    key = days - days.min()
    names = None
    if "entity" in partition_by:
        names, codes = np.unique(table.column("entity").to_numpy(zero_copy_only=False), return_inverse=True)
        key = key * len(names) + codes
        table = table.drop_columns(["entity"])
    uniq, first, inverse = np.unique(key, return_index=True, return_inverse=True)
    order = np.argsort(inverse, kind="stable") if len(uniq) > 1 else None
    bounds = np.concatenate([[0], np.cumsum(np.bincount(inverse))])
    out = []
    for g in range(len(uniq)):
        i = first[g]
        directory = f"date={np.datetime64(int(days[i]), 'D')}"
        if names is not None:
            directory += "/entity=" + entity_folder(str(names[codes[i]]))
        rows = table if order is None else table.take(order[bounds[g]:bounds[g + 1]])
        out.append((directory, rows))
    return out


def entity_folder(entity: str) -> str:
    """The entity's hive folder value: percent-encoded, so any id is one folder name."""
    return urllib.parse.quote(entity, safe="")


def file_name(topic: str, partition: int, first: int, last: int) -> str:
    """Deterministic file name of a flush; zero-padded so path order is offset order.

    >>> file_name("readings", 3, 0, 999)
    'part-readings-00003-00000000000000000000-00000000000000000999.parquet'
    """
    return f"part-{topic}-{partition:05d}-{first:020d}-{last:020d}.parquet"


class ArchiveWriter:
    """Writes flushes of wide rows under ``root`` atomically and keeps the per-partition markers.

    Parameters
    ----------
    root : str
        Local directory or pyarrow filesystem URI (``s3://``, ``gs://``, ``file://``).
    partition_by : tuple of str
        ``("date",)`` or ``("date", "entity")``.
    compression : str
        Parquet codec: ``zstd``, ``snappy``, ``gzip`` or ``none``.
    """

    def __init__(self, root: str, partition_by: tuple[str, ...] = ("date",), compression: str = "zstd"):
        self.root = str(root)
        self.fs, self.base = resolve_filesystem(self.root)
        self.partition_by = tuple(partition_by)
        self.compression = compression
        self._states: dict[tuple[str, int], PartitionState] = {}

    def state(self, topic: str, partition: int) -> PartitionState:
        """The durable state of a topic-partition, as of its last complete flush."""
        return self._states.get((topic, partition)) or PartitionState()

    def marker_dir(self, topic: str) -> str:
        """Where the markers of ``topic`` are, as the archive path was given."""
        return posixpath.join(str(self.root), MARKER_DIR, topic)

    def _marker(self, topic: str, partition: int) -> str:
        return posixpath.join(self.base, MARKER_DIR, topic, f"{partition:05d}.json")

    def recover(self, topic: str, partition: int) -> PartitionState:
        """Read the marker; delete the files (and temporaries) of a flush that did not finish."""
        path = self._marker(topic, partition)
        if self.fs.get_file_info(path).type == pafs.FileType.NotFound:
            state = PartitionState()
        else:
            with self.fs.open_input_stream(path) as f:
                state = PartitionState.from_json(f.read(), path)
        if state.pending:
            for rel in state.pending:
                for p in (posixpath.join(self.base, rel), _tmp_path(posixpath.join(self.base, rel))):
                    try:
                        if self.fs.get_file_info(p).type != pafs.FileType.NotFound:
                            self.fs.delete_file(p)
                    except OSError as exc:   # a name too long to exist (an older release wrote it)
                        if exc.errno != errno.ENAMETOOLONG:
                            raise
            state = replace(state, pending=())
            self._put(path, state.to_json())
        self._states[(topic, partition)] = state
        return state

    def write(self, topic: str, partition: int, first: int, last: int, table: pa.Table | None,
              new_state: PartitionState) -> list[str]:
        """Archive the flush of offsets ``first..last`` (``table`` holds its valid readings, or
        None) and make ``new_state`` the durable state. Returns the files written, relative."""
        old = self.state(topic, partition)
        groups = hive_groups(table, self.partition_by) if table is not None and table.num_rows else []
        name = file_name(topic, partition, first, last)
        rels = [f"{d}/{name}" for d, _ in groups]
        marker = self._marker(topic, partition)
        if rels:
            self._put(marker, replace(old, pending=tuple(rels)).to_json())
            for rel, (_, rows) in zip(rels, groups):
                self._write_parquet(posixpath.join(self.base, rel), rows)
        new_state = replace(new_state, through=last, pending=())
        self._put(marker, new_state.to_json())
        self._states[(topic, partition)] = new_state
        return rels

    # -- atomic files ------------------------------------------------------------------------
    def _write_parquet(self, path: str, table: pa.Table) -> None:
        tmp = _tmp_path(path)
        durable.create_dir_on(self.fs, posixpath.dirname(path))
        pq.write_table(table, tmp, filesystem=self.fs, compression=self.compression,
                       row_group_size=1 << 20)
        durable.publish_on(self.fs, tmp, path)

    def _put(self, path: str, data: bytes) -> None:
        tmp = _tmp_path(path)
        durable.create_dir_on(self.fs, posixpath.dirname(path))
        with self.fs.open_output_stream(tmp) as f:
            f.write(data)
        durable.publish_on(self.fs, tmp, path)


def _tmp_path(path: str) -> str:
    return posixpath.join(posixpath.dirname(path), TMP_PREFIX + posixpath.basename(path))
