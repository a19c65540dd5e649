"""The scores dataset: its schema, one table per scored batch, and atomic Parquet parts.

A part is written under a hidden temporary name in its final directory and renamed
only once it is complete, so a dataset reader never sees half a file: pyarrow.dataset
ignores names that start with ``.`` or ``_``.
"""
from __future__ import annotations

import hashlib
import os
import posixpath
import re
import uuid
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from stream_ae import durable
from stream_ae.errors import ConfigError

TOP_K = 3

SCORES_SCHEMA = pa.schema([
    ("entity", pa.string()),
    ("window_start", pa.timestamp("ns", tz="UTC")),
    ("window_end", pa.timestamp("ns", tz="UTC")),
    ("score", pa.float32()),
    ("threshold", pa.float32()),
    ("anomaly", pa.bool_()),
    ("ready", pa.bool_()),
    ("top_channels", pa.list_(pa.string())),
    ("model_version", pa.dictionary(pa.int32(), pa.string())),
])


def resolve_filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """Split a local path or a URI (``s3://``, ``gs://``, ``file://``) into (filesystem, path).

    Examples
    --------
    >>> fs, path = resolve_filesystem("/tmp/scores")
    >>> type(fs).__name__, path
    ('LocalFileSystem', '/tmp/scores')
    """
    uri = str(uri)
    if "://" not in uri:
        return pafs.LocalFileSystem(), os.path.abspath(uri).replace(os.sep, "/")
    try:
        fs, path = pafs.FileSystem.from_uri(uri)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError) as exc:
        raise ConfigError(f"cannot open {uri!r}: {exc}. Give a local path or a URI pyarrow "
                          "understands (file://, s3://, gs://, hdfs://).") from exc
    return fs, path.rstrip("/")


def check_output_place(in_fs: pafs.FileSystem, in_root: str, out_fs: pafs.FileSystem, out_root: str,
                       out: str) -> None:
    """Before anything is read: ``--out`` must be a folder (or not exist yet) outside the archive,
    whose next run would read the score files as history.

    >>> import tempfile; root = tempfile.mkdtemp()
    >>> fs, path = resolve_filesystem(root)
    >>> check_output_place(fs, path, fs, path + "/scores", root + "/scores")
    Traceback (most recent call last):
    ...
    stream_ae.errors.ConfigError: --out ... lies inside --archive ...
    """
    inside = out_root == in_root or out_root.startswith(in_root.rstrip("/") + "/")
    if out_fs.type_name == in_fs.type_name and inside:
        raise ConfigError(f"--out {out} lies inside --archive {in_root}: the next backfill or training would "
                          "read its score files as history; choose an --out outside the archive")
    if out_fs.get_file_info(out_root).type == pafs.FileType.File:
        raise ConfigError(f"--out {out} is a file; give a folder (new or one an earlier backfill wrote)")


def relative_dir(fragment_path: str, archive_root: str, partition: dict | None) -> str:
    """The fragment's directory relative to the archive root ("" at the root).

    Falls back to the hive directories ``k=v/...`` of its partition when the fragment
    does not lie under the root as given (a URI spelled differently, a symlink).

    Examples
    --------
    >>> relative_dir("/a/arch/date=2026-01-01/part-0.parquet", "/a/arch", {})
    'date=2026-01-01'
    >>> relative_dir("elsewhere/part-0.parquet", "/a/arch", {"date": "2026-01-01"})
    'date=2026-01-01'
    """
    root = archive_root.rstrip("/") + "/"
    path = str(fragment_path).replace(os.sep, "/")
    if path.startswith(root):
        return posixpath.dirname(path[len(root):])
    return "/".join(f"{k}={v}" for k, v in (partition or {}).items())


def output_dir(rel: str, entity_key: str = "entity", legacy: bool = False) -> str:
    """Where a fragment's scores go: its directory relative to the archive root, less the
    hive folders of the entity (``entity_key=``) and of any scores column's name.

    Every part holds its ``entity`` column, so an ``entity=`` folder as well would give a
    hive reader (``pd.read_parquet``) the field twice, with types it refuses to merge, and
    an id like ``0042`` read back from the path as the number 42. ``legacy`` keeps the
    mirrored folders of a run resumed from a checkpoint written before this rule.

    Examples
    --------
    >>> output_dir("entity=pump-7/date=2026-01-01")
    'date=2026-01-01'
    >>> output_dir("site=north/device=0042", entity_key="device")
    'site=north'
    """
    if legacy or not rel:
        return rel
    dropped = {entity_key, *SCORES_SCHEMA.names}
    return "/".join(p for p in rel.split("/") if p.split("=", 1)[0] not in dropped)


def part_name(shard: int, fragment_key: str) -> str:
    """File name of the scores part for one input fragment and one shard.

    Examples
    --------
    >>> part_name(0, "date=2026-01-01/part-0.parquet")
    'part-0-7c9527d63e32728b.parquet'
    """
    return f"part-{shard}-{_digest(fragment_key)}.parquet"


def _digest(fragment_key: str) -> str:
    return hashlib.sha1(fragment_key.encode("utf-8")).hexdigest()[:16]


