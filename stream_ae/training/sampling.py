"""Bounded, time-split window sampling over a History.

Two streaming passes, memory bounded by ``max_windows`` (not by the history):

1. read timestamps: the time span, rows per entity;
2. push every entity's rows through its own :class:`SeriesWindower` and keep
   every ``stride``-th window (stride sampling with a seeded offset per entity,
   so kept windows are spread evenly over entities and time).

The train/validation split is BY TIME with one global cut timestamp::

    cut = first_ts + (1 - val_fraction) * (last_ts - first_ts)

Training windows end strictly before the cut, validation windows start at or
after it, and windows straddling the cut are dropped. A global cut (rather than
one per entity) also keeps plant-wide events that hit every entity at once
from leaking out of the validation period into training.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from stream_ae.data.history import check_time_order, to_ns
from stream_ae.data.windows import SeriesWindower, WindowSpec
from stream_ae.errors import ConfigError, DataError
from stream_ae.progress import progress_bar


@dataclass
class WindowSet:
    """Windows stored compactly as rows + starts (overlapping windows share rows).

    ``rows`` (N, C) float32, ``starts`` (B,) int64 (window b is
    ``rows[starts[b] : starts[b] + length]``), ``start_ts`` / ``end_ts`` (B,) int64 ns
    and ``entity`` (B,) object.
    """

    rows: np.ndarray
    starts: np.ndarray
    length: int
    start_ts: np.ndarray
    end_ts: np.ndarray
    entity: np.ndarray

    def __len__(self) -> int:
        return int(self.starts.shape[0])

    @property
    def windows(self) -> np.ndarray:
        """(B, T, C) gathered copy of the windows (small sets only: tests, debugging)."""
        return self.rows[self.starts[:, None] + np.arange(self.length)]

    def with_rows(self, rows: np.ndarray) -> "WindowSet":
        """Same windows over other rows of the same shape (e.g. scaled rows)."""
        return WindowSet(rows, self.starts, self.length, self.start_ts, self.end_ts, self.entity)

    @classmethod
    def from_windows(cls, windows: np.ndarray) -> "WindowSet":
        """Wrap a (B, T, C) array (no timestamps: they are set to -1)."""
        w = np.asarray(windows, dtype=np.float32)
        if w.ndim != 3:
            raise DataError(f"windows must have shape (B, T, C), got {w.shape}")
        b, t, c = w.shape
        none = np.full(b, -1, np.int64)
        return cls(w.reshape(b * t, c), np.arange(b, dtype=np.int64) * t, t, none, none.copy(),
                   np.full(b, "", dtype=object))


def iso_utc(ns: int) -> str:
    """int ns since epoch -> ISO-8601 UTC string ending in Z."""
    return pd.Timestamp(int(ns), tz="UTC").isoformat().replace("+00:00", "Z")


def _chunks(history, channel_idx, start_ns, end_ns, bar=None):
    """Yield (entity, ts, values, source file) per entity per batch, rows inside [start, end);
    ``bar`` counts the rows read."""
    for rows in history.iter_rows():
        if bar is not None:
            bar.update(rows.ts.shape[0])
        keep = np.ones(rows.ts.shape[0], dtype=bool)
        if start_ns is not None:
            keep &= rows.ts >= start_ns
        if end_ns is not None:
            keep &= rows.ts < end_ns
        if not keep.any():
            continue
        ent, ts, vals = rows.entity[keep], rows.ts[keep], rows.values[keep][:, channel_idx]
        names, codes = np.unique(ent.astype(str), return_inverse=True)
        order = np.argsort(codes, kind="stable")  # keeps each entity's reading order
        bounds = np.searchsorted(codes[order], np.arange(len(names) + 1))
        for i, name in enumerate(names):
            sel = order[bounds[i]:bounds[i + 1]]
            yield str(name), ts[sel], vals[sel], rows.source


def _compress(rows: np.ndarray, starts: np.ndarray, length: int):
    """Keep only rows covered by the windows at ``starts``; return (rows, new starts)."""
    cover = np.zeros(rows.shape[0] + 1, np.int64)
    np.add.at(cover, starts, 1)
    np.add.at(cover, starts + length, -1)
    covered = np.cumsum(cover[:-1]) > 0  # (M,)
    new_index = np.cumsum(covered) - 1
    return rows[covered], new_index[starts]


class _Collector:
    def __init__(self, length: int):
        self.length = length
        self.rows, self.starts, self.start_ts, self.end_ts, self.entity = [], [], [], [], []
        self.n_rows = 0

    def add(self, name, rows, starts, start_ts, end_ts):
        if starts.size == 0:
            return
        kept, new_starts = _compress(rows, starts, self.length)
        self.rows.append(kept)
        self.starts.append(new_starts + self.n_rows)
        self.n_rows += kept.shape[0]
        self.start_ts.append(start_ts)
        self.end_ts.append(end_ts)
        self.entity.append(np.full(starts.size, name, dtype=object))

    def build(self, n_channels: int) -> WindowSet:
        if not self.starts:
            empty = np.zeros(0, np.int64)
            return WindowSet(np.zeros((0, n_channels), np.float32), empty, self.length, empty,
                             empty.copy(), np.zeros(0, dtype=object))
        cat = np.concatenate
        return WindowSet(cat(self.rows).astype(np.float32, copy=False), cat(self.starts), self.length,
                         cat(self.start_ts), cat(self.end_ts), cat(self.entity))


def _subset(ws: WindowSet, keep: np.ndarray) -> WindowSet:
    rows, starts = _compress(ws.rows, ws.starts[keep], ws.length)
    return WindowSet(rows, starts, ws.length, ws.start_ts[keep], ws.end_ts[keep], ws.entity[keep])


def sample_windows(history, layout, window_spec: WindowSpec, channels, max_windows: int, seed: int,
                   start=None, end=None, val_fraction: float = 0.2, min_coverage: float = 0.0,
                   progress: bool = False):
    """Sample at most ``max_windows`` raw windows, split by time into train and validation.

    ``min_coverage``: raise :class:`DataError` when the readings cover less than this share of
    the period (``start``/``end``, else the history's first to last reading; see :class:`_Coverage`).

    Returns
    -------
    (train, val, stats)
        Two :class:`WindowSet` of raw (unscaled) rows, and a JSON-safe dict: ``rows``,
        ``entities``, ``span`` (first/last ISO UTC), ``cut``, ``windows`` (found per split,
        straddling, kept, stride), ``missing`` (per channel, the fraction of rows without a value),
        ``coverage`` (the share of the period with readings).
    """
    if not 0.0 < val_fraction < 1.0:
        raise ConfigError(f"val_fraction must lie in (0, 1), got {val_fraction}")
    if max_windows < 2:
        raise ConfigError(f"max_windows must be >= 2, got {max_windows}")
    channels = tuple(channels if channels is not None else history.channels)
    missing = [c for c in channels if c not in history.channels]
    if missing:
        raise DataError(f"channels {missing} are not in the history (it has {list(history.channels)})")
    channel_idx = np.array([history.channels.index(c) for c in channels], dtype=np.int64)
    start_ns = None if start is None else to_ns(start, "start")
    end_ns = None if end is None else to_ns(end, "end")
    length, hop = int(window_spec.length), int(window_spec.hop)

    # pass 1: span and rows per entity
    counts: dict[str, int] = {}
    first, last = None, None
    missing_values = np.zeros(len(channels), np.int64)
    steps = _Steps()
    total = history.count_rows() if progress else None   # from the footers: no read
    bar = progress_bar(progress, total=total, unit="row", unit_scale=True, desc="reading history 1/2", leave=False)
    for name, ts, vals, _ in _chunks(history, channel_idx, start_ns, end_ns, bar):
        counts[name] = counts.get(name, 0) + ts.size
        steps.sample(name, ts)
        missing_values += np.isnan(vals).sum(axis=0)
        lo, hi = int(ts.min()), int(ts.max())
        first = lo if first is None else min(first, lo)
        last = hi if last is None else max(last, hi)
    bar.close()
    if first is None:
        raise DataError(f"the history has no rows between start={start} and end={end}; widen the period")
    median_step = steps.median()
    coverage = _Coverage(first if start_ns is None else start_ns, last + 1 if end_ns is None else end_ns,
                         median_step)
    cut = first + int((1.0 - val_fraction) * (last - first))
    estimate = sum(max(0, (n - length) // hop + 1) for n in counts.values())
    stride = max(1, math.ceil(estimate / max_windows))
    rng = np.random.default_rng(seed)
    offsets = {name: int(rng.integers(stride)) for name in sorted(counts)}

    # pass 2: windows
    windowers: dict[str, SeriesWindower] = {}
    seen = {name: 0 for name in counts}
    found = {"train": 0, "val": 0, "straddling": 0}
    out = {"train": _Collector(length), "val": _Collector(length)}
    gaps, duplicates = _Gaps(median_step, window_spec.max_gap_s), 0
    bar = progress_bar(progress, total=total, unit="row", unit_scale=True, desc="reading history 2/2", leave=False)
    for name, ts, vals, source in _chunks(history, channel_idx, start_ns, end_ns, bar):
        coverage.mark(ts)
        windower = windowers.setdefault(name, SeriesWindower(window_spec, len(channels)))
        batch = windower.push(ts, vals)
        if len(batch.rejected):
            duplicates += check_time_order(source, name, ts, batch, layout)
        gaps.count(name, ts)
        b = batch.starts.shape[0]
        if b == 0:
            continue
        k = seen[name] + np.arange(b)
        seen[name] += b
        sampled = (k + offsets[name]) % stride == 0
        is_train = batch.end_ts < cut
        is_val = batch.start_ts >= cut
        found["train"] += int(is_train.sum())
        found["val"] += int(is_val.sum())
        found["straddling"] += int(b - is_train.sum() - is_val.sum())
        for split, mask in (("train", is_train & sampled), ("val", is_val & sampled)):
            out[split].add(name, batch.rows, batch.starts[mask], batch.start_ts[mask], batch.end_ts[mask])
    bar.close()
    rows = int(sum(counts.values()))
    if rows and 2 * duplicates >= rows:   # one model of a single tag: of no use, and nothing else said so
        raise DataError(
            f"{duplicates} of the {rows} rows repeat an entity's timestamp and were dropped: is the history a long "
            f"export (a {channels[0]!r} column beside a tag column), or was every row written twice? Write it wide, "
            "one row per entity and time with a column per channel (pandas: df.pivot_table(index=[entity, "
            "timestamp], columns=tag, values=value).reset_index()), or drop the repeated rows")
    if coverage.fraction() < min_coverage:
        raise DataError(
            f"the history covers {coverage.fraction():.0%} of the period {iso_utc(coverage.start)} .. "
            f"{iso_utc(coverage.end)} ({rows} rows, {iso_utc(first)} .. {iso_utc(last)}), less than the "
            f"{min_coverage:.0%} required: is the archive complete (the archiver running)? Lower the minimum "
            "(retrain.min_train_coverage) to train on what there is")
    train, val = out["train"].build(len(channels)), out["val"].build(len(channels))

    # stride sampling can overshoot by up to one window per entity: trim at random
    excess = len(train) + len(val) - max_windows
    if excess > 0:
        drop = rng.choice(len(train) + len(val), size=excess, replace=False)
        keep = np.ones(len(train) + len(val), dtype=bool)
        keep[drop] = False
        train, val = _subset(train, keep[:len(train)]), _subset(val, keep[len(train):])
    stats = {
        "rows": rows,
        "entities": sorted(counts),
        "span": {"first": iso_utc(first), "last": iso_utc(last)},
        "cut": iso_utc(cut),
        "windows": {"found_train": found["train"], "found_val": found["val"],
                    "straddling": found["straddling"], "train": len(train), "val": len(val),
                    "stride": stride},
        "missing": {c: float(m) / max(1, rows) for c, m in zip(channels, missing_values)},
        "coverage": round(coverage.fraction(), 4),
        "duplicates_dropped": duplicates,
        "gaps": gaps.to_dict(),
    }
    return train, val, stats


#: a step this many times the history's median step is a gap (an outage of the feed)
GAP_RATIO = 10.0


def _steps(last: dict[str, int], name: str, ts: np.ndarray) -> np.ndarray:
    """The steps (ns) into and within ``ts``, the next rows of ``name`` (``last``: its latest time)."""
    prev = last.get(name)
    last[name] = int(ts[-1])
    return np.diff(ts if prev is None else np.concatenate([[prev], ts]))


class _Steps:
    """A bounded sample of the steps between an entity's readings: their median."""

    def __init__(self, keep: int = 200_000):
        self.keep, self.parts, self.n, self.last = keep, [], 0, {}

    def sample(self, name: str, ts: np.ndarray) -> None:
        d = _steps(self.last, name, ts)
        d = d[d > 0]
        if d.size and self.n < self.keep:
            d = d[:: max(1, d.size // 1000)]  # a spread sample of each chunk
            self.parts.append(d)
            self.n += d.size

    def median(self) -> int | None:
        return int(np.median(np.concatenate(self.parts))) if self.parts else None


class _Gaps:
    """Steps of more than :data:`GAP_RATIO` median steps that windows join across (no ``max_gap_s``)."""

    def __init__(self, median_step_ns: int | None, max_gap_s: float | None):
        self.step = median_step_ns
        self.limit = None if median_step_ns is None or max_gap_s is not None else GAP_RATIO * median_step_ns
        self.n, self.longest, self.last = 0, 0, {}

    def count(self, name: str, ts: np.ndarray) -> None:
        d = _steps(self.last, name, ts)
        if self.limit is None:
            return
        wide = d[d > self.limit]
        if wide.size:
            self.n += int(wide.size)
            self.longest = max(self.longest, int(wide.max()))

    def to_dict(self) -> dict:
        """``bridged`` gaps, the ``longest_s`` of them and the ``median_step_s`` of the history."""
        return {"bridged": self.n, "longest_s": self.longest / 1e9,
                "median_step_s": None if self.step is None else self.step / 1e9}


class _Coverage:
    """The share of ``[start, end)`` that has readings, in slots of at least :data:`GAP_RATIO`
    median steps (a slot with no reading is an outage, as a bridged gap is) and at most 4096 slots.

    >>> c = _Coverage(0, 100, median_step_ns=1)
    >>> c.mark(np.arange(0, 40)); c.mark(np.arange(90, 100)); round(c.fraction(), 2)
    0.5
    """

    def __init__(self, start: int, end: int, median_step_ns: int | None, max_slots: int = 4096):
        self.start, self.end = int(start), max(int(end), int(start) + 1)
        span = self.end - self.start
        self.width = max(-(-span // max_slots), int(GAP_RATIO * (median_step_ns or 0)), 1)
        self.seen = np.zeros(-(-span // self.width), dtype=bool)

    def mark(self, ts: np.ndarray) -> None:
        slots = (np.asarray(ts, np.int64) - self.start) // self.width
        self.seen[slots[(slots >= 0) & (slots < self.seen.size)]] = True

    def fraction(self) -> float:
        return float(self.seen.mean())
