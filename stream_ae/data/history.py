"""History: a validated, streaming view of a wide Parquet archive (file, directory or hive dataset).

This is an edge module: it does I/O and hands out plain numpy :class:`Rows`; everything
after it (windowing, scoring, thresholds) is pure.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.fs as pafs

from stream_ae.data.footers import (ARROW_ERRORS, NS_PER, Footer, channel_values, check_channels, check_file,
                                     is_numeric, pandas_index)
from stream_ae.data.archive_markers import without_pending
from stream_ae.data.layout import Layout
from stream_ae.errors import ConfigError, DataError

_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_DAY_NS = 86_400 * 1_000_000_000
_CHUNK_ROWS = 131_072   # rows of row groups scanned together (one larger group alone)


@dataclass
class Rows:
    """One decoded record batch."""

    entity: np.ndarray  # (N,) object (str)
    ts: np.ndarray  # (N,) int64 ns since epoch UTC
    values: np.ndarray  # (N, C) float32, channel order = History.channels; NaN = missing
    source: str  # file the rows came from

    def __len__(self) -> int:
        return len(self.ts)


@dataclass(frozen=True)
class Fragment:
    """One Parquet file of the dataset and its hive partition values (as strings)."""

    path: str
    partition: dict[str, str]
    _fragment: Any = field(repr=False, compare=False)


def to_ns(when, name: str = "time") -> int:
    """ISO string, datetime, numpy or pandas timestamp -> int ns since epoch UTC (naive = UTC).

    >>> to_ns("1970-01-01T00:00:01")
    1000000000
    >>> to_ns(pd.Timestamp("1970-01-01 01:00:01", tz="Europe/Paris"))
    1000000000
    """
    try:
        stamp = pd.Timestamp(str(when) if isinstance(when, str) else when)  # np.str_: pandas 3.0 refuses it
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{name}={when!r} is not a time; give an ISO string such as '2026-01-01T00:00:00Z'") from exc
    if stamp is pd.NaT:
        raise ConfigError(f"{name} is NaT; give a real time or None")
    stamp = stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")
    return int(stamp.value)


def _day(ns: int) -> str:
    return str(np.datetime64(ns // _DAY_NS, "D"))


def _date_terms(start_ns: int | None, end_ns: int | None) -> list[ds.Expression]:
    """Bounds on ``date=YYYY-MM-DD`` folders that keep the local dates of any zone (UTC-12..+14)."""
    terms = []
    if start_ns is not None:
        terms.append(pc.field("date") >= _day(start_ns - _DAY_NS))
    if end_ns is not None:   # a +14 h zone's day D starts at D - 14 h UTC
        terms.append(pc.field("date") <= _day(end_ns + 14 * 3_600_000_000_000 - 1))
    return terms


def _all_of(terms: Sequence[ds.Expression]) -> ds.Expression | None:
    expr = None
    for term in terms:
        expr = term if expr is None else expr & term
    return expr


def _locate(uri: str) -> tuple[pafs.FileSystem, str, bool]:
    """The filesystem and path of ``uri``, and whether it is a directory."""
    if "://" in uri:
        try:
            filesystem, path = pafs.FileSystem.from_uri(uri)
        except ARROW_ERRORS as exc:
            raise DataError(f"{uri}: cannot open this location ({exc})") from exc
    else:
        filesystem, path = pafs.LocalFileSystem(), os.path.abspath(uri)
    try:
        info = filesystem.get_file_info(path)
    except ARROW_ERRORS as exc:
        raise DataError(f"{uri}: cannot be read ({exc})") from exc
    if info.type == pafs.FileType.NotFound:
        raise DataError(f"{uri}: no such file or directory")
    return filesystem, path, info.type != pafs.FileType.File


def _hive_keys(files: Sequence[str], base: str) -> list[str]:
    """Hive partition keys of the files' folders under ``base``, in order of appearance.

    >>> _hive_keys(["/a/date=2026-01-01/entity=p1/x.parquet", "/a/y.parquet"], "/a")
    ['date', 'entity']
    """
    keys: dict[str, None] = {}
    for path in files:
        rel = path[len(base):] if path.startswith(base) else path
        for part in rel.replace("\\", "/").strip("/").split("/")[:-1]:
            if "=" in part:
                keys.setdefault(part.split("=", 1)[0])
    return list(keys)


def _discover(uri: str) -> tuple[ds.FileSystemDataset, list[str], Callable[[pa.Schema], ds.FileSystemDataset]]:
    """The archive's Parquet files and hive keys, no file opened (one outside the range read may
    be unreadable, or lack a column), and how to open those same files with a schema (hive
    values read as strings, so that an entity "007" stays "007")."""
    filesystem, path, is_dir = _locate(uri)
    try:
        listed = ds.dataset(path, filesystem=filesystem, format="parquet", schema=pa.schema([]))
        files = without_pending(listed.files, filesystem, path) if is_dir else listed.files  # archive_markers.py
        keys = _hive_keys(files, path) if is_dir else []
        as_strings = ds.partitioning(pa.schema([(k, pa.string()) for k in keys]), flavor="hive") if keys else None

        def with_schema(schema: pa.Schema) -> ds.FileSystemDataset:
            try:
                return ds.dataset(files, filesystem=filesystem, format="parquet", partitioning=as_strings,
                                  partition_base_dir=path if is_dir else None, schema=schema)
            except ARROW_ERRORS as exc:
                raise DataError(f"{uri}: cannot be read as Parquet ({exc})") from exc
        return with_schema(pa.schema([(k, pa.string()) for k in keys])), keys, with_schema
    except ARROW_ERRORS as exc:
        raise DataError(f"{uri}: cannot be read as Parquet ({exc})") from exc


class History:
    """A validated view of a wide Parquet archive that streams :class:`Rows` in bounded memory.

    Open it with :meth:`open`; the time range ``[start, end)`` and the ``entities`` list are
    pushed down into the scan.
    """

    def __init__(self, uri, dataset, layout, channels, partition_keys, n_rows, start_ns, end_ns, entities, paths=None):
        self.uri = uri
        self.layout = layout
        self.channels: tuple[str, ...] = channels
        self.partition_keys: tuple[str, ...] = tuple(partition_keys)
        self.start_ns, self.end_ns = start_ns, end_ns   # int ns or None
        self.entities: tuple[str, ...] | None = entities
        self._dataset = dataset
        self._paths = None if paths is None else frozenset(paths)   # the files the range reaches
        self._n_rows = n_rows
        self._schema = _scan_schema(dataset.schema, layout.timestamp, channels)
        ts_type = self._schema.field(layout.timestamp).type
        self._ts_unit = NS_PER[ts_type.unit if pa.types.is_timestamp(ts_type) else layout.timestamp_unit]
        self._filter = self._build_filter()
        self._ts_type = dataset.schema.field(layout.timestamp).type  # the first file's: the filter's

    @classmethod
    def open(cls, uri: str, layout: Layout = Layout(), start=None, end=None,
             entities: Sequence[str] | None = None) -> "History":
        """Open and validate; every problem is a :class:`DataError` naming the path and the column.

        Only the files the range and the entities can reach are opened: by their hive folders
        (``date=``, the entity's), then by the timestamp statistics in their footers. The
        channels are those files' (``layout.channels``, or every numeric column of any of
        them); a file without a channel's column (a sensor added or retired) reads it as null
        there, a gap, but each channel needs a value in some file.
        """
        uri = str(uri)
        start_ns = None if start is None else to_ns(start, "start")
        end_ns = None if end is None else to_ns(end, "end")
        if start_ns is not None and end_ns is not None and start_ns >= end_ns:
            raise ConfigError(f"start {start} is not before end {end}")
        wanted = None if entities is None else tuple(str(e) for e in entities)
        listed, keys, with_schema = _discover(uri)
        if not listed.files:
            raise DataError(f"{uri}: no Parquet files found")
        dates = {str(ds.get_partition_keys(f.partition_expression).get("date")) for f in listed.get_fragments()}
        by_date = "date" in keys and all(_DATE.fullmatch(d) for d in dates)
        terms = (_date_terms(start_ns, end_ns) if by_date else [])
        if wanted is not None and layout.entity in keys:
            terms.append(pc.field(layout.entity).isin(pa.array(wanted, pa.string())))
        reached = listed.get_fragments(filter=_all_of(terms)) if terms else listed.get_fragments()
        unit = NS_PER.get(layout.timestamp_unit)
        footers = []
        for fragment in sorted(reached, key=lambda f: f.path):
            footer = Footer.read(fragment)
            if footer.n_rows and footer.touches(layout.timestamp, unit, start_ns, end_ns):
                check_file(footer, layout, keys)
                footers.append(footer)
        if not footers:
            if start is None and end is None:
                raise DataError(f"{uri}: the dataset has no rows ({len(listed.files)} file(s))")
            raise DataError(f"{uri}: the dataset has no rows between {start or 'its start'} and {end or 'its end'} "
                            f"({len(listed.files)} file(s)); widen the period")
        if layout.channels is None:   # every numeric column, but not a pandas index (a row number)
            skip = {layout.entity, layout.timestamp, *keys, *(n for f in footers for n in pandas_index(f.schema))}
            channels = tuple(dict.fromkeys(f.name for footer in footers for f in footer.schema
                                           if f.name not in skip and is_numeric(f.type)))
            if not channels:
                raise DataError(f"{uri}: no numeric channel columns besides {layout.entity!r} and {layout.timestamp!r}")
        else:
            channels = layout.channels
        check_channels(footers, channels, keys, uri)
        first = footers[0].schema
        fields = [first.field(n) for n in (layout.entity, layout.timestamp) if n not in keys]
        fields += [pa.field(c, pa.float64()) for c in channels if c not in keys]
        dataset = with_schema(pa.schema(fields + [pa.field(k, pa.string()) for k in keys]))
        history = cls(uri, dataset, layout, channels, keys, sum(f.n_rows for f in footers), start_ns, end_ns,
                      wanted, paths=[f.path for f in footers])
        if by_date:
            history._filter = history._build_filter(prune_dates=True)
        return history

    def _build_filter(self, prune_dates: bool = False, times: bool = True) -> ds.Expression | None:
        """The scan filter; ``times=False``: without the timestamp bounds (for a file whose
        timestamp type differs from the first file's, which the bounds are typed as)."""
        ts_field, ts_type = pc.field(self.layout.timestamp), self._schema.field(self.layout.timestamp).type
        terms = _date_terms(self.start_ns, self.end_ns) if prune_dates else []
        if self.start_ns is not None and times:  # ts >= start  <=>  ts_unit >= ceil(start / unit)
            terms.append(ts_field >= pa.scalar(-(-self.start_ns // self._ts_unit), type=ts_type))
        if self.end_ns is not None and times:
            terms.append(ts_field < pa.scalar(-(-self.end_ns // self._ts_unit), type=ts_type))
        if self.entities is not None:
            ent_type = self._dataset.schema.field(self.layout.entity).type
            if pa.types.is_integer(ent_type):
                try:
                    wanted = pa.array([int(e) for e in self.entities], ent_type)
                except (ValueError, OverflowError) as exc:
                    raise ConfigError(f"{self.uri}: entity column {self.layout.entity!r} holds integers; "
                                      f"entities {list(self.entities)} are not all integers") from exc
            else:
                wanted = pa.array(self.entities, pa.string())
            terms.append(pc.field(self.layout.entity).isin(wanted))
        return _all_of(terms)

    def fragments(self) -> list[Fragment]:
        """Files (after partition pruning by the filters), sorted by path, with their hive partition values."""
        found = self._dataset.get_fragments(**({} if self._filter is None else {"filter": self._filter}))
        out = []
        for frag in sorted(found, key=lambda f: f.path):
            if self._paths is not None and frag.path not in self._paths:
                continue   # past the range by its footer's statistics, or without rows
            keys = ds.get_partition_keys(frag.partition_expression)
            out.append(Fragment(frag.path, {k: str(v) for k, v in keys.items()}, frag))
        return out

    def count_rows(self, fragments: list[Fragment] | None = None) -> int | None:
        """Rows in range, of ``fragments`` (default: every file in range; from Parquet metadata
        when no time/entity filter is set); None when the files' timestamp types differ, so the
        bounds cannot be counted in one pass."""
        try:
            if fragments is not None:
                return sum(ds.Scanner.from_fragment(f._fragment, schema=self._dataset.schema,
                                                    filter=self._filter).count_rows() for f in fragments)
            if self._filter is None:
                return self._n_rows
            return self._dataset.count_rows(filter=self._filter)
        except ARROW_ERRORS:   # a file whose timestamp type differs from the first's: no total
            return None

    def iter_rows(self, fragment: Fragment | None = None, batch_rows: int = 65_536) -> Iterator[Rows]:
        """Stream the rows in range, file by file in path order, at most ``batch_rows`` per batch.

        Read whole (no ``fragment``), a channel without a single value is a :class:`DataError`
        (nothing can be learned or scaled from it). One file where a channel has none is data (a
        sensor offline for that file's span, which the archiver writes as a null column): its
        windows there break as any gap does.
        """
        frags = [fragment] if fragment is not None else self.fragments()
        seen, n_read = np.zeros(len(self.channels), bool), 0
        for frag in frags:
            for rows in self._read_fragment(frag, batch_rows):
                seen |= ~np.isnan(rows.values).all(axis=0)
                n_read += len(rows)
                yield rows
        if fragment is None and n_read and not seen.all():
            name = self.channels[int(np.flatnonzero(~seen)[0])]
            where = frags[0].path if len(frags) == 1 else f"all {len(frags)} files read (the first {frags[0].path})"
            raise DataError(f"{where}: channel column {name!r} is entirely NaN/null; fix the data or leave the "
                            f"channel out with Layout(channels=...) (train: --channels)")

    def _read_fragment(self, frag: Fragment, batch_rows: int) -> Iterator[Rows]:
        layout, channels = self.layout, self.channels
        columns = [layout.entity, layout.timestamp, *channels]
        scan_filter, bounds = self._filter, None
        if (self.start_ns is not None or self.end_ns is not None) and self._differs(frag):
            # the bounds are typed as the first file's timestamps (zone, unit); this file's
            # differ, and Arrow will not compare them: bound the decoded ns instead
            scan_filter = self._build_filter(prune_dates=False, times=False)
            bounds = (-2**63 if self.start_ns is None else self.start_ns,
                      2**63 - 1 if self.end_ns is None else self.end_ns)
        for batch in _batches(frag, self._schema, columns, scan_filter, batch_rows):
            if batch.num_rows == 0:
                continue
            rows = _decode(batch, frag.path, layout, channels, self._ts_unit)
            if bounds is not None:
                keep = (rows.ts >= bounds[0]) & (rows.ts < bounds[1])
                if not keep.all():
                    rows = Rows(rows.entity[keep], rows.ts[keep], rows.values[keep], rows.source)
            if len(rows):
                yield rows

    def _differs(self, frag: Fragment) -> bool:
        try:
            return frag._fragment.physical_schema.field(self.layout.timestamp).type != self._ts_type
        except (KeyError, *ARROW_ERRORS):
            return True


def _batches(frag: Fragment, schema: pa.Schema, columns: list[str], scan_filter, batch_rows: int):
    """The file's record batches, read a few row groups at a time (``_CHUNK_ROWS`` rows, or one
    larger group): a scan of the whole file reads row groups ahead and held about twice the
    file decoded (a review measured RSS +506 MB on a 270 MB file of 16 row groups). Row groups
    whose statistics put them outside the filter are not read."""
    try:
        groups = [g.row_groups[0] for g in frag._fragment.split_by_row_group(filter=scan_filter, schema=schema)]
        chunks, rows = [[]], 0
        for group in groups:
            if rows >= max(_CHUNK_ROWS, batch_rows):
                chunks.append([])
                rows = 0
            chunks[-1].append(group.id)
            rows += group.num_rows
        for ids in chunks if groups else ():
            part = frag._fragment.subset(row_group_ids=ids, schema=schema)
            yield from ds.Scanner.from_fragment(part, schema=schema, columns=columns, filter=scan_filter,
                                                batch_size=batch_rows).to_batches()
    except ARROW_ERRORS as exc:
        raise DataError(f"{frag.path}: cannot be read ({exc})") from exc


def _scan_schema(schema: pa.Schema, timestamp: str, channels: tuple[str, ...]) -> pa.Schema:
    """The schema every file is read with. The dataset's is the first file's, and a later file of
    the years an archive spans may differ: an int32 channel first and floats later, timestamps
    in ms first and in ns later. Read as float64 channels and ns timestamps, each file casts
    without loss.

    >>> s = pa.schema([("t", pa.timestamp("ms", tz="UTC")), ("e", pa.string()), ("a", pa.int32())])
    >>> _scan_schema(s, "t", ("a",)).types
    [TimestampType(timestamp[ns, tz=UTC]), DataType(string), DataType(double)]
    """
    fields = []
    for f in schema:
        if f.name in channels and is_numeric(f.type):
            f = f.with_type(pa.float64())
        elif f.name == timestamp and pa.types.is_timestamp(f.type):
            f = f.with_type(pa.timestamp("ns", tz=f.type.tz))
        fields.append(f)
    return pa.schema(fields, metadata=schema.metadata)


def check_time_order(source: str, entity: str, ts: np.ndarray, batch, layout: Layout) -> int:
    """Raise :class:`DataError` when a windower refused rows of ``entity`` as older than an earlier
    one (``batch``: its WindowBatch for rows ``ts``); else the number it dropped as repeated times.

    Training and backfill both read archives in path order and refuse an unsorted one: the
    rows a windower drops as late would silently be missing from the model or the scores."""
    late = batch.rejected[batch.reasons == "out_of_order"]
    if len(late):
        when = pd.Timestamp(int(ts[late[0]]), tz="UTC").isoformat()
        raise DataError(
            f"{source}: entity {entity!r} has {len(late)} reading(s) older than an earlier one "
            f"(first at {layout.timestamp}={when}); an archive must be sorted by "
            f"{layout.timestamp!r} within each entity, and files are read in path order "
            f"(part-10 before part-2: zero-pad numbers in file names). Sort the rows (e.g. by "
            f"[{layout.entity!r}, {layout.timestamp!r}]) or rename the files, and re-run."
            + (f" So many ({len(late)} of {len(ts)} rows) suggest a long export, a tag column beside one value "
               "column, grouped by tag: write it wide instead (pandas: df.pivot_table(index=[entity, timestamp], "
               "columns=tag, values=value).reset_index())." if 4 * len(late) >= len(ts) else ""))
    return len(batch.rejected)


def _decode(batch: pa.RecordBatch, path: str, layout: Layout, channels: Sequence[str], ts_unit: int) -> Rows:
    ent, ts = batch.column(0), batch.column(1)
    if ent.null_count or ts.null_count:
        name = layout.entity if ent.null_count else layout.timestamp
        raise DataError(f"{path}: column {name!r} has null values; every row needs an entity and a timestamp")
    encoded = ent if pa.types.is_dictionary(ent.type) else pc.dictionary_encode(ent)
    names = encoded.dictionary.cast(pa.string()).to_numpy(zero_copy_only=False)
    entity = names[encoded.indices.to_numpy(zero_copy_only=False)]  # (N,) object
    raw = ts.cast(pa.int64()).to_numpy()  # (N,)
    if ts_unit > 1 and len(raw) and np.abs(raw).max() > np.iinfo(np.int64).max // ts_unit:   # a wrong unit
        raise DataError(f"{path}: {abs(raw).max()} {layout.timestamp_unit} is past the year 2262: the times are in "
                        f"a smaller unit than {layout.timestamp_unit!r}; set --time-unit (s, ms, us or ns)")
    ts_ns = raw * np.int64(ts_unit)  # (N,)
    return Rows(entity=entity, ts=ts_ns, values=channel_values(batch, channels, 2, path), source=path)