def scores_table(entity_names: np.ndarray, entity_codes: np.ndarray, start_ts: np.ndarray,
                 end_ts: np.ndarray, score: np.ndarray, threshold: np.ndarray,
                 anomaly: np.ndarray, channel_error: np.ndarray, channels: pa.Array,
                 version: pa.Array) -> pa.Table:
    """Build one scores table, vectorised (no per-window Python).

    ``entity_names`` (E,) are the batch's entities, ``entity_codes`` (B,) index them;
    ``channel_error`` is (B, C); ``channels`` a pyarrow string array (C,); ``version``
    a one-element string array.
    """
    n = len(score)
    k = min(TOP_K, channel_error.shape[1])
    # stable sort on the negated errors: ties keep the channel order of the artifact
    top = np.argsort(-channel_error, axis=1, kind="stable")[:, :k]          # (B, k)
    offsets = pa.array(np.arange(0, n * k + 1, k, dtype=np.int32))
    top_channels = pa.ListArray.from_arrays(offsets, channels.take(pa.array(top.ravel())))
    threshold = np.asarray(threshold, dtype=np.float32)
    columns = [
        pa.array(entity_names, type=pa.string()).take(pa.array(entity_codes)),
        pa.array(start_ts, type=pa.timestamp("ns", tz="UTC")),
        pa.array(end_ts, type=pa.timestamp("ns", tz="UTC")),
        pa.array(np.asarray(score, dtype=np.float32)),
        pa.array(threshold),  # NaN stays NaN (not null): "no threshold yet"
        pa.array(np.asarray(anomaly, dtype=bool)),
        pa.array(~np.isnan(threshold)),
        top_channels,
        pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, dtype=np.int32)), version),
    ]
    return pa.Table.from_arrays(columns, schema=SCORES_SCHEMA)


@dataclass
class AtomicPart:
    """One Parquet part written batch by batch, visible only after :meth:`commit`.

    Nothing is created until the first :meth:`write`; :meth:`commit` returns the final
    path, or None when nothing was written. :meth:`abort` removes the temporary file.
    """

    fs: pafs.FileSystem
    path: str

    def __post_init__(self) -> None:
        directory, name = posixpath.split(self.path)
        self.tmp_path = posixpath.join(directory, f".{name}.{uuid.uuid4().hex[:8]}.tmp")
        self._writer: pq.ParquetWriter | None = None

    def write(self, table: pa.Table) -> None:
        if table.num_rows == 0:
            return
        if self._writer is None:
            durable.create_dir_on(self.fs, posixpath.dirname(self.path))
            self._writer = pq.ParquetWriter(self.tmp_path, SCORES_SCHEMA, filesystem=self.fs,
                                            compression="zstd")
        self._writer.write_table(table)

    def commit(self) -> str | None:
        if self._writer is None:
            return None
        self._writer.close()
        self._writer = None
        durable.publish_on(self.fs, self.tmp_path, self.path)   # on disk before the checkpoint says it is
        return self.path

    def abort(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
            try:
                self.fs.delete_file(self.tmp_path)
            except FileNotFoundError:
                pass


_PART = re.compile(r"(?P<tmp>\.)?part-(?P<shard>\d+)-(?P<digest>[0-9a-f]{16})\.parquet(?(tmp)\.[0-9a-f]{8}\.tmp)")


def expected_parts(keys, entity_key: str = "entity", legacy: bool = False) -> dict[str, set[str]]:
    """The folders (relative to ``--out``) this archive's fragments write their parts to, each
    with the digests of the part names it may hold (:func:`part_name`)."""
    out: dict[str, set[str]] = {}
    for key in keys:
        rel = output_dir(key.rsplit("/", 1)[0] if "/" in key else "", entity_key, legacy=legacy)
        out.setdefault(rel, set()).add(_digest(key))
    return out


def remove_parts(fs: pafs.FileSystem, out_root: str, expected: dict[str, set[str]], shard: tuple[int, int],
                 temporary_only: bool = False) -> int:
    """Delete the parts of this archive's fragments (``expected``, :func:`expected_parts`) that a
    run as shard ``(i, n)`` must not leave beside its own; returns how many.

    They are shard ``i``'s own (a run that starts with no checkpoint owns no part yet: one there
    is a previous run's, killed between a part's rename and its checkpoint, and would mix old
    windows into the new ones) and those of shard indices ``>= n`` (a run split into more shards,
    killed before any checkpoint named them). Sibling shards' parts (``j < n``) may be a live
    run's and stay. Other files, and parts of other runs in other folders under ``out_root``
    (``--out`` the parent of an earlier backfill's folder), are never touched.
    Temporary files of those shards go in any of the folders, whatever fragment they were for.
    ``temporary_only``: only those temporary files (a resumed run)."""
    if fs.get_file_info(out_root).type != pafs.FileType.Directory:
        return 0
    i, n = shard
    found = []
    for f in fs.get_file_info(pafs.FileSelector(out_root, recursive=True)):
        m = _PART.fullmatch(f.base_name) if f.type == pafs.FileType.File else None
        if m is None or (temporary_only and not m["tmp"]):
            continue
        rel = posixpath.dirname(f.path)[len(out_root.rstrip("/")) + 1:]
        j = int(m["shard"])
        if (j == i or j >= n) and rel in expected and (m["tmp"] or m["digest"] in expected[rel]):
            found.append(f.path)
    for path in found:
        fs.delete_file(path)
    return len(found)


def write_bytes_atomic(fs: pafs.FileSystem, path: str, data: bytes) -> None:
    """Write a small file (a checkpoint) under a temporary name, then rename it into place
    (on a local disk durably: see :mod:`stream_ae.durable`)."""
    directory, name = posixpath.split(path)
    durable.create_dir_on(fs, directory)
    tmp = posixpath.join(directory, f".{name}.{uuid.uuid4().hex[:8]}.tmp")
    with fs.open_output_stream(tmp) as stream:
        stream.write(data)
    durable.publish_on(fs, tmp, path)
