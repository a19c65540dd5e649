"""A synthetic plant: correlated sensor channels with trend, seasonality, noise and labelled anomalies.

Used by the demo, the tests and the benchmarks. Everything is deterministic for a seed.

Examples
--------
>>> df, anomalies = generate_plant(n_entities=2, n_channels=3, n_rows=2_000, clean_rows=500, seed=1)
>>> list(df.columns), len(df)
(['entity', 'timestamp', 'ch_0', 'ch_1', 'ch_2'], 4000)
>>> all(a.start_ts >= df.timestamp.iloc[0].value + 500 * 10**9 for a in anomalies)
True
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from stream_ae.errors import ConfigError

ANOMALY_KINDS = ("spike", "level_shift", "drift", "stuck", "noise_burst", "correlation_break")
_DAY_NS = 86_400 * 1_000_000_000
_MA = 64  # width of the moving average that makes driver noise smooth
_DURATION = {"spike": (1, 2), "level_shift": (50, 300), "drift": (100, 500),
             "stuck": (50, 300), "noise_burst": (30, 200), "correlation_break": (100, 400)}


@dataclass(frozen=True)
class InjectedAnomaly:
    """One injected anomaly: rows of ``entity`` with ``start_ts <= ts <= end_ts`` (ns, inclusive)."""

    entity: str
    kind: str
    start_ts: int
    end_ts: int
    channels: tuple[str, ...]


class _EntityPlant:
    """Clean signal of one entity, generated in consecutive blocks (the same rows however cut)."""

    def __init__(self, n_channels: int, season_period: int, rng: np.random.Generator):
        k = max(2, (n_channels + 1) // 2)  # latent drivers shared by the channels
        self.rng, self.period = rng, season_period
        self.mix = rng.normal(size=(n_channels, k)) / np.sqrt(k)  # (C, K)
        self.offset = rng.uniform(-5, 5, n_channels)
        self.scale = rng.uniform(0.5, 3.0, n_channels)
        self.noise = rng.uniform(0.05, 0.15, n_channels)
        self.season = rng.uniform(0.5, 1.5, k), rng.uniform(0, 2 * np.pi, k)
        self.harmonic = rng.uniform(0.1, 0.4, k), rng.uniform(0, 2 * np.pi, k)
        self.trend = rng.uniform(0.3, 1.0, k), rng.uniform(0, 2 * np.pi, k)
        self.wander = rng.uniform(0.3, 0.6, k)
        self._raw_tail = rng.normal(size=(_MA - 1, k))
        self.t = 0
        # the periodic part repeats every 20 seasons: tabulate it once, index it per block
        u = np.arange(20 * season_period)[:, None] / season_period  # (20P, 1) in seasons
        self._periodic = (self.season[0] * np.sin(2 * np.pi * u + self.season[1])  # (20P, K)
                          + self.harmonic[0] * np.sin(6 * np.pi * u + self.harmonic[1])
                          + self.trend[0] * np.sin(2 * np.pi * u / 20 + self.trend[1]))  # slow trend

    def next(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """The next ``n`` rows: (values (n, C), driver part of each channel (n, C))."""
        raw = np.concatenate([self._raw_tail, self.rng.normal(size=(n, len(self.wander)))])
        c = np.cumsum(raw, axis=0)
        smooth = (c[_MA - 1 :] - np.concatenate([np.zeros((1, raw.shape[1])), c[: -_MA]])) / np.sqrt(_MA)
        self._raw_tail = raw[n:]
        drivers = self._periodic[(self.t + np.arange(n)) % len(self._periodic)] + self.wander * smooth  # (n, K)
        driven = np.zeros((n, len(self.scale)))  # (n, C); a sum over few drivers beats a skinny BLAS matmul
        for k in range(drivers.shape[1]):
            driven += drivers[:, k : k + 1] * (self.scale * self.mix[:, k])
        noise = self.scale * self.noise * self.rng.standard_normal(size=driven.shape, dtype=np.float32)
        self.t += n
        return self.offset + driven + noise, driven


def _inject(x, driven, lo, rate, rng, channels) -> list[tuple[str, int, int, tuple[str, ...]]]:
    """Add anomalies to ``x`` (n, C) in place within rows [lo, n); returns (kind, first, last, channels)."""
    n, c = x.shape
    lo = max(lo, 1)  # "stuck" holds the previous row's value
    if rate <= 0 or n - lo < 2:
        return []
    std = x.std(axis=0) + 1e-6
    out, free_from = [], lo
    for s in np.sort(rng.integers(lo, n, rng.poisson(rate * (n - lo)))):
        kind = ANOMALY_KINDS[rng.integers(len(ANOMALY_KINDS))]
        d = int(rng.integers(*_DURATION[kind]))
        if s < free_from or s + d > n:
            continue  # keep anomalies apart and inside the block
        ch = np.sort(rng.choice(c, size=1 if kind == "correlation_break" else int(rng.integers(1, min(3, c) + 1)),
                                replace=False))
        seg = (slice(s, s + d), ch)
        sign = rng.choice([-1.0, 1.0], size=len(ch))
        if kind == "spike":
            x[seg] += sign * rng.uniform(6, 10) * std[ch]
        elif kind == "level_shift":
            x[seg] += sign * rng.uniform(3, 5) * std[ch]
        elif kind == "drift":
            x[seg] += sign * rng.uniform(4, 8) * std[ch] * (np.arange(1, d + 1) / d)[:, None]
        elif kind == "stuck":
            x[seg] = x[s - 1, ch]
        elif kind == "noise_burst":
            x[seg] += rng.normal(size=(d, len(ch))) * rng.uniform(2, 4) * std[ch]
        else:  # correlation_break: the channel's driven part is replaced by an independent one
            own = driven[seg]
            walk = np.cumsum(rng.normal(size=(d, 1)), axis=0)
            walk = (walk - walk.mean()) / (walk.std() + 1e-9)
            x[seg] += own.mean(axis=0) + driven[:, ch].std(axis=0) * walk - own
        out.append((kind, int(s), int(s + d - 1), tuple(channels[i] for i in ch)))
        free_from = s + d + 50
    return out


def _plants(seed, n_entities, n_channels, season_period):
    if n_entities < 1 or n_channels < 1 or season_period < 2:
        raise ConfigError("need n_entities >= 1, n_channels >= 1 and season_period >= 2")
    seqs = np.random.SeedSequence(seed).spawn(2 * n_entities)
    plants = [_EntityPlant(n_channels, season_period, np.random.default_rng(s)) for s in seqs[:n_entities]]
    return plants, [np.random.default_rng(s) for s in seqs[n_entities:]]


def _block(plants, anomaly_rngs, names, channels, n, t0_ns, step_ns, lo, rate, t_index0):
    """Rows of all entities for the next n steps, time-major; plus the anomalies in them."""
    xs, found = [], []
    ts = t0_ns + (t_index0 + np.arange(n, dtype=np.int64)) * step_ns  # (n,)
    for name, plant, arng in zip(names, plants, anomaly_rngs):
        x, driven = plant.next(n)
        for kind, a, b, chs in _inject(x, driven, lo, rate, arng, channels):
            found.append(InjectedAnomaly(name, kind, int(ts[a]), int(ts[b]), chs))
        xs.append(x.astype(np.float32))
    values = np.stack(xs, axis=1).reshape(n * len(names), len(channels))  # (n*E, C) time-major
    return np.repeat(ts, len(names)), values, found


def generate_plant(n_entities: int = 4, n_channels: int = 6, n_rows: int = 20_000, freq_s: float = 1.0,
                   start="2026-01-01", seed: int = 0, anomaly_rate: float = 5e-4, anomalies: bool = True,
                   clean_rows: int = 0, season_period: int = 1440) -> tuple[pd.DataFrame, list[InjectedAnomaly]]:
    """A wide frame (entity, timestamp, ch_0..ch_{C-1}), rows interleaved in time, and its anomalies.

    ``anomaly_rate`` is the chance per row that an anomaly starts (about 10 per 20 000 rows by
    default); the first ``clean_rows`` rows of each entity never hold one, so a model can be
    trained on them. ``anomalies=False`` gives the clean plant: the same numbers with no
    anomaly added. ``season_period`` is in rows.
    """
    from stream_ae.data.history import to_ns

    plants, arngs = _plants(seed, n_entities, n_channels, season_period)
    names = [f"unit_{i}" for i in range(n_entities)]
    channels = [f"ch_{i}" for i in range(n_channels)]
    ts, values, found = _block(plants, arngs, names, channels, n_rows, to_ns(start, "start"),
                               int(round(freq_s * 1e9)), clean_rows, anomaly_rate if anomalies else 0.0, 0)
    df = pd.DataFrame(values, columns=channels)
    df.insert(0, "timestamp", pd.to_datetime(ts, utc=True))
    df.insert(0, "entity", np.tile(np.array(names, dtype=object), n_rows))
    return df, sorted(found, key=lambda a: (a.start_ts, a.entity))


def _dates(ts_ns: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Day boundaries of sorted-or-not ns timestamps: (per-row day index, 'YYYY-MM-DD' per day index)."""
    days, inverse = np.unique(ts_ns // _DAY_NS, return_inverse=True)
    return inverse, np.datetime_as_string(days.astype("datetime64[D]"))


def write_history(df: pd.DataFrame, path, partition_by: tuple[str, ...] = ("date",),
                  timestamp: str = "timestamp") -> str:
    """Write ``df`` as Parquet: a hive-partitioned dataset, or one file when ``partition_by=()``.

    ``"date"`` is derived from the timestamp (UTC, ``YYYY-MM-DD``); other keys must be columns.
    Partitions being written are replaced. Returns the path.
    """
    path = os.fspath(path)
    table = pa.Table.from_pandas(df, preserve_index=False)
    if not partition_by:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        pq.write_table(table, path)
        return path
    if "date" in partition_by and "date" not in df.columns:
        inverse, labels = _dates(df[timestamp].to_numpy(dtype="datetime64[ns]").view(np.int64))
        table = table.append_column("date", pa.array(labels[inverse]))
    missing = [k for k in partition_by if k not in table.column_names]
    if missing:
        raise ConfigError(f"cannot partition by {missing}: no such column in the frame (have {table.column_names})")
    for key in partition_by:
        i = table.column_names.index(key)
        table = table.set_column(i, key, table.column(key).cast(pa.string()))
    ds.write_dataset(table, path, format="parquet", basename_template="part-{i}.parquet",
                     partitioning=ds.partitioning(pa.schema([(k, pa.string()) for k in partition_by]), flavor="hive"),
                     existing_data_behavior="delete_matching", max_rows_per_group=262_144)
    return path


def write_synthetic_archive(path, n_rows_total: int, n_entities: int = 4, n_channels: int = 6, seed: int = 0,
                            rows_per_file: int = 1_000_000, freq_s: float = 1.0, start="2026-01-01",
                            anomaly_rate: float = 5e-4, season_period: int = 1440) -> list[InjectedAnomaly]:
    """Generate and write a date-partitioned archive block by block, in bounded memory.

    ``n_rows_total`` is rounded down to a multiple of ``n_entities``; each block of about
    ``rows_per_file`` rows becomes one file per day it spans, ``date=YYYY-MM-DD/part-NNNNN.parquet``.
    Anomalies stay inside one block. Returns the injected anomalies.
    """
    from stream_ae.data.history import to_ns

    path = os.fspath(path)
    plants, arngs = _plants(seed, n_entities, n_channels, season_period)
    names = [f"unit_{i}" for i in range(n_entities)]
    channels = [f"ch_{i}" for i in range(n_channels)]
    steps, per_block = n_rows_total // n_entities, max(1, rows_per_file // n_entities)
    t0, step_ns = to_ns(start, "start"), int(round(freq_s * 1e9))
    ts_type = pa.timestamp("ns", tz="UTC")
    found: list[InjectedAnomaly] = []
    for block, first in enumerate(range(0, steps, per_block)):
        n = min(per_block, steps - first)
        ts, values, new = _block(plants, arngs, names, channels, n, t0, step_ns, 0, anomaly_rate, first)
        found += new
        entity = pa.DictionaryArray.from_arrays(np.tile(np.arange(n_entities, dtype=np.int32), n), pa.array(names))
        day, labels = _dates(ts)
        cuts = np.flatnonzero(np.diff(day)) + 1  # ts is sorted: each day is one contiguous run
        for a, b in zip([0, *cuts], [*cuts, len(ts)]):
            table = pa.table([entity[a:b], pa.array(ts[a:b]).cast(ts_type)]
                             + [pa.array(values[a:b, c]) for c in range(n_channels)],
                             names=["entity", "timestamp", *channels])
            os.makedirs(os.path.join(path, f"date={labels[day[a]]}"), exist_ok=True)
            pq.write_table(table, os.path.join(path, f"date={labels[day[a]]}", f"part-{block:05d}.parquet"),
                           row_group_size=262_144)
    return sorted(found, key=lambda a: (a.start_ts, a.entity))
